import type { BackendName } from "../core/fleet.js";
import type { Launcher } from "../host/runner.js";
import type { StateLayout } from "../state/layout.js";
import type { Backend } from "./backend.js";
import { chooseAccel } from "./qemu/accel.js";
import { QemuBackend } from "./qemu/backend.js";
import { XlBackend } from "./xl/backend.js";

export interface BackendDeps {
  readonly runner: Launcher;
  readonly layout: StateLayout;
  /** One-line notices for the user (the accelerator chosen, ...). */
  readonly notice: (line: string) => void;
  /** QEMU's accelerator: probed (`auto`), or as the user insists. */
  readonly accel: AccelSetting;
}

export const ACCEL_SETTINGS = ["auto", "kvm", "tcg"] as const;
export type AccelSetting = (typeof ACCEL_SETTINGS)[number];

function qemu(deps: BackendDeps): Backend {
  let choice: Promise<"kvm" | "tcg"> | undefined;
  return new QemuBackend(deps.runner, (kernel) => {
    if (deps.accel !== "auto") return Promise.resolve(deps.accel);
    choice ??= chooseAccel(deps.runner, kernel, deps.layout.accelCache).then((chosen) => {
      if (chosen.reason !== undefined)
        deps.notice(`${chosen.reason}: using software emulation (TCG), which is slower`);
      return chosen.accel;
    });
    return choice;
  });
}

const BACKENDS: Record<BackendName, (deps: BackendDeps) => Backend> = {
  qemu,
  xl: (deps) => new XlBackend(deps.runner, deps.layout),
};

export function backendFor(name: BackendName, deps: BackendDeps): Backend {
  return BACKENDS[name](deps);
}

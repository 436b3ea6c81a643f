import type { Backend, BackendDeps, BackendKind } from "../backend.js";
import { chooseAccel } from "./accel.js";
import { QemuBackend } from "./backend.js";
import { checkQemuHost } from "./doctor.js";
import { QEMU_DAX_GUEST_DEVICES, QEMU_GUEST_DEVICES } from "./render.js";

/** QEMU's accelerator is probed once per command, on the first start, and said once. */
function create(deps: BackendDeps): Backend {
  let choice: Promise<"kvm" | "tcg"> | undefined;
  return new QemuBackend(deps.runner, deps.tcgCacheMiB, (kernel) => {
    if (deps.accel !== "auto") return Promise.resolve(deps.accel);
    choice ??= chooseAccel(deps.runner, kernel, deps.layout.accelCache).then((chosen) => {
      if (chosen.reason !== undefined)
        deps.notice(`${chosen.reason}: using software emulation (TCG), which is slower`);
      return chosen.accel;
    });
    return choice;
  });
}

export const qemuKind: BackendKind = {
  name: "qemu",
  guestDevices: QEMU_GUEST_DEVICES,
  daxGuestDevices: QEMU_DAX_GUEST_DEVICES,
  guestModules: {
    block: ["virtio_pci", "virtio_blk"],
    net: ["virtio_net"],
    memory: ["virtio_balloon"],
    entropy: ["virtio_rng"],
    dax: ["virtio_pmem", "nd_pmem"],
  },
  // QEMU's own, locally administered prefix.
  macPrefix: "52:54:00",
  tools: [
    {
      name: "qemu-system-x86_64",
      versionArgv: ["qemu-system-x86_64", "--version"],
      debianPackage: "qemu-system-x86",
      neededFor: "running VMs",
    },
    {
      name: "setpriv",
      versionArgv: ["setpriv", "--version"],
      debianPackage: "util-linux",
      neededFor: "running QEMU unprivileged",
    },
  ],
  checkHost: ({ runner, layout, fleet }) => checkQemuHost(runner, layout.accelCache, fleet?.vms),
  create,
};

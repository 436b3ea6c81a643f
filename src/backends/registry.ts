import type { GuestModules } from "../core/modules.js";
import { ShoalError } from "../errors.js";
import type { Backend, BackendDeps, BackendKind } from "./backend.js";
import { libvirtKind } from "./libvirt/kind.js";
import { qemuKind } from "./qemu/kind.js";
import { xlKind } from "./xl/kind.js";

/**
 * The one list of backends: the fleet file's schema, the fleet record, `doctor` and the image's
 * guest modules all derive from it. A new backend is a folder with its kind.ts and a line here.
 */
const KINDS = { qemu: qemuKind, xl: xlKind, libvirt: libvirtKind } as const satisfies Record<
  string,
  BackendKind
>;

export type BackendName = keyof typeof KINDS;

export const BACKEND_NAMES = Object.keys(KINDS) as [BackendName, ...BackendName[]];

export function isBackendName(name: string): name is BackendName {
  return Object.hasOwn(KINDS, name);
}

export function backendKind(name: string): BackendKind {
  if (!isBackendName(name)) {
    throw new ShoalError(`backend ${JSON.stringify(name)} is not one this shoal has`, {
      hint: `shoal has ${BACKEND_NAMES.join(", ")}`,
    });
  }
  return KINDS[name];
}

export function backendFor(name: string, deps: BackendDeps): Backend {
  return backendKind(name).create(deps);
}

/** Every backend's guest modules: one image (and its initramfs) boots on any of them. */
export function allGuestModules(): GuestModules {
  const kinds: BackendKind[] = Object.values(KINDS);
  return {
    block: kinds.flatMap((kind) => kind.guestModules.block),
    net: kinds.flatMap((kind) => kind.guestModules.net),
    memory: kinds.flatMap((kind) => kind.guestModules.memory),
    entropy: kinds.flatMap((kind) => kind.guestModules.entropy),
    dax: kinds.flatMap((kind) => kind.guestModules.dax),
  };
}

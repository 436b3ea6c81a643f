import { createHash } from "node:crypto";
import { isDnsLabel } from "../../core/names.js";
import { ShoalError } from "../../errors.js";
import type { Presence } from "../backend.js";

/**
 * What shoal's objects on a libvirt host are called, and what virsh's answers mean. Pure.
 *
 * One storage pool per state directory on each host holds the bases (by image id, so a host gets
 * each base once, whichever of the state directory's fleets needs it) and each VM's seed and layer.
 */

/** The state directory's pool: `shoal-` and 10 hex digits of its path's hash. */
export function poolName(stateRoot: string): string {
  return `shoal-${createHash("sha256").update(stateRoot).digest("hex").slice(0, 10)}`;
}

/** Where a dir pool of that name keeps its volumes on the host: libvirt's own directory. */
export function poolDir(pool: string): string {
  return `/var/lib/libvirt/${pool}`;
}

/**
 * An image's volumes: the base, its kernel and initramfs, and a marker made only once the host's
 * copies were found to have the image's hashes; without the marker the host has no usable copy.
 */
export function imageVolumes(id: string) {
  return {
    base: `${id}.base`,
    kernel: `${id}.kernel`,
    initrd: `${id}.initrd`,
    verified: `${id}.verified`,
  } as const;
}

function vmPrefix(fleet: string, vm: string): string {
  if (!isDnsLabel(fleet) || !isDnsLabel(vm)) throw new Error(`internal: ${fleet}.${vm} unchecked`);
  return `${fleet}.${vm}`;
}

/** A VM's seed and layer, and the name a new layer is made under before it replaces the layer. */
export function vmVolumes(fleet: string, vm: string) {
  const prefix = vmPrefix(fleet, vm);
  return {
    seed: `${prefix}.seed`,
    layer: `${prefix}.layer`,
    stagedLayer: `${prefix}.layer-new`,
  } as const;
}

/** The VM's serial log on its host, in libvirt's own log directory. */
export function hostConsoleLog(fleet: string, vm: string): string {
  return `/var/log/libvirt/qemu/${vmPrefix(fleet, vm)}.serial.log`;
}

/** The socket QEMU serves the VM's serial console on, on its host (libvirt makes and passes it). */
export function hostConsoleSocket(fleet: string, vm: string): string {
  return `/run/libvirt/qemu/${vmPrefix(fleet, vm)}.console`;
}

/** virsh's errors when it cannot talk to the host's daemon at all (down, or the host is). */
export const UNREACHABLE =
  /failed to connect to the hypervisor|Cannot recv data|End of file while reading data|Connection (refused|timed out|reset)|No route to host|Could not resolve hostname/;

/** virsh's error when the domain it was asked about is not defined. */
export const NO_DOMAIN = /failed to get domain|Domain not found/;

/**
 * `virsh domstate --reason`: a guest that powered off is `shut off (shutdown)` (the domain says
 * on_poweroff destroy), one whose QEMU died `shut off (crashed)` or `crashed`.
 */
export function presenceOf(domstate: string): Presence {
  const [, state = "", reason = ""] = /^([a-z ]+?)(?: \(([a-z ]+)\))?$/.exec(domstate.trim()) ?? [];
  switch (state) {
    case "running":
    case "paused":
    case "in shutdown":
    case "pmsuspended":
    case "blocked":
    case "idle":
      return { kind: "running" };
    case "crashed":
      return { kind: "crashed", reason: "its hypervisor says it crashed" };
    case "shut off":
      if (reason === "shutdown") return { kind: "powered-off", disksReleased: true };
      if (reason === "crashed" || reason === "failed")
        return { kind: "crashed", reason: `libvirt says shut off (${reason})` };
      return { kind: "absent" };
    default:
      throw new ShoalError(
        `virsh domstate said ${JSON.stringify(domstate.slice(0, 80))}, which shoal does not know`,
      );
  }
}

/** `virsh vol-info --bytes`: the bytes the volume takes on the host's disk. */
export function allocationOf(volInfo: string): number {
  const bytes = Number(/^Allocation:\s+(\d+) bytes$/m.exec(volInfo)?.[1]);
  if (!Number.isSafeInteger(bytes)) {
    throw new ShoalError(
      `virsh vol-info said ${JSON.stringify(volInfo.slice(0, 120))}, with no allocation in bytes`,
    );
  }
  return bytes;
}

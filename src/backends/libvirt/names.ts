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

/** A domain's state and its reason, as libvirt numbers them (virDomainState and its reasons). */
export interface DomainState {
  readonly state: number;
  readonly reason: number;
}

const RUNNING_STATES = new Set([
  1, // running
  2, // blocked
  3, // paused
  4, // being shut down
  7, // suspended by the guest
]);
const SHUT_OFF = 5;
const CRASHED = 6;
const SHUT_OFF_SHUTDOWN = 1;
const SHUT_OFF_CRASHED = 3;
const SHUT_OFF_FAILED = 6;

/**
 * `virsh domstats --state`: each domain's state, by name; one call answers for every domain of a
 * host, so a fleet's states cost one call per host, not one per VM.
 */
export function domainStates(domstats: string): Map<string, DomainState> {
  const states = new Map<string, DomainState>();
  let domain: { name: string; state?: number; reason?: number } | undefined;
  const flush = () => {
    if (domain === undefined) return;
    const { name, state, reason } = domain;
    if (state === undefined || reason === undefined) {
      throw new ShoalError(`virsh domstats gave domain ${JSON.stringify(name)} no state`);
    }
    states.set(name, { state, reason });
  };
  for (const line of domstats.split("\n")) {
    const heading = /^Domain: '(.*)'$/.exec(line);
    if (heading?.[1] !== undefined) {
      flush();
      domain = { name: heading[1] };
      continue;
    }
    const field = /^\s+state\.(state|reason)=(\d+)$/.exec(line);
    if (domain !== undefined && field?.[1] !== undefined) {
      domain[field[1] as "state" | "reason"] = Number(field[2]);
    }
  }
  flush();
  return states;
}

/**
 * What a domain's state means to shoal; a domain the host does not have is absent. A guest that
 * powered off is shut off for shutdown (the domain says on_poweroff destroy), one whose QEMU died
 * shut off for a crash or a failure, or crashed.
 */
export function presenceOf(found: DomainState | undefined): Presence {
  if (found === undefined) return { kind: "absent" };
  const { state, reason } = found;
  if (RUNNING_STATES.has(state)) return { kind: "running" };
  if (state === CRASHED) return { kind: "crashed", reason: "its hypervisor says it crashed" };
  if (state === SHUT_OFF) {
    if (reason === SHUT_OFF_SHUTDOWN) return { kind: "powered-off", disksReleased: true };
    if (reason === SHUT_OFF_CRASHED || reason === SHUT_OFF_FAILED) {
      return {
        kind: "crashed",
        reason: `libvirt says shut off (${reason === SHUT_OFF_CRASHED ? "crashed" : "failed"})`,
      };
    }
    return { kind: "absent" };
  }
  throw new ShoalError(`virsh domstats said state ${state}, which shoal does not know`);
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

import picomatch from "picomatch";
import type { HostCapacity } from "./hosts.js";

/**
 * Which host each VM of a fleet runs on. Pure. A VM pinned by name goes to its pin's host; a VM
 * that already runs somewhere stays there (adding a host or VMs never moves the VMs there are, whose
 * layers live on their host); the rest go, in fleet order, to a host with room: `spread` to the one
 * with the fewest VMs, `pack` to the first in the file's order.
 */

export const PLACEMENT_MODES = ["spread", "pack"] as const;
export type PlacementMode = (typeof PLACEMENT_MODES)[number];

export interface Pin {
  readonly vms: readonly string[];
  readonly host: string;
}

export interface PlacementPolicy {
  readonly mode: PlacementMode;
  readonly pins: readonly Pin[];
}

export interface PlacementHost {
  readonly name: string;
  readonly capacity: HostCapacity;
}

export interface PlacementInput {
  readonly hosts: readonly PlacementHost[];
  readonly policy: PlacementPolicy;
  readonly vms: readonly { readonly name: string; readonly memoryMiB: number }[];
  /** Where VMs are now (the record): they stay unless pinned elsewhere or their host is gone. */
  readonly current?: ReadonlyMap<string, string>;
  /** Hosts that take no VM that is not already there (down, being drained). */
  readonly closed?: ReadonlySet<string>;
}

export type PlacementResult =
  | { readonly ok: true; readonly hostOf: ReadonlyMap<string, string> }
  | { readonly ok: false; readonly host?: string; readonly message: string };

interface Load {
  readonly host: PlacementHost;
  vms: number;
  memoryMiB: number;
}

function fits(load: Load, memoryMiB: number): boolean {
  const { vms, memoryMiB: memoryCap } = load.host.capacity;
  return (
    (vms === undefined || load.vms + 1 <= vms) &&
    (memoryCap === undefined || load.memoryMiB + memoryMiB <= memoryCap)
  );
}

function describeCapacity(capacity: HostCapacity): string {
  const parts = [
    ...(capacity.vms === undefined ? [] : [`${capacity.vms} VMs`]),
    ...(capacity.memoryMiB === undefined ? [] : [`${capacity.memoryMiB} MiB of memory`]),
  ];
  return parts.join(" and ");
}

/** The pin whose patterns match each pinned VM (the first, when several would). */
export function pinnedHosts(
  pins: readonly Pin[],
  vms: readonly string[],
): Map<string, { readonly pin: number; readonly host: string }> {
  const matchers = pins.map((pin) => picomatch([...pin.vms]));
  const pinned = new Map<string, { pin: number; host: string }>();
  for (const vm of vms) {
    const pin = matchers.findIndex((isMatch) => isMatch(vm));
    const host = pins[pin]?.host;
    if (host !== undefined) pinned.set(vm, { pin, host });
  }
  return pinned;
}

export function placeVms(input: PlacementInput): PlacementResult {
  const loads = new Map(
    input.hosts.map((host): [string, Load] => [host.name, { host, vms: 0, memoryMiB: 0 }]),
  );
  const pinned = pinnedHosts(
    input.policy.pins,
    input.vms.map((vm) => vm.name),
  );
  const hostOf = new Map<string, string>();
  const unplaced: PlacementInput["vms"][number][] = [];
  for (const vm of input.vms) {
    const current = input.current?.get(vm.name);
    const host = pinned.get(vm.name)?.host ?? (current && loads.has(current) ? current : undefined);
    if (host === undefined) {
      unplaced.push(vm);
      continue;
    }
    const load = loads.get(host);
    if (load === undefined) return { ok: false, host, message: `host ${host} is not in hosts:` };
    if (!fits(load, vm.memoryMiB)) {
      return {
        ok: false,
        host,
        message: `host ${host} has room for ${describeCapacity(load.host.capacity)}, fewer than the VMs pinned to it or already on it`,
      };
    }
    load.vms += 1;
    load.memoryMiB += vm.memoryMiB;
    hostOf.set(vm.name, host);
  }
  const open = [...loads.values()].filter((load) => !input.closed?.has(load.host.name));
  for (const vm of unplaced) {
    let chosen: Load | undefined;
    for (const load of open) {
      if (!fits(load, vm.memoryMiB)) continue;
      if (input.policy.mode === "pack") {
        chosen = load;
        break;
      }
      if (chosen === undefined || load.vms < chosen.vms) chosen = load;
    }
    if (chosen === undefined) {
      const left = input.vms.length - hostOf.size;
      return {
        ok: false,
        message:
          open.length === 0
            ? `no host can take ${left} VMs: every host is closed to new VMs`
            : `the hosts have no room for ${left} of the fleet's ${input.vms.length} VMs (capacity: in hosts:); add a host or raise a capacity`,
      };
    }
    chosen.vms += 1;
    chosen.memoryMiB += vm.memoryMiB;
    hostOf.set(vm.name, chosen.host.name);
  }
  return { ok: true, hostOf };
}

/** The VMs, each with the host a placement gave it. */
export function withHosts<T extends { readonly name: string }>(
  vms: readonly T[],
  hostOf: ReadonlyMap<string, string>,
): (T & { readonly host: string })[] {
  return vms.map((vm) => {
    const host = hostOf.get(vm.name);
    if (host === undefined) throw new Error(`internal: VM ${vm.name} was not placed`);
    return { ...vm, host };
  });
}

import picomatch from "picomatch";
import { type Impairment, impairs, inSeries, overlay } from "./impair.js";

/**
 * Where impairments apply, and what applies where once the fleet file's, the live changes and a
 * partition are put together. A VM's link has two directions: `out` (what the VM sends) and `in`
 * (what it receives); a path is one direction between two groups. Everything here is pure.
 */

export type Side = "out" | "in";
export const SIDES: readonly Side[] = ["out", "in"];
export type Direction = Side | "both";

export interface VmSides {
  readonly out?: Impairment | undefined;
  readonly in?: Impairment | undefined;
}

/** Impairments by where they apply: VMs by name, paths by `FROM>TO` (group names). */
export interface ImpairmentSet {
  readonly vms: Readonly<Record<string, VmSides>>;
  readonly paths: Readonly<Record<string, Impairment>>;
}

export const NO_IMPAIRMENTS: ImpairmentSet = { vms: {}, paths: {} };

export function pathKey(from: string, to: string): string {
  return `${from}>${to}`;
}

export function pathEnds(key: string): { readonly from: string; readonly to: string } {
  const [from = "", to = ""] = key.split(">");
  return { from, to };
}

/** Groups take one byte of a packet's mark (isolated networks) and of a class number. */
export const MAX_GROUPS = 254;

/** A VM name or glob pattern, as groups and rules take them (picomatch's syntax, VM names' letters). */
export const VM_PATTERN = /^[a-z0-9*?[\]{}!,.-]{1,253}$/;

/** Group name -> the patterns that pick its VMs, as the fleet file gives them. */
export type GroupPatterns = Readonly<Record<string, readonly string[]>>;

/**
 * Each group's members among `vms`, and the first VM two groups both claim (groups are disjoint:
 * a partition and a path between groups must know which side a VM is on).
 */
export function groupMembers(
  groups: GroupPatterns,
  vms: readonly string[],
): {
  readonly members: ReadonlyMap<string, readonly string[]>;
  readonly clash?: { readonly vm: string; readonly groups: readonly [string, string] };
} {
  const members = new Map<string, string[]>();
  const owner = new Map<string, string>();
  let clash: { vm: string; groups: [string, string] } | undefined;
  for (const group of Object.keys(groups).sort()) {
    const isMatch = picomatch(groups[group] as string[]);
    const names = vms.filter((vm) => isMatch(vm));
    members.set(group, names);
    for (const vm of names) {
      const first = owner.get(vm);
      if (first !== undefined && clash === undefined) clash = { vm, groups: [first, group] };
      owner.set(vm, group);
    }
  }
  return clash === undefined ? { members } : { members, clash };
}

/** The sides a rule of `direction` sets on a VM, or the directed paths it sets between two groups. */
export function sidesOf(direction: Direction): readonly Side[] {
  return direction === "both" ? SIDES : [direction];
}

export function pathsOf(direction: Direction, from: string, to: string): readonly string[] {
  if (direction === "out") return [pathKey(from, to)];
  if (direction === "in") return [pathKey(to, from)];
  return from === to ? [pathKey(from, to)] : [pathKey(from, to), pathKey(to, from)];
}

/** `over` laid on `under`, key by key, side by side, path by path. */
export function overlaySets(under: ImpairmentSet, over: ImpairmentSet): ImpairmentSet {
  const vms: Record<string, VmSides> = { ...under.vms };
  for (const [vm, sides] of Object.entries(over.vms)) {
    const below = vms[vm] ?? {};
    vms[vm] = {
      ...below,
      ...(sides.out ? { out: overlay(below.out, sides.out) } : {}),
      ...(sides.in ? { in: overlay(below.in, sides.in) } : {}),
    };
  }
  const paths: Record<string, Impairment> = { ...under.paths };
  for (const [key, impairment] of Object.entries(over.paths)) {
    paths[key] = overlay(paths[key], impairment);
  }
  return { vms, paths };
}

export interface PlannedGroup {
  readonly name: string;
  /** 1.. in name order: the group's byte in marks and class numbers. */
  readonly id: number;
  readonly members: readonly string[];
}

export interface PlannedPath {
  readonly from: PlannedGroup;
  readonly to: PlannedGroup;
  readonly impairment: Impairment;
}

export interface PlannedVm {
  readonly name: string;
  readonly slot: number;
  readonly group?: PlannedGroup;
  readonly out: Impairment;
  readonly in: Impairment;
}

/** What a fleet's network does to its packets, VM by VM and path by path; nothing is left out. */
export interface ImpairmentPlan {
  readonly groups: readonly PlannedGroup[];
  readonly vms: readonly PlannedVm[];
  readonly paths: readonly PlannedPath[];
  /** Groups cut off from one another (each still reaches itself and the VMs of no group). */
  readonly partition: readonly PlannedGroup[];
}

export interface PlanInput {
  readonly vms: readonly { readonly name: string; readonly slot: number }[];
  readonly members: ReadonlyMap<string, readonly string[]>;
  readonly impairments: ImpairmentSet;
  readonly partition: readonly string[];
}

/** The plan of what applies; paths and VMs that impair nothing are left out. */
export function planImpairments(input: PlanInput): ImpairmentPlan {
  const groups = [...input.members.keys()]
    .sort()
    .map((name, i): PlannedGroup => ({ name, id: i + 1, members: input.members.get(name) ?? [] }));
  if (groups.length > MAX_GROUPS) {
    throw new Error(`internal: ${groups.length} groups passed the fleet file's check`);
  }
  const byName = new Map(groups.map((group) => [group.name, group]));
  const groupOf = new Map(groups.flatMap((group) => group.members.map((vm) => [vm, group])));
  const vms = input.vms.flatMap((vm): PlannedVm[] => {
    const sides = input.impairments.vms[vm.name] ?? {};
    const group = groupOf.get(vm.name);
    return [
      {
        name: vm.name,
        slot: vm.slot,
        ...(group ? { group } : {}),
        out: sides.out ?? {},
        in: sides.in ?? {},
      },
    ];
  });
  const paths = Object.entries(input.impairments.paths).flatMap(([key, impairment]) => {
    const ends = pathEnds(key);
    const from = byName.get(ends.from);
    const to = byName.get(ends.to);
    return from && to && impairs(impairment) ? [{ from, to, impairment }] : [];
  });
  const partition = [...new Set(input.partition)].sort().flatMap((name) => byName.get(name) ?? []);
  return { groups, vms, paths, partition };
}

/**
 * What traffic to a VM from a group goes through on the VM's own link: the path from that group
 * after the VM's own `in`, on one queue.
 */
export function pathIntoVm(path: PlannedPath, vm: PlannedVm): Impairment {
  return inSeries(path.impairment, vm.in);
}

/** What a live change acts on: some VMs' links, or the path from one group to another. */
export type ImpairTarget =
  | { readonly kind: "vms"; readonly vms: readonly string[] }
  | { readonly kind: "path"; readonly from: string; readonly to: string };

/** `set` laid over the live changes of the target's sides or paths, key by key. */
export function setLive(
  live: ImpairmentSet,
  target: ImpairTarget,
  direction: Direction,
  set: Impairment,
): ImpairmentSet {
  if (target.kind === "path") {
    const paths = Object.fromEntries(
      pathsOf(direction, target.from, target.to).map((key) => [key, set]),
    );
    return overlaySets(live, { vms: {}, paths });
  }
  const sides = Object.fromEntries(sidesOf(direction).map((side) => [side, set]));
  return overlaySets(live, {
    vms: Object.fromEntries(target.vms.map((vm) => [vm, sides])),
    paths: {},
  });
}

/** The live changes without the target's (every one of them without a target). */
export function resetLive(
  live: ImpairmentSet,
  target: ImpairTarget | undefined,
  direction: Direction,
): ImpairmentSet {
  if (target === undefined) return NO_IMPAIRMENTS;
  if (target.kind === "path") {
    const gone = new Set(pathsOf(direction, target.from, target.to));
    return {
      vms: live.vms,
      paths: Object.fromEntries(Object.entries(live.paths).filter(([key]) => !gone.has(key))),
    };
  }
  const chosen = new Set(target.vms);
  const vms: Record<string, VmSides> = {};
  for (const [vm, sides] of Object.entries(live.vms)) {
    const kept: { out?: Impairment; in?: Impairment } = {};
    for (const side of SIDES) {
      const value = sides[side];
      if (value !== undefined && !(chosen.has(vm) && sidesOf(direction).includes(side))) {
        kept[side] = value;
      }
    }
    if (kept.out !== undefined || kept.in !== undefined) vms[vm] = kept;
  }
  return { vms, paths: live.paths };
}

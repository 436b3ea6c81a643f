import type { FleetSpec } from "../core/fleet.js";
import { impairmentProblem } from "../core/impair.js";
import {
  groupMembers,
  type ImpairmentPlan,
  type ImpairmentSet,
  type ImpairTarget,
  NO_IMPAIRMENTS,
  overlaySets,
  pathEnds,
  planImpairments,
  SIDES,
} from "../core/impair-plan.js";
import { type RenderedImpairments, renderImpairments } from "../core/render/impair.js";
import { UserError } from "../errors.js";
import { NetworkImpairments } from "../net/impairments.js";
import type { FleetRecord } from "../state/store.js";
import { createdVms } from "./select.js";
import type { FleetSession } from "./session.js";

/**
 * A fleet's impairments through its life: the fleet file's, recorded by `up`; the live changes
 * of `shoal net` over them; applied to the network whenever it is made or repaired and to each
 * VM's link as it starts, so they hold across VM restarts and host reboots.
 */

export type ImpairState = NonNullable<FleetRecord["impair"]>;

export const NO_IMPAIR_STATE: ImpairState = {
  groups: {},
  file: NO_IMPAIRMENTS,
  live: NO_IMPAIRMENTS,
  partition: [],
};

export function impairState(session: FleetSession): ImpairState {
  return session.book.record.impair ?? NO_IMPAIR_STATE;
}

/** What applies to `vms` (name and address slot) under `state`. */
export function planOf(
  state: ImpairState,
  vms: readonly { readonly name: string; readonly slot: number }[],
): ImpairmentPlan {
  const { members } = groupMembers(
    state.groups,
    vms.map((vm) => vm.name),
  );
  return planImpairments({
    vms,
    members,
    impairments: overlaySets(state.file, state.live),
    partition: state.partition,
  });
}

function recordedVms(session: FleetSession) {
  return Object.entries(session.book.record.vms).map(([name, entry]) => ({
    name,
    slot: entry.spec.index,
  }));
}

function render(session: FleetSession, plan: ImpairmentPlan): RenderedImpairments {
  return renderImpairments(plan, session.network.impairNaming());
}

/**
 * What the record's impairments render to for `vms` (every VM of the record's by default);
 * nothing, without planning, for a fleet that has none.
 */
function renderRecorded(
  session: FleetSession,
  vms: readonly { readonly name: string; readonly slot: number }[] = recordedVms(session),
): RenderedImpairments {
  const state = impairState(session);
  const none =
    Object.keys(state.groups).length === 0 &&
    Object.keys(state.file.vms).length + Object.keys(state.live.vms).length === 0 &&
    state.partition.length === 0;
  if (none) return { ifbs: [], devices: [], nft: undefined };
  return render(session, planOf(state, vms));
}

function onNetwork(session: FleetSession): NetworkImpairments {
  return new NetworkImpairments(session.runner, session.network);
}

/** Drops what names VMs or groups that are no longer there. */
function pruned(set: ImpairmentSet, vms: ReadonlySet<string>, groups: ReadonlySet<string>) {
  return {
    vms: Object.fromEntries(Object.entries(set.vms).filter(([vm]) => vms.has(vm))),
    paths: Object.fromEntries(
      Object.entries(set.paths).filter(([key]) => {
        const { from, to } = pathEnds(key);
        return groups.has(from) && groups.has(to);
      }),
    ),
  };
}

/**
 * At `up`, before anything changes: the record's impairments as the fleet file makes them, checked
 * against this host (netem and the rest, names of shoal's held by others) and with the live
 * changes kept over them, but for VMs and groups the file no longer has.
 */
export async function checkFileImpairments(
  session: FleetSession,
  fleet: FleetSpec,
): Promise<ImpairState> {
  const before = impairState(session);
  const vms = new Set(fleet.vms.map((vm) => vm.name));
  const groups = new Set(Object.keys(fleet.impairments.groups));
  const next: ImpairState = {
    groups: fleet.impairments.groups as ImpairState["groups"],
    file: fleet.impairments.set,
    live: pruned(before.live, vms, groups),
    partition: before.partition.filter((group) => groups.has(group)),
  };
  checkEffective(next);
  refuseOverHosts(session, next);
  const network = session.networkIn(fleet.network);
  const plan = planOf(
    next,
    fleet.vms.map((vm) => ({ name: vm.name, slot: vm.index })),
  );
  await new NetworkImpairments(session.runner, network).check(
    renderImpairments(plan, network.impairNaming()),
  );
  return next;
}

/** Records what checkFileImpairments gave. */
export async function recordImpairments(session: FleetSession, next: ImpairState): Promise<void> {
  if (JSON.stringify(next) === JSON.stringify(impairState(session))) return;
  await session.book.update((record) => {
    record.impair = next;
  });
}

/** Changes the record's impairments (a live change), checked first, then applied if the network is up. */
export async function changeImpairments(
  session: FleetSession,
  change: (state: ImpairState) => ImpairState,
): Promise<void> {
  const next = change(impairState(session));
  checkEffective(next);
  refuseOverHosts(session, next);
  const rendered = render(session, planOf(next, recordedVms(session)));
  const network = onNetwork(session);
  await network.check(rendered);
  await session.book.update((record) => {
    record.impair = next;
  });
  if (await session.network.exists()) await network.apply(rendered);
}

/** Puts the record's impairments on the whole fleet's network (with the network, once a command). */
export async function applyImpairments(session: FleetSession): Promise<void> {
  const rendered = renderRecorded(session);
  await onNetwork(session).apply(rendered);
}

/**
 * Puts a starting VM's part on its link, made anew, before the VM sends anything. Only that VM is
 * planned (its group's paths do not depend on the other VMs): an `up` of N VMs stays O(N).
 */
export async function applyVmImpairments(session: FleetSession, name: string): Promise<void> {
  const slot = session.entry(name).spec.index;
  const rendered = renderRecorded(session, [{ name, slot }]);
  const naming = session.network.impairNaming();
  await onNetwork(session).apply(rendered, { nic: naming.nic(slot), ifb: naming.ifb(slot) });
}

/** Which links a `shoal net` command acts on, as its flags name them. */
export interface TargetFlags {
  readonly vms: readonly string[];
  readonly all?: boolean | undefined;
  readonly group?: string | undefined;
  readonly to?: string | undefined;
}

function knownGroup(state: ImpairState, group: string, flag: string): string {
  if (state.groups[group] !== undefined) return group;
  const known = Object.keys(state.groups).sort();
  throw new UserError(
    `${flag} ${JSON.stringify(group)}: the fleet has no such group`,
    known.length > 0
      ? `its groups are ${known.join(", ")}`
      : "name groups in the fleet file's groups: and run `shoal up`",
  );
}

/**
 * The target the flags name: VMs (names, patterns or --all), a group's VMs, or the path from one
 * group to another; undefined when none is named and `optional`.
 */
export function targetOf(
  session: FleetSession,
  flags: TargetFlags,
  optional: boolean,
): ImpairTarget | undefined {
  const state = impairState(session);
  const named = [flags.vms.length > 0, flags.all === true, flags.group !== undefined];
  if (named.filter(Boolean).length > 1) {
    throw new UserError("give VM names, --all or --group, only one of them");
  }
  if (flags.to !== undefined && flags.group === undefined) {
    throw new UserError("--to names the other end of a path from a group; add --group");
  }
  if (!named.some(Boolean)) {
    if (optional) return undefined;
    throw new UserError(
      "which links? give VM names or patterns, --all, or --group (with --to for a path)",
      "for example: shoal net set --group east --to west --delay 40ms",
    );
  }
  const vms = createdVms(session, flags.vms);
  if (vms.length === 0) throw new UserError(`fleet ${session.fleet} has no VMs yet`);
  if (flags.group === undefined) return { kind: "vms", vms };
  const from = knownGroup(state, flags.group, "--group");
  if (flags.to !== undefined)
    return { kind: "path", from, to: knownGroup(state, flags.to, "--to") };
  const members = groupMembers(state.groups, session.recordedNames()).members.get(from) ?? [];
  if (members.length === 0) throw new UserError(`group ${from} has no VMs in this fleet`);
  return { kind: "vms", vms: members };
}

/**
 * A backend that joins its hosts to the fleet's network has its VMs' links (their taps) on those
 * hosts, where shoal puts no qdisc or nft rule yet: impairments are refused there, not left unmade.
 */
function refuseOverHosts(session: FleetSession, state: ImpairState): void {
  if (session.backend.joinNetwork === undefined) return;
  const effective = overlaySets(state.file, state.live);
  const none =
    Object.keys(effective.vms).length + Object.keys(effective.paths).length === 0 &&
    state.partition.length === 0;
  if (none) return;
  throw new UserError(
    "impairments are not made yet on a fleet over libvirt hosts: its VMs' links are on their hosts",
    "take impairments: out of the fleet file (groups: may stay), or run the fleet on backend qemu",
  );
}

/** Every side and path that the state impairs, after a change, must be one netem can take. */
export function checkEffective(state: ImpairState): void {
  const effective = overlaySets(state.file, state.live);
  const where = [
    ...Object.entries(effective.vms).flatMap(([vm, sides]) =>
      SIDES.map((side) => [`${vm} ${side}`, sides[side]] as const),
    ),
    ...Object.entries(effective.paths).map(
      ([key, impairment]) => [`path ${key.replace(">", " to ")}`, impairment] as const,
    ),
  ];
  for (const [what, impairment] of where) {
    const problem = impairment && impairmentProblem(impairment);
    if (problem) throw new UserError(`${what}: ${problem}`, "give a delay with the jitter");
  }
}

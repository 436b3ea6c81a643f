import type { FleetSpec, VmSpec } from "../core/fleet.js";
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
import {
  hostsNaming,
  type ImpairNaming,
  type RenderedImpairments,
  renderImpairments,
} from "../core/render/impair.js";
import { UserError } from "../errors.js";
import { onEachHost } from "../host/remote.js";
import { NetworkImpairments } from "../net/impairments.js";
import type { FleetRecord } from "../state/store.js";
import { createdVms } from "./select.js";
import { type FleetSession, ownerOf } from "./session.js";

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

const NOTHING: RenderedImpairments = { ifbs: [], devices: [], nft: undefined };

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

/** A VM as impairments place it: its address slot, and over several hosts its host and MAC. */
interface PlacedVm {
  readonly name: string;
  readonly slot: number;
  readonly host?: string | undefined;
  readonly mac: string;
}

function placed(spec: Pick<VmSpec, "name" | "index" | "host" | "mac">): PlacedVm {
  return { name: spec.name, slot: spec.index, host: spec.host, mac: spec.mac };
}

function recordedVms(session: FleetSession): PlacedVm[] {
  return Object.values(session.book.record.vms).map((entry) => placed(entry.spec));
}

/**
 * Where a fleet's links are, and its impairments go: its network on this machine, or, for a
 * backend over several hosts, each host's bridge, holding the links of the VMs on that host.
 */
interface ImpairSite {
  /** The host, over several; undefined for the fleet's network on this machine. */
  readonly host?: string;
  readonly impairments: NetworkImpairments;
  readonly naming: ImpairNaming;
}

function sitesOf(
  session: FleetSession,
  vms: readonly PlacedVm[],
  network = session.network,
): ImpairSite[] {
  const hosts = session.backend.hostNetworks?.(session.fleet);
  if (hosts === undefined) {
    const naming = network.impairNaming();
    return [{ impairments: new NetworkImpairments(session.runner, network, naming), naming }];
  }
  const naming = hostsNaming(
    ownerOf(session.layout, session.fleet),
    new Map(vms.map((vm) => [vm.name, vm.mac])),
  );
  return hosts.map((entry) => ({
    host: entry.host,
    impairments: new NetworkImpairments(entry.runner, entry.network, naming, `host ${entry.host}`),
    naming,
  }));
}

/**
 * What `plan` renders to at each site: over several hosts, every host has the whole table (see
 * core/render/impair.ts) and only its own VMs' qdiscs and ifb devices. The plan is rendered once
 * per naming, so once for all the hosts of a fleet, however often a site is asked for.
 */
function renderingOf(
  plan: ImpairmentPlan,
  vms: readonly PlacedVm[],
): (site: ImpairSite) => RenderedImpairments {
  const byNaming = new Map<ImpairNaming, RenderedImpairments>();
  return (site) => {
    let rendered = byNaming.get(site.naming);
    if (rendered === undefined) {
      rendered = renderImpairments(plan, site.naming);
      byNaming.set(site.naming, rendered);
    }
    if (site.host === undefined) return rendered;
    const here = new Set(
      vms
        .filter((vm) => vm.host === site.host)
        .flatMap((vm) => [site.naming.nic(vm.slot), site.naming.ifb(vm.slot)]),
    );
    return {
      ifbs: rendered.ifbs.filter((ifb) => here.has(ifb)),
      devices: rendered.devices.filter((script) => here.has(script.device)),
      nft: rendered.nft,
    };
  };
}

function impairsNothing(state: ImpairState): boolean {
  return (
    Object.keys(state.groups).length === 0 &&
    Object.keys(state.file.vms).length + Object.keys(state.live.vms).length === 0 &&
    state.partition.length === 0
  );
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
  const planned = fleet.vms.map(placed);
  const renderAt = renderingOf(planOf(next, planned), planned);
  // A host that cannot be reached is left alone by this `up`, which says so.
  await onEachHost(sitesOf(session, planned, session.networkIn(fleet.network)), (site) =>
    site.impairments.check(renderAt(site)),
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

/**
 * Changes the record's impairments (a live change), checked first, then applied if the network is
 * up. A host that cannot be reached gets its part when it is back, with the next `up`.
 */
export async function changeImpairments(
  session: FleetSession,
  change: (state: ImpairState) => ImpairState,
): Promise<void> {
  const next = change(impairState(session));
  checkEffective(next);
  const vms = recordedVms(session);
  const renderAt = renderingOf(planOf(next, vms), vms);
  const sites = sitesOf(session, vms);
  const unreachable = await onEachHost(sites, (site) => site.impairments.check(renderAt(site)));
  await session.book.update((record) => {
    record.impair = next;
  });
  if (await session.network.exists()) {
    const away = new Set(unreachable.map((error) => error.host));
    const reachable = sites.filter((site) => site.host === undefined || !away.has(site.host));
    unreachable.push(
      ...(await onEachHost(reachable, (site) => site.impairments.apply(renderAt(site)))),
    );
  }
  for (const error of unreachable) {
    session.notice(`${error.message}: its VMs get this change with the next \`shoal up\``);
  }
}

/** Puts the record's impairments on the whole fleet's network (with the network, once a command). */
export async function applyImpairments(session: FleetSession): Promise<void> {
  const state = impairState(session);
  const vms = recordedVms(session);
  // A fleet that never had impairments is not planned; what its sites held still goes.
  const renderAt = impairsNothing(state) ? () => NOTHING : renderingOf(planOf(state, vms), vms);
  // A host that cannot be reached was named by the network's own repair.
  await onEachHost(sitesOf(session, vms), (site) => site.impairments.apply(renderAt(site)));
}

/**
 * Puts a starting VM's part on its link, made anew, before the VM sends anything. Only that VM is
 * planned (its group's paths do not depend on the other VMs): an `up` of N VMs stays O(N).
 */
export async function applyVmImpairments(session: FleetSession, name: string): Promise<void> {
  const vm = placed(session.entry(name).spec);
  const state = impairState(session);
  const site = sitesOf(session, [vm]).find((each) => each.host === vm.host);
  if (site === undefined)
    throw new Error(`internal: VM ${name}'s host ${vm.host} is no host of its fleet's`);
  const rendered = impairsNothing(state) ? NOTHING : renderingOf(planOf(state, [vm]), [vm])(site);
  await site.impairments.apply(rendered, {
    nic: site.naming.nic(vm.slot),
    ifb: site.naming.ifb(vm.slot),
  });
}

/** Takes the fleet's impairments off its network, or off each of its hosts that answers. */
export async function removeImpairments(session: FleetSession): Promise<void> {
  const sites = sitesOf(session, recordedVms(session));
  for (const error of await onEachHost(sites, (site) => site.impairments.remove())) {
    session.notice(`${error.message}: the fleet's impairments are left there`);
  }
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

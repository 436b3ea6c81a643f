import type { FleetSpec, VmSpec } from "../core/fleet.js";
import { fleetVmLimit } from "../core/net.js";
import type { Goal, VmAction, VmPlan } from "../core/plan.js";
import type { BootFiles } from "../core/render/boot.js";
import { formatSize } from "../core/size.js";
import { UserError } from "../errors.js";
import { eachVm, type VmResult } from "./fan-out.js";
import { hostsInUse, recordHosts } from "./hosts.js";
import { setAuthorizedKeys, writeKnownHosts } from "./identity.js";
import { checkFileImpairments, recordImpairments } from "./impairments.js";
import {
  createVms,
  deleteVms,
  moveVm,
  redefineVm,
  removeLeftovers,
  startVm,
  stopVm,
} from "./lifecycle.js";
import { ensureNetwork, recordNetwork } from "./network-policy.js";
import { type HostsDown, planChanges } from "./planning.js";
import type { FleetSession } from "./session.js";
import { upgradeRunning } from "./upgrade.js";

export interface ConvergeOptions {
  readonly goal: Goal;
  /** How many VMs are worked on at once. */
  readonly workers: number;
  /** How long to wait for each started VM to boot; undefined: do not wait. */
  readonly bootTimeoutMs: number | undefined;
  /**
   * How long a VM that must stop (to apply a change) gets to shut down cleanly, and how long a VM
   * moved to a new image gets to come back when `bootTimeoutMs` is undefined.
   */
  readonly stopTimeoutMs: number;
  /** Only these VMs; undefined: the whole fleet, which also deletes VMs no longer in it. */
  readonly only?: ReadonlySet<string>;
  /** Start VMs whose memory adds up to more than the host has available (the user's choice). */
  readonly overcommit?: boolean;
  /** Make the VMs of hosts that cannot be reached again on the others, with blank layers. */
  readonly reschedule?: boolean;
}

export interface VmOutcome {
  readonly plan: VmPlan;
  readonly ok: boolean;
  readonly detail?: string;
}

/**
 * A layer's type and size are those of the file holding the VM's changes: changing them in place
 * would lose or strand those changes, so only the policies (on_base_change, fallback) may change.
 */
function checkLayerChange(name: string, recorded: VmSpec | undefined, desired: VmSpec): void {
  if (!recorded) return;
  const was = recorded.layer;
  const now = desired.layer;
  if (was.type !== now.type || (now.type === "disk" && was.sizeBytes !== now.sizeBytes)) {
    throw new UserError(
      `VM ${name}'s layer cannot change from ${was.type} ${formatSize(was.sizeBytes)} to ${now.type} ${formatSize(now.sizeBytes)} in place`,
      `\`shoal destroy ${name}\` then \`shoal up\` makes it anew (its changes are lost), or keep the old layer settings`,
    );
  }
}

/**
 * Brings the fleet to its file: deletes VMs no longer in it, rebuilds the changed ones (keeping
 * their layers), creates the new ones and starts what should run. Each step is idempotent and
 * recorded, so running it again after an interruption finishes the job.
 */
export async function converge(
  session: FleetSession,
  fleet: FleetSpec,
  bootOf: (vm: VmSpec) => BootFiles,
  options: ConvergeOptions,
): Promise<VmOutcome[]> {
  const limit = fleetVmLimit(fleet.network.kind === "host-bridge");
  if (fleet.vms.length > limit.max) {
    throw new UserError(
      `fleet ${fleet.name} has ${fleet.vms.length} VMs; ${limit.why}`,
      "split it into several fleets (each gets its own network)",
    );
  }
  const down = await hostsDown(session, fleet, options.reschedule ?? false);
  const { plan, recorded, observed } = await planChanges(
    session,
    fleet,
    options.goal,
    options.only,
    down,
  );
  // Every image must be there, and every change possible, before anything changes.
  for (const vm of plan) if (!vm.actions.includes("delete")) bootOf(vm.spec);
  if (!options.reschedule) refuseBlankMoves(session, plan);
  for (const vm of plan.filter((entry) => entry.changes.includes("layer"))) {
    checkLayerChange(vm.name, recorded.get(vm.name), vm.spec);
  }
  // A domain name another state directory holds stops the fleet here, not VM by VM later.
  const making = plan.filter((vm) =>
    vm.actions.some((action) => action !== "delete" && action !== "stop"),
  );
  await session.backend.checkNames?.(making.map((vm) => session.vm(vm.name)));
  const booting = (vm: VmPlan) => vm.actions.includes("start") || vm.actions.includes("upgrade");
  await session.backend.checkRoom?.(
    plan
      .filter((vm) => booting(vm) && observed.get(vm.name)?.state !== "running")
      .map((vm) => ({ spec: vm.spec, boot: bootOf(vm.spec) })),
    options.overcommit ?? false,
  );
  const impairments = await checkFileImpairments(session, fleet);
  sayUnreachable(session, plan);
  await recordNetwork(session, fleet.subnet, fleet.network, { willStart: plan.some(booting) });
  await recordHosts(session, fleet);
  await recordImpairments(session, impairments);

  const outcomes = new Map<string, VmOutcome>(plan.map((vm) => [vm.name, { plan: vm, ok: true }]));
  const failed = (name: string, detail: string) => {
    const outcome = outcomes.get(name);
    if (outcome) outcomes.set(name, { plan: outcome.plan, ok: false, detail });
  };
  const inBatch = async (
    action: VmAction,
    run: (vms: VmPlan[]) => Promise<readonly VmResult<unknown>[]>,
  ) => {
    const vms = plan.filter((vm) => vm.actions.includes(action) && outcomes.get(vm.name)?.ok);
    for (const result of await run(vms)) if (!result.ok) failed(result.name, result.error.message);
  };
  const each = (action: VmAction, work: (vm: VmPlan) => Promise<void>) =>
    inBatch(action, (vms) => eachVm(vms, options.workers, work));

  // A VM directory the record does not know may hold a layer someone wants: never removed
  // unasked, only reported (`shoal destroy NAME` removes it).
  for (const name of await session.strayNames()) {
    if (!fleet.vms.some((vm) => vm.name === name)) {
      session.notice(
        `${session.paths.vm(name).dir} is not in fleet ${fleet.name}'s record and was left alone; \`shoal destroy ${name}\` removes it`,
      );
    }
  }
  await removeAllLeftovers(session, down?.hosts);
  await inBatch("delete", (vms) =>
    deleteVms(
      session,
      vms.map((vm) => vm.name),
      options.workers,
      down ? { down: down.hosts } : {},
    ),
  );
  if (await setAuthorizedKeys(session, fleet.authorizedKeys)) {
    session.notice(
      "ssh.authorized_keys changed: each VM takes the new keys at its next boot (`shoal restart` now)",
    );
  }
  await each("recreate", async (vm) => {
    if (vm.changes.includes("host")) {
      await moveVm(session, vm.spec, bootOf(vm.spec), fleet.authorizedKeys, {
        fromReachable: vm.state !== "unreachable",
        stopTimeoutMs: options.stopTimeoutMs,
      });
      return;
    }
    await stopVm(session, vm.name, options.stopTimeoutMs);
    await redefineVm(session, vm.spec, bootOf(vm.spec), fleet.authorizedKeys);
  });
  const created = plan.filter((vm) => vm.actions.includes("create")).map((vm) => vm.spec);
  await createVms(session, created, bootOf, fleet.authorizedKeys, options.workers);
  await writeKnownHosts(session);
  // Also when no VM needs starting: a dead dnsmasq is restarted, a changed NAT setting applied.
  if (options.goal === "running" && session.recordedNames().length > 0) {
    await ensureNetwork(session);
  }
  // One VM at a time, after everything else is in place: the rest of the fleet keeps running.
  const upgrading = plan.filter((vm) => vm.actions.includes("upgrade"));
  const reports = await upgradeRunning(
    session,
    fleet,
    upgrading.map((vm) => vm.spec),
    bootOf,
    // Waited for even under --no-wait: the next VM goes down only once this one is back.
    {
      bootTimeoutMs: options.bootTimeoutMs ?? options.stopTimeoutMs,
      stopTimeoutMs: options.stopTimeoutMs,
    },
  );
  for (const report of reports) {
    if (report.outcome !== "upgraded") {
      failed(
        report.name,
        report.outcome === "pending"
          ? "not moved to its new image: an earlier VM did not come back on its new image"
          : (report.detail ?? "it did not come back on its new image"),
      );
    }
  }
  await each("start", async (vm) => {
    const result = await startVm(session, vm.name, options.bootTimeoutMs);
    if (!result.ready) failed(vm.name, result.why);
  });
  // Last: a host this run emptied is released only once nothing of this run uses its network.
  await recordHosts(session, fleet);
  return plan.map((vm) => outcomes.get(vm.name) ?? { plan: vm, ok: true });
}

/**
 * The fleet's hosts that cannot be reached now. One the fleet has nothing on is refused before
 * anything is made anywhere (a wrong URI, or a host not set up yet); the others take no new VM,
 * and their VMs are left, or with `reschedule` placed again on the hosts that answer.
 */
async function hostsDown(
  session: FleetSession,
  fleet: FleetSpec,
  reschedule: boolean,
): Promise<HostsDown | undefined> {
  if (fleet.hosts === undefined) {
    if (reschedule) {
      throw new UserError(
        `fleet ${fleet.name} runs on one host: --reschedule moves VMs between a fleet's hosts`,
        "list the hosts in the fleet file's hosts: (backend libvirt)",
      );
    }
    return undefined;
  }
  const unreachable = (await session.backend.unreachableHosts?.()) ?? [];
  const used = hostsInUse(session.book.record);
  const unused = unreachable.find((error) => !used.has(error.host));
  if (unused !== undefined) {
    throw new UserError(
      `${unused.message}; nothing was made on any host`,
      "check its uri: in hosts: and that its libvirtd and sshd run, or take it out of hosts:",
    );
  }
  return { hosts: new Set(unreachable.map((error) => error.host)), reschedule };
}

/** What VMs moved off a host left there, removed now that it answers: said once per host. */
async function removeAllLeftovers(
  session: FleetSession,
  down: ReadonlySet<string> | undefined,
): Promise<void> {
  const byHost = new Map<string, string[]>();
  for (const name of session.recordedNames()) {
    for (const host of await removeLeftovers(session, name, down)) {
      byHost.set(host, [...(byHost.get(host) ?? []), name]);
    }
  }
  for (const [host, vms] of byHost) {
    session.notice(
      `host ${host} answers again: the old ${vms.length === 1 ? "copy" : "copies"} of ${vms.join(", ")} there ${vms.length === 1 ? "is" : "are"} removed`,
    );
  }
}

/**
 * A VM on a host that cannot be reached, which the fleet file now puts elsewhere (its host left
 * hosts:, or a pin changed), would be made again with a blank layer: only when asked.
 */
function refuseBlankMoves(session: FleetSession, plan: readonly VmPlan[]): void {
  const stranded = plan.filter((vm) => vm.state === "unreachable" && vm.changes.includes("host"));
  const [first] = stranded;
  if (first === undefined) return;
  const from = session.book.vm(first.name)?.spec.host ?? "?";
  throw new UserError(
    `VM ${first.name}${stranded.length > 1 ? ` and ${stranded.length - 1} more` : ""} would move off host ${from}, which cannot be reached: its layer cannot be taken along, and it would start blank`,
    "`shoal up --reschedule` does that; or bring the host back first, or put it back in the fleet file",
  );
}

/** "its VMs vm-1, vm-3 are", or "its VM vm-1 is". */
function theVms(vms: readonly string[]): string {
  return vms.length === 1 ? `its VM ${vms[0]} is` : `its VMs ${vms.join(", ")} are`;
}

/** What becomes of VMs on hosts shoal cannot reach: said once per host. */
function sayUnreachable(session: FleetSession, plan: readonly VmPlan[]): void {
  const left = new Map<string, string[]>();
  const moved = new Map<string, string[]>();
  for (const vm of plan.filter((entry) => entry.state === "unreachable")) {
    const from = session.book.vm(vm.name)?.spec.host ?? "?";
    const byHost = vm.changes.includes("host") ? moved : left;
    byHost.set(from, [...(byHost.get(from) ?? []), vm.name]);
  }
  for (const [host, vms] of left) {
    session.notice(
      `host ${host} cannot be reached: ${theVms(vms)} left alone until it is back (\`shoal up --reschedule\` makes them again on the other hosts)`,
    );
  }
  for (const [host, vms] of moved) {
    session.notice(
      `host ${host} cannot be reached: ${theVms(vms)} made again on the other hosts with blank layers (what they changed there is lost; their names, addresses and keys stay); what is left of them there is removed once it answers`,
    );
  }
}

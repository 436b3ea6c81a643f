import type { FleetSpec, VmSpec } from "../core/fleet.js";
import type { BootFiles } from "../core/render/boot.js";
import { ShoalError } from "../errors.js";
import type { LayerChange } from "../layer/layer.js";
import type { VmRecord } from "../state/store.js";
import { eachVm } from "./fan-out.js";
import { conflictsWith, resetLayers } from "./layers.js";
import { markUpgrading, redefineVm, startVm, stopVm, vmStatus } from "./lifecycle.js";
import type { FleetSession } from "./session.js";

/** What an upgrade does with a VM whose layer hides files the new base changed. */
export const CONFLICT_POLICIES = ["proceed", "skip", "reset"] as const;
export type ConflictPolicy = (typeof CONFLICT_POLICIES)[number];

/** What each policy does to a conflicting VM, in words for reports. */
export const CONFLICT_OUTCOMES: Record<ConflictPolicy, string> = {
  proceed: "it keeps its own versions",
  skip: "it stays on its old base",
  reset: "its layer is thrown away",
};

export interface UpgradeOptions {
  /** How many VMs are down at once. */
  readonly maxUnavailable: number;
  readonly policy: ConflictPolicy;
  /** How long a restarted VM may take to boot; undefined: it is not waited for. */
  readonly bootTimeoutMs: number | undefined;
  readonly stopTimeoutMs: number;
}

export interface UpgradeTarget {
  readonly image: string;
  readonly boot: BootFiles;
}

export type UpgradeOutcome =
  /** Moved to the new base (and running again, if it ran). */
  | "upgraded"
  /** Left on its old base: its layer conflicts and the policy says skip. */
  | "skipped"
  /** It did not come back, or could not be moved: the rollout stopped there. */
  | "failed"
  /** Not reached: an earlier VM failed. */
  | "pending";

export interface UpgradeReport {
  readonly name: string;
  readonly outcome: UpgradeOutcome;
  readonly conflicts: readonly LayerChange[];
  readonly detail?: string;
}

/** Whether a VM's definition boots from the target base (records from before upgrades: by name). */
function onTarget(entry: VmRecord, target: UpgradeTarget): boolean {
  return entry.baseId === undefined
    ? entry.spec.image === target.image
    : entry.baseId === target.boot.baseId && entry.spec.image === target.image;
}

/**
 * The fleet's created VMs that do not boot from the target base yet, and those a killed upgrade
 * stopped and still owes a start, in name order.
 */
export function upgradeCandidates(
  session: FleetSession,
  fleet: FleetSpec,
  target: UpgradeTarget,
): VmSpec[] {
  return fleet.vms.filter((vm) => {
    const entry = session.book.vm(vm.name);
    if (entry?.phase !== "created") return false;
    return entry.upgrading === true || !onTarget(entry, target);
  });
}

/** What `upgrade --dry-run` shows of a VM: the files its layer hides, or why they could not be read. */
export interface ConflictReport {
  readonly name: string;
  readonly conflicts: LayerChange[];
  readonly error?: string;
}

/** Each VM's conflicts with the target, read from copies of running VMs' layers: nothing changes. */
export async function conflictReports(
  session: FleetSession,
  vms: readonly VmSpec[],
  target: UpgradeTarget,
): Promise<ConflictReport[]> {
  const reports: ConflictReport[] = [];
  for (const vm of vms) {
    try {
      reports.push({
        name: vm.name,
        conflicts: await conflictsWith(session, vm.name, target.boot.base, true),
      });
    } catch (error) {
      if (!(error instanceof ShoalError)) throw error;
      reports.push({ name: vm.name, conflicts: [], error: error.message });
    }
  }
  return reports;
}

/**
 * Sends the new base to where the VMs will boot from it (each VM's libvirt host, once per host)
 * before any of them stops. A host it cannot reach now is left to that VM's own move, which then
 * fails with the reason and leaves it on its old base.
 */
async function stageTarget(
  session: FleetSession,
  vms: readonly VmSpec[],
  target: UpgradeTarget,
): Promise<void> {
  const stage = session.backend.stageBoot?.bind(session.backend);
  if (stage === undefined) return;
  await Promise.all(
    vms.map((vm) =>
      stage(session.vm(vm.name), target.boot).catch((error: unknown) => {
        if (!(error instanceof ShoalError)) throw error;
      }),
    ),
  );
}

/**
 * Moves VMs to a new base, `maxUnavailable` at a time: each is stopped, checked for conflicts,
 * redefined on the new base with its layer (and everything else it was made with) kept, and
 * started again if it ran; the rollout stops after a batch in which a VM did not come back,
 * leaving the rest on the old base. Each step is recorded, so a killed upgrade is finished by the
 * next one (a VM it had stopped is started).
 */
export async function upgradeFleet(
  session: FleetSession,
  fleet: FleetSpec,
  target: UpgradeTarget,
  options: UpgradeOptions,
): Promise<UpgradeReport[]> {
  const pending = upgradeCandidates(session, fleet, target);
  await stageTarget(session, pending, target);
  const reports: UpgradeReport[] = [];
  for (let i = 0; i < pending.length; i += options.maxUnavailable) {
    const batch = pending.slice(i, i + options.maxUnavailable);
    const results = await eachVm(batch, batch.length, (vm) =>
      upgradeOne(session, fleet, vm.name, target, options),
    );
    for (const result of results) {
      reports.push(
        result.ok
          ? result.value
          : { name: result.name, outcome: "failed", conflicts: [], detail: result.error.message },
      );
    }
    if (reports.some((report) => report.outcome === "failed")) {
      for (const vm of pending.slice(i + options.maxUnavailable)) {
        reports.push({ name: vm.name, outcome: "pending", conflicts: [] });
      }
      break;
    }
  }
  return reports;
}

async function upgradeOne(
  session: FleetSession,
  fleet: FleetSpec,
  name: string,
  target: UpgradeTarget,
  options: UpgradeOptions,
): Promise<UpgradeReport> {
  const entry = session.entry(name);
  const running = (await vmStatus(session, name)).state === "running";
  // Marked: a killed or failed upgrade stopped it (or it did not come back) and owes it a start.
  const wasRunning = running || entry.upgrading === true;
  const resume = async (): Promise<{ ok: boolean; detail?: string }> => {
    if (!wasRunning) return { ok: true };
    const started = await startVm(session, name, options.bootTimeoutMs);
    return started.ready ? { ok: true } : { ok: false, detail: started.why };
  };
  const report = (
    outcome: "upgraded" | "skipped",
    conflicts: readonly LayerChange[],
    resumed: { ok: boolean; detail?: string },
    detail?: string,
  ): UpgradeReport => {
    const said = resumed.ok ? detail : resumed.detail;
    return {
      name,
      outcome: resumed.ok ? outcome : "failed",
      conflicts,
      ...(said === undefined ? {} : { detail: said }),
    };
  };
  // Stopped and moved by an upgrade that was killed before it started the VM again.
  if (entry.upgrading && onTarget(entry, target)) return report("upgraded", [], await resume());
  if (options.policy === "skip" && running) {
    // Looked at on a copy first, so that a VM that stays is not stopped for nothing; a copy that
    // cannot be read (caught mid-write) leaves the decision to the check after the stop.
    const seen = await conflictsWith(session, name, target.boot.base, true).catch(
      (error: unknown) => (error instanceof ShoalError ? [] : Promise.reject(error)),
    );
    if (seen.length > 0) {
      // A mark on a running VM is stale (an upgrade killed before its stop): it owes nothing.
      if (entry.upgrading) await markUpgrading(session, name, false);
      return report("skipped", seen, { ok: true });
    }
  }
  if (wasRunning) await markUpgrading(session, name, true);
  let conflicts: LayerChange[];
  let detail: string | undefined;
  try {
    await stopVm(session, name, options.stopTimeoutMs);
    conflicts = await conflictsOf(session, entry, target);
    if (conflicts.length > 0 && options.policy === "skip") {
      return report("skipped", conflicts, await resume());
    }
    if (conflicts.length > 0 && options.policy === "reset") {
      await resetLayers(session, [name]);
      detail = "its layer was reset";
    }
    if (entry.spec.layer.type === "disk" && entry.spec.layer.onBaseChange === "reset") {
      detail = "its layer is reset at its first boot on the new base (on_base_change: reset)";
    }
    await redefineVm(
      session,
      { ...entry.spec, image: target.image },
      target.boot,
      session.book.record.authorizedKeys ?? fleet.authorizedKeys,
    );
  } catch (error) {
    // Not moved: it goes back to running on its old base (or stays marked for the next upgrade).
    // The failure reported is the one that stopped the move; one of the start after it is not.
    await resume().catch((resumeError: unknown) => {
      if (!(resumeError instanceof ShoalError)) throw resumeError;
    });
    throw error;
  }
  return report("upgraded", conflicts, await resume(), detail);
}

/** A stopped VM's conflicts with the target base; none for a tmpfs layer or one never booted. */
function conflictsOf(
  session: FleetSession,
  entry: VmRecord,
  target: UpgradeTarget,
): Promise<LayerChange[]> {
  if (entry.spec.layer.type !== "disk") return Promise.resolve([]);
  return conflictsWith(session, entry.spec.name, target.boot.base);
}

/**
 * `up`'s move of running VMs whose only change is their image: as `shoal upgrade` moves them, one
 * at a time, conflicts proceeding; after a VM that does not come back, the rest are not reached.
 */
export async function upgradeRunning(
  session: FleetSession,
  fleet: FleetSpec,
  vms: readonly VmSpec[],
  bootOf: (vm: VmSpec) => BootFiles,
  options: Omit<UpgradeOptions, "maxUnavailable" | "policy">,
): Promise<UpgradeReport[]> {
  const reports: UpgradeReport[] = [];
  for (const image of new Set(vms.map((vm) => vm.image))) {
    const group = vms.filter((vm) => vm.image === image);
    const [first] = group;
    if (!first) continue;
    if (reports.some((report) => report.outcome === "failed")) {
      reports.push(
        ...group.map((vm) => ({ name: vm.name, outcome: "pending" as const, conflicts: [] })),
      );
      continue;
    }
    reports.push(
      ...(await upgradeFleet(
        session,
        { ...fleet, vms: group },
        { image, boot: bootOf(first) },
        { ...options, maxUnavailable: 1, policy: "proceed" },
      )),
    );
  }
  return reports;
}

import type { FleetSpec, VmSpec } from "../core/fleet.js";
import { changedFields } from "../core/plan.js";
import type { BootFiles } from "../core/render/boot.js";
import { ShoalError } from "../errors.js";
import type { LayerChange } from "../layer/layer.js";
import type { FleetSession } from "./session.js";

/** What an upgrade does with a VM whose layer hides files the new base changed. */
export const CONFLICT_POLICIES = ["proceed", "skip", "reset"] as const;
export type ConflictPolicy = (typeof CONFLICT_POLICIES)[number];

export interface UpgradeOptions {
  /** How many VMs are down at once. */
  readonly maxUnavailable: number;
  readonly policy: ConflictPolicy;
  readonly bootTimeoutMs: number;
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
  /** Moved, but it did not come back: the rollout stopped there. */
  | "failed"
  /** Not reached: an earlier VM failed. */
  | "pending";

export interface UpgradeReport {
  readonly name: string;
  readonly outcome: UpgradeOutcome;
  readonly conflicts: readonly LayerChange[];
  readonly detail?: string;
}

/** The fleet's created VMs that do not boot from the target base yet, in name order. */
export function upgradeCandidates(
  session: FleetSession,
  fleet: FleetSpec,
  target: UpgradeTarget,
): VmSpec[] {
  return fleet.vms.filter((vm) => {
    const entry = session.book.vm(vm.name);
    if (entry?.phase !== "created") return false;
    // Records from before upgrades know the image by name only.
    return entry.baseId === undefined
      ? entry.spec.image !== target.image
      : entry.baseId !== target.boot.baseId;
  });
}

/**
 * Moves VMs to a new base, `maxUnavailable` at a time: each is stopped, checked for conflicts,
 * redefined on the new base with its layer kept, and started again if it ran; the rollout stops
 * after a batch in which a VM did not come back, leaving the rest on the old base. Each step is
 * recorded, so a killed upgrade is finished by the next one (a VM it had stopped is started).
 */
export async function upgradeFleet(
  session: FleetSession,
  fleet: FleetSpec,
  target: UpgradeTarget,
  options: UpgradeOptions,
): Promise<UpgradeReport[]> {
  const pending = upgradeCandidates(session, fleet, target);
  const reports: UpgradeReport[] = [];
  for (let i = 0; i < pending.length; i += options.maxUnavailable) {
    const batch = pending.slice(i, i + options.maxUnavailable);
    reports.push(
      ...(await Promise.all(batch.map((vm) => upgradeOne(session, fleet, vm, target, options)))),
    );
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
  vm: VmSpec,
  target: UpgradeTarget,
  options: UpgradeOptions,
): Promise<UpgradeReport> {
  const entry = session.book.vm(vm.name);
  const wasRunning = entry?.running === true || entry?.upgrading === true;
  if (wasRunning) await session.markUpgrading(vm.name, true);
  await session.stop(vm.name, options.stopTimeoutMs);
  const conflicts = await conflictsOf(session, vm, target);
  const resume = async (): Promise<{ ok: boolean; detail?: string }> => {
    if (!wasRunning) return { ok: true };
    const started = await session.start(vm.name, options.bootTimeoutMs);
    await session.markUpgrading(vm.name, false);
    return started.ready ? { ok: true } : { ok: false, detail: started.why };
  };
  if (conflicts.length > 0 && options.policy === "skip") {
    const resumed = await resume();
    return {
      name: vm.name,
      outcome: resumed.ok ? "skipped" : "failed",
      conflicts,
      ...detailOf(resumed),
    };
  }
  if (conflicts.length > 0 && options.policy === "reset") await session.resetLayers([vm.name]);
  await session.redefine({ ...vm, image: target.image }, target.boot, fleet.authorizedKeys);
  const resumed = await resume();
  return {
    name: vm.name,
    outcome: resumed.ok ? "upgraded" : "failed",
    conflicts,
    ...detailOf(resumed),
  };
}

function detailOf(result: { detail?: string }): { detail?: string } {
  return result.detail === undefined ? {} : { detail: result.detail };
}

/** A stopped VM's conflicts with the target base; none for a tmpfs layer or one never booted. */
function conflictsOf(
  session: FleetSession,
  vm: VmSpec,
  target: UpgradeTarget,
): Promise<LayerChange[]> {
  if (vm.layer.type !== "disk") return Promise.resolve([]);
  return session.conflictsWith(vm.name, target.boot.base);
}

/**
 * `up` after the fleet file's `image:` changed: the VMs whose only change is their image move the
 * way `shoal upgrade` moves them, one at a time, keeping their layers; the rest is `up`'s usual
 * work. Returns the names of the VMs it moved.
 */
export async function upgradeChangedImages(
  session: FleetSession,
  fleet: FleetSpec,
  bootOf: (vm: VmSpec) => BootFiles,
  options: Omit<UpgradeOptions, "maxUnavailable" | "policy">,
): Promise<string[]> {
  const moving = fleet.vms.filter((vm) => {
    const recorded = session.book.vm(vm.name);
    if (recorded?.phase !== "created") return false;
    const changes = changedFields(recorded.spec, vm);
    return changes.length === 1 && changes[0] === "image";
  });
  const moved: string[] = [];
  for (const image of new Set(moving.map((vm) => vm.image))) {
    const group = moving.filter((vm) => vm.image === image);
    const [first] = group;
    if (!first) continue;
    const reports = await upgradeFleet(
      session,
      { ...fleet, vms: group },
      { image, boot: bootOf(first) },
      { ...options, maxUnavailable: 1, policy: "proceed" },
    );
    const failed = reports.find((report) => report.outcome === "failed");
    if (failed) {
      throw new ShoalError(
        `VM ${failed.name} did not come back on image ${image}: the move to it stopped there`,
        {
          hint: "`shoal logs` shows its console; `shoal upgrade --dry-run` shows each VM's conflicts",
        },
      );
    }
    moved.push(...reports.map((report) => report.name));
  }
  return moved;
}

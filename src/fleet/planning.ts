import pLimit from "p-limit";
import type { FleetSpec, VmSpec } from "../core/fleet.js";
import { type Goal, planFleet, type VmPlan } from "../core/plan.js";
import { recordedSpecs } from "../state/store.js";
import { type VmStatus, vmStatus } from "./lifecycle.js";
import type { FleetSession } from "./session.js";

/** How many VMs are asked about at once: the hypervisor answers each in milliseconds. */
const OBSERVERS = 32;

/** Observes every VM named. */
export async function observeAll(
  session: FleetSession,
  names: Iterable<string>,
): Promise<Map<string, VmStatus>> {
  const unique = [...new Set(names)];
  const limit = pLimit(OBSERVERS);
  const states = await Promise.all(unique.map((name) => limit(() => vmStatus(session, name))));
  return new Map(unique.map((name, i) => [name, states[i] ?? { state: "missing" }]));
}

export interface FleetPlan {
  readonly plan: VmPlan[];
  readonly recorded: ReadonlyMap<string, VmSpec>;
  readonly observed: ReadonlyMap<string, VmStatus>;
}

/**
 * What `up` (and `create`) would do to each VM: the fleet file against the record and what the
 * hypervisor reports. `shoal plan` shows this same answer; without a session (a fleet never
 * brought up) nothing is recorded or observed.
 */
export async function planChanges(
  session: FleetSession | undefined,
  fleet: FleetSpec,
  goal: Goal,
  only?: ReadonlySet<string>,
): Promise<FleetPlan> {
  const recorded = recordedSpecs(session?.book.record);
  const observed = session
    ? await observeAll(session, recorded.keys())
    : new Map<string, VmStatus>();
  const plan = planFleet({
    desired: fleet.vms,
    recorded,
    observed: new Map([...observed].map(([name, status]) => [name, status.state])),
    goal,
  }).filter((vm) => only === undefined || only.has(vm.name));
  return { plan, recorded, observed };
}

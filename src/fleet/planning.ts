import pLimit from "p-limit";
import type { FleetSpec, VmSpec } from "../core/fleet.js";
import { placeVms, withHosts } from "../core/placement.js";
import { type Goal, planFleet, type VmPlan } from "../core/plan.js";
import { UserError } from "../errors.js";
import { recordedSpecs } from "../state/store.js";
import { type VmStatus, vmStatus } from "./lifecycle.js";
import type { FleetSession } from "./session.js";

/** How many VMs are asked about at once: the hypervisor answers each in milliseconds. */
const OBSERVERS = 32;

/** Observes every VM named: all at once where the backend can, else a few at a time. */
export async function observeAll(
  session: FleetSession,
  names: Iterable<string>,
): Promise<Map<string, VmStatus>> {
  const unique = [...new Set(names)];
  const created = unique.filter((name) => session.book.vm(name)?.phase === "created");
  const observed =
    created.length > 0
      ? await session.backend.presences?.(created.map((name) => session.vm(name)))
      : undefined;
  const limit = pLimit(OBSERVERS);
  const states = await Promise.all(
    unique.map((name) => limit(() => vmStatus(session, name, observed?.get(name)))),
  );
  return new Map(unique.map((name, i) => [name, states[i] ?? { state: "missing" }]));
}

/** Hosts that cannot be reached now, and whether their VMs are to be made again elsewhere. */
export interface HostsDown {
  readonly hosts: ReadonlySet<string>;
  readonly reschedule: boolean;
}

/**
 * The fleet's VMs on their hosts (a fleet over libvirt hosts): those the record has on a host stay
 * there, new ones are placed around them. A host that is down takes no new VM; rescheduled, its
 * VMs are placed again on the others.
 */
export function placeFleet(
  fleet: FleetSpec,
  recorded: ReadonlyMap<string, VmSpec>,
  down?: HostsDown,
): readonly VmSpec[] {
  if (fleet.hosts === undefined) return fleet.vms;
  const current = new Map(
    [...recorded].flatMap(([name, vm]) =>
      vm.host === undefined || (down?.reschedule && down.hosts.has(vm.host))
        ? []
        : [[name, vm.host]],
    ),
  );
  const placed = placeVms({
    hosts: fleet.hosts.list,
    policy: fleet.hosts.placement,
    vms: fleet.vms,
    current,
    ...(down === undefined ? {} : { closed: down.hosts }),
  });
  if (!placed.ok) {
    throw new UserError(
      `fleet ${fleet.name} cannot be placed: ${placed.message}`,
      "change capacity: or placement: in the fleet file",
    );
  }
  return withHosts(fleet.vms, placed.hostOf);
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
  down?: HostsDown,
): Promise<FleetPlan> {
  const recorded = recordedSpecs(session?.book.record);
  const observed = session
    ? await observeAll(session, recorded.keys())
    : new Map<string, VmStatus>();
  const plan = planFleet({
    desired: placeFleet(fleet, recorded, down),
    recorded,
    observed: new Map([...observed].map(([name, status]) => [name, status.state])),
    goal,
  }).filter((vm) => only === undefined || only.has(vm.name));
  return { plan, recorded, observed };
}

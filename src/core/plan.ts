import type { VmSpec } from "./fleet.js";

/**
 * Desired fleet vs. what shoal recorded and what it observes -> what to do, per VM.
 *
 * - create: make the VM's layer, identity and hypervisor definition;
 * - start / stop: run or shut down an existing VM;
 * - recreate: the definition changed (memory, image, address...): stop the VM if it runs and
 *   rebuild its definition; its layer is kept (moved with it to another host, or, when rescheduled
 *   off a host that cannot be reached, made anew there);
 * - upgrade: only the image of a running VM changed: it moves to the new base as `shoal upgrade`
 *   moves it (one VM of the fleet down at a time, started again and waited for);
 * - delete: remove a VM that is no longer in the fleet file, with its layer.
 */
export type VmAction = "create" | "start" | "stop" | "recreate" | "upgrade" | "delete";

/**
 * `unreachable`: on a host shoal cannot reach now; nothing is done to it there (one rescheduled to
 * another host is made again there).
 */
export type ObservedState = "running" | "stopped" | "crashed" | "missing" | "unreachable";

/** `running` for `up`, `created` for `create` (which leaves stopped VMs stopped). */
export type Goal = "running" | "created";

export interface PlanInput {
  readonly desired: readonly VmSpec[];
  /** The spec each VM was last created or recreated with. */
  readonly recorded: ReadonlyMap<string, VmSpec>;
  /** What is there now; a recorded VM with no observation counts as missing. */
  readonly observed: ReadonlyMap<string, ObservedState>;
  readonly goal: Goal;
}

export interface VmPlan {
  readonly name: string;
  /** The desired spec, or for a VM to delete, the recorded one. */
  readonly spec: VmSpec;
  readonly state: ObservedState | "new";
  readonly actions: readonly VmAction[];
  /** The fleet-file fields whose change makes a recreate. */
  readonly changes: readonly string[];
}

const COMPARED: readonly [string, (vm: VmSpec) => unknown][] = [
  ["image", (vm) => vm.image],
  ["memory", (vm) => vm.memoryMiB],
  ["vcpus", (vm) => vm.vcpus],
  ["layer", (vm) => JSON.stringify(vm.layer)],
  ["kernel_args", (vm) => vm.kernelArgs.join(" ")],
  ["ip", (vm) => vm.ip],
  ["mac", (vm) => vm.mac],
  ["hostname", (vm) => vm.hostname],
  ["machine_id", (vm) => vm.machineId],
  ["index", (vm) => vm.index],
  ["host", (vm) => vm.host],
];

export function changedFields(recorded: VmSpec, desired: VmSpec): string[] {
  return COMPARED.flatMap(([field, value]) => (value(recorded) === value(desired) ? [] : [field]));
}

function planDesired(vm: VmSpec, input: PlanInput): VmPlan {
  const recorded = input.recorded.get(vm.name);
  const state = recorded ? (input.observed.get(vm.name) ?? "missing") : "new";
  const start: VmAction[] = input.goal === "running" ? ["start"] : [];
  if (!recorded || state === "missing") {
    return { name: vm.name, spec: vm, state, actions: ["create", ...start], changes: [] };
  }
  const changes = changedFields(recorded, vm);
  // Only a VM rescheduled to another host is made again; the rest wait for their host.
  if (state === "unreachable" && !changes.includes("host")) {
    return { name: vm.name, spec: vm, state, actions: [], changes: [] };
  }
  if (state === "running" && changes.length === 1 && changes[0] === "image") {
    return { name: vm.name, spec: vm, state, actions: ["upgrade"], changes };
  }
  if (changes.length > 0) {
    const restart: VmAction[] = state === "running" ? ["start"] : start;
    return { name: vm.name, spec: vm, state, actions: ["recreate", ...restart], changes };
  }
  return { name: vm.name, spec: vm, state, actions: state === "running" ? [] : start, changes };
}

export function planFleet(input: PlanInput): VmPlan[] {
  const desiredNames = new Set(input.desired.map((vm) => vm.name));
  const removed = [...input.recorded.values()]
    .filter((vm) => !desiredNames.has(vm.name))
    .sort((a, b) => (a.name < b.name ? -1 : 1))
    .map((vm): VmPlan => {
      const state = input.observed.get(vm.name) ?? "missing";
      const actions: VmAction[] =
        state === "unreachable" ? [] : state === "running" ? ["stop", "delete"] : ["delete"];
      return { name: vm.name, spec: vm, state, actions, changes: [] };
    });
  return [...input.desired.map((vm) => planDesired(vm, input)), ...removed];
}

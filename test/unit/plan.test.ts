import { describe, expect, it } from "vitest";
import type { VmSpec } from "../../src/core/fleet.js";
import { changedFields, type ObservedState, planFleet } from "../../src/core/plan.js";
import { fleetOf } from "../helpers/fleet.js";

const specs = (text: string) => fleetOf(text).vms;
const three = specs("name: lab\ncount: 3\n");
const recordedAs = (vms: readonly VmSpec[]) => new Map(vms.map((vm) => [vm.name, vm]));
const observedAs = (states: Record<string, ObservedState>) => new Map(Object.entries(states));
const actionsOf = (plan: ReturnType<typeof planFleet>) =>
  Object.fromEntries(plan.map((vm) => [vm.name, vm.actions]));

describe("planning", () => {
  it("creates and starts every VM of a new fleet", () => {
    const plan = planFleet({
      desired: three,
      recorded: new Map(),
      observed: new Map(),
      goal: "running",
    });
    expect(actionsOf(plan)).toEqual({
      "vm-1": ["create", "start"],
      "vm-2": ["create", "start"],
      "vm-3": ["create", "start"],
    });
    expect(plan.every((vm) => vm.state === "new")).toBe(true);
  });

  it("only creates for `shoal create`", () => {
    const plan = planFleet({
      desired: three,
      recorded: new Map(),
      observed: new Map(),
      goal: "created",
    });
    expect(plan.every((vm) => vm.actions.join() === "create")).toBe(true);
  });

  it("does nothing to a fleet that runs as its file says", () => {
    const observed = observedAs({ "vm-1": "running", "vm-2": "running", "vm-3": "running" });
    const plan = planFleet({
      desired: three,
      recorded: recordedAs(three),
      observed,
      goal: "running",
    });
    expect(plan.flatMap((vm) => vm.actions)).toEqual([]);
  });

  it("starts stopped and crashed VMs for up, and leaves them for create", () => {
    const observed = observedAs({ "vm-1": "running", "vm-2": "stopped", "vm-3": "crashed" });
    const up = planFleet({
      desired: three,
      recorded: recordedAs(three),
      observed,
      goal: "running",
    });
    expect(actionsOf(up)).toEqual({ "vm-1": [], "vm-2": ["start"], "vm-3": ["start"] });
    const create = planFleet({
      desired: three,
      recorded: recordedAs(three),
      observed,
      goal: "created",
    });
    expect(create.flatMap((vm) => vm.actions)).toEqual([]);
  });

  it("creates again a recorded VM whose resources are missing, or that was never observed", () => {
    const observed = observedAs({ "vm-1": "missing", "vm-2": "running" });
    const plan = planFleet({
      desired: three,
      recorded: recordedAs(three),
      observed,
      goal: "running",
    });
    expect(actionsOf(plan)).toEqual({
      "vm-1": ["create", "start"],
      "vm-2": [],
      "vm-3": ["create", "start"],
    });
  });

  it("adds only the new VM when count grows", () => {
    const observed = observedAs({ "vm-1": "running", "vm-2": "running", "vm-3": "running" });
    const plan = planFleet({
      desired: specs("name: lab\ncount: 4\n"),
      recorded: recordedAs(three),
      observed,
      goal: "running",
    });
    expect(actionsOf(plan)).toEqual({
      "vm-1": [],
      "vm-2": [],
      "vm-3": [],
      "vm-4": ["create", "start"],
    });
  });

  it("stops and deletes VMs that left the fleet file, after the others", () => {
    const observed = observedAs({ "vm-1": "running", "vm-2": "running", "vm-3": "stopped" });
    const plan = planFleet({
      desired: specs("name: lab\ncount: 1\n"),
      recorded: recordedAs(three),
      observed,
      goal: "running",
    });
    expect(plan.map((vm) => [vm.name, vm.actions])).toEqual([
      ["vm-1", []],
      ["vm-2", ["stop", "delete"]],
      ["vm-3", ["delete"]],
    ]);
  });

  it("recreates only the VMs whose definition changed, and says what changed", () => {
    const changed = specs(
      "name: lab\ncount: 3\nvms:\n  - { name: vm-2, memory: 512M, vcpus: 2 }\n  - { name: vm-3, image: debian }\n",
    );
    const observed = observedAs({ "vm-1": "running", "vm-2": "running", "vm-3": "stopped" });
    const plan = planFleet({
      desired: changed,
      recorded: recordedAs(three),
      observed,
      goal: "running",
    });
    expect(plan.map((vm) => [vm.name, vm.actions, vm.changes])).toEqual([
      ["vm-1", [], []],
      ["vm-2", ["recreate", "start"], ["memory", "vcpus"]],
      ["vm-3", ["recreate", "start"], ["image"]],
    ]);
  });

  it("upgrades a running VM whose only change is its image, recreates one with other changes too", () => {
    const changed = specs(
      "name: lab\ncount: 3\nimage: debian\nvms:\n  - { name: vm-2, memory: 512M }\n",
    );
    const observed = observedAs({ "vm-1": "running", "vm-2": "running", "vm-3": "stopped" });
    for (const goal of ["running", "created"] as const) {
      const plan = planFleet({ desired: changed, recorded: recordedAs(three), observed, goal });
      expect(plan.map((vm) => [vm.name, vm.actions, vm.changes])).toEqual([
        ["vm-1", ["upgrade"], ["image"]],
        ["vm-2", ["recreate", "start"], ["image", "memory"]],
        ["vm-3", goal === "running" ? ["recreate", "start"] : ["recreate"], ["image"]],
      ]);
    }
  });

  it("keeps a changed VM stopped under create unless it was running", () => {
    const changed = specs("name: lab\ncount: 2\nvm: { memory: 256M }\n");
    const observed = observedAs({ "vm-1": "running", "vm-2": "stopped" });
    const plan = planFleet({
      desired: changed,
      recorded: recordedAs(three.slice(0, 2)),
      observed,
      goal: "created",
    });
    expect(actionsOf(plan)).toEqual({ "vm-1": ["recreate", "start"], "vm-2": ["recreate"] });
  });
});

describe("planning VMs on a host that cannot be reached", () => {
  const onHost = (host: string) => three.map((vm) => ({ ...vm, host }));

  it("leaves them, changed or not, and deletes none", () => {
    const plan = planFleet({
      desired: onHost("h1")
        .map((vm) => ({ ...vm, memoryMiB: vm.memoryMiB * 2 }))
        .slice(0, 2),
      recorded: recordedAs(onHost("h1")),
      observed: observedAs({ "vm-1": "unreachable", "vm-2": "unreachable", "vm-3": "unreachable" }),
      goal: "running",
    });
    expect(actionsOf(plan)).toEqual({ "vm-1": [], "vm-2": [], "vm-3": [] });
  });

  it("makes again, and starts, those rescheduled to another host", () => {
    const plan = planFleet({
      desired: [...onHost("h2").slice(0, 1), ...onHost("h1").slice(1)],
      recorded: recordedAs(onHost("h1")),
      observed: observedAs({ "vm-1": "unreachable", "vm-2": "unreachable", "vm-3": "running" }),
      goal: "running",
    });
    expect(actionsOf(plan)).toEqual({ "vm-1": ["recreate", "start"], "vm-2": [], "vm-3": [] });
    expect(plan[0]?.changes).toEqual(["host"]);
  });
});

describe("changed fields", () => {
  it("cover every part of a VM's definition and identity", () => {
    const [vm] = three as [VmSpec];
    expect(changedFields(vm, vm)).toEqual([]);
    const everything: VmSpec = {
      ...vm,
      image: "other",
      memoryMiB: 1,
      vcpus: 9,
      layer: { type: "tmpfs", sizeBytes: 1, onBaseChange: "keep", fallback: "none" },
      kernelArgs: ["quiet"],
      ip: "10.0.0.9",
      mac: "52:54:00:00:00:09",
      hostname: "other",
      machineId: "0".repeat(32),
      index: 99,
    };
    expect(changedFields(vm, everything)).toEqual([
      "image",
      "memory",
      "vcpus",
      "layer",
      "kernel_args",
      "ip",
      "mac",
      "hostname",
      "machine_id",
      "index",
    ]);
  });

  it("see a new subnet as new addresses", () => {
    const moved = specs("name: lab\ncount: 3\nnetwork: { subnet: 10.9.0.0/24 }\n");
    expect(changedFields(three[0] as VmSpec, moved[0] as VmSpec)).toEqual(["ip"]);
  });
});

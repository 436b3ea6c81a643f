import { readFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import type { BackendVm, HostNetwork, Presence } from "../../src/backends/backend.js";
import type { HostSpec } from "../../src/core/hosts.js";
import { hostTapName } from "../../src/core/net.js";
import type { BootFiles } from "../../src/core/render/boot.js";
import { HostUnreachable } from "../../src/errors.js";
import { converge } from "../../src/fleet/converge.js";
import { destroyVms } from "../../src/fleet/destroy.js";
import { changeImpairments } from "../../src/fleet/impairments.js";
import { observeAll } from "../../src/fleet/planning.js";
import { stopVms } from "../../src/fleet/power.js";
import { FleetSession } from "../../src/fleet/session.js";
import { upgradeFleet } from "../../src/fleet/upgrade.js";
import { FleetNetwork } from "../../src/net/network.js";
import { stateLayout } from "../../src/state/layout.js";
import {
  FakeBackend,
  fakeFleet,
  fakeHostRunner,
  fakeRecord,
  Killed,
  openSession,
  stateWithImages,
  upOnFake,
} from "../helpers/fake-backend.js";
import { fleetOf } from "../helpers/fleet.js";
import { RecordingRunner } from "../helpers/recording-runner.js";
import { useTempDirs } from "../helpers/tmp.js";

const tempDir = useTempDirs();

describe("the lifecycle on a fake backend", () => {
  it("creates and starts every VM, records them, and a second up does nothing", async () => {
    const { dir, bootOf, tiny } = await stateWithImages(await tempDir());
    const backend = new FakeBackend(stateLayout(dir).fleet("fake").state);
    const first = await upOnFake(dir, fakeFleet(3), backend, bootOf);
    expect(first.outcomes.map((outcome) => [outcome.plan.name, outcome.ok])).toEqual([
      ["vm-1", true],
      ["vm-2", true],
      ["vm-3", true],
    ]);
    expect([...backend.running.keys()].sort()).toEqual(["vm-1", "vm-2", "vm-3"]);
    const record = await fakeRecord(dir);
    for (const name of ["vm-1", "vm-2", "vm-3"]) {
      expect(record.vms[name]).toMatchObject({ phase: "created", running: true, baseId: tiny.id });
    }
    const knownHosts = await readFile(stateLayout(dir).fleet("fake").knownHosts, "utf8");
    expect(knownHosts.split("\n").filter(Boolean)).toHaveLength(3);

    backend.calls.length = 0;
    const again = await upOnFake(dir, fakeFleet(3), backend, bootOf);
    expect(backend.calls).toEqual([]);
    expect(again.outcomes.every((outcome) => outcome.ok && outcome.plan.actions.length === 0)).toBe(
      true,
    );
  });

  it("makes afresh the VMs a shoal killed while creating them, and starts them all", async () => {
    const { dir, bootOf } = await stateWithImages(await tempDir());
    const backend = new FakeBackend(stateLayout(dir).fleet("fake").state);
    backend.killAt = "define vm-2";
    await expect(upOnFake(dir, fakeFleet(3), backend, bootOf)).rejects.toThrow(Killed);
    await backend.afterKill();
    const killed = await fakeRecord(dir);
    expect(killed.vms["vm-2"]?.phase).toBe("creating");
    expect(backend.running.size).toBe(0);

    const repaired = await upOnFake(dir, fakeFleet(3), backend, bootOf);
    expect(repaired.outcomes.every((outcome) => outcome.ok)).toBe(true);
    const record = await fakeRecord(dir);
    expect(Object.values(record.vms).map((vm) => vm.phase)).toEqual([
      "created",
      "created",
      "created",
    ]);
    expect([...backend.running.keys()].sort()).toEqual(["vm-1", "vm-2", "vm-3"]);
  });

  it("starts a VM whose start a killed shoal had recorded but not made, and one that crashed", async () => {
    const { dir, bootOf } = await stateWithImages(await tempDir());
    const backend = new FakeBackend(stateLayout(dir).fleet("fake").state);
    backend.killAt = "start vm-3";
    await expect(upOnFake(dir, fakeFleet(3), backend, bootOf)).rejects.toThrow(Killed);
    await backend.afterKill();
    // Recorded as meant to run before the start: a VM that is not there reads as crashed.
    const { session } = await openSession(dir, fakeFleet(3), backend);
    expect((await observeAll(session, ["vm-3"])).get("vm-3")?.state).toBe("crashed");

    backend.crash("vm-1");
    const repaired = await upOnFake(dir, fakeFleet(3), backend, bootOf);
    expect(
      Object.fromEntries(
        repaired.outcomes.map((outcome) => [outcome.plan.name, outcome.plan.actions]),
      ),
    ).toEqual({ "vm-1": ["start"], "vm-2": [], "vm-3": ["start"] });
    expect([...backend.running.values()].every((vm) => vm.state === "running")).toBe(true);
  });

  it("asks a backend that answers for many VMs at once one time for all, a host down making its VMs unreachable", async () => {
    const { dir, bootOf } = await stateWithImages(await tempDir());
    const asked: string[][] = [];
    const backend = new (class extends FakeBackend {
      async presences(vms: readonly BackendVm[]) {
        asked.push(vms.map((vm) => vm.name));
        const answers = await Promise.all(vms.map((vm) => super.presence(vm)));
        return new Map<string, Presence | HostUnreachable>(
          vms.map((vm, i) => [
            vm.name,
            vm.name === "vm-2"
              ? new HostUnreachable("h2", "no route")
              : (answers[i] ?? { kind: "absent" }),
          ]),
        );
      }
    })(stateLayout(dir).fleet("fake").state);
    await upOnFake(dir, fakeFleet(3), backend, bootOf);
    const { session } = await openSession(dir, fakeFleet(3), backend);
    session.backend.presence = () => Promise.reject(new Error("asked about one VM"));
    asked.length = 0;
    const states = await observeAll(session, ["vm-1", "vm-2", "vm-3", "vm-9"]);
    expect(asked).toEqual([["vm-1", "vm-2", "vm-3"]]);
    expect(Object.fromEntries([...states].map(([name, status]) => [name, status.state]))).toEqual({
      "vm-1": "running",
      "vm-2": "unreachable",
      "vm-3": "running",
      "vm-9": "missing",
    });
  });

  it("makes a guest that fails its boot that VM's failure, and boots the others", async () => {
    const { dir, bootOf } = await stateWithImages(await tempDir());
    const backend = new FakeBackend(stateLayout(dir).fleet("fake").state);
    backend.guests.set("vm-2", "fails");
    backend.guests.set("vm-3", "powers off");
    const { outcomes } = await upOnFake(dir, fakeFleet(3), backend, bootOf);
    expect(outcomes.map((outcome) => [outcome.plan.name, outcome.ok, outcome.detail])).toEqual([
      ["vm-1", true, undefined],
      ["vm-2", false, "the fake guest fails"],
      ["vm-3", false, expect.stringMatching(/^it stopped while booting \(powered-off\)/)],
    ]);
  });

  it("lets a bug go up (exit 70) once every VM's work has settled, instead of failing one VM", async () => {
    const { dir, bootOf } = await stateWithImages(await tempDir());
    const backend = new FakeBackend(stateLayout(dir).fleet("fake").state);
    const start = backend.start.bind(backend);
    backend.start = async (vm, spec, boot) => {
      if (vm.name === "vm-1") throw new TypeError("a bug");
      await new Promise((resolve) => setTimeout(resolve, 50));
      return start(vm, spec, boot);
    };
    await expect(upOnFake(dir, fakeFleet(3), backend, bootOf)).rejects.toThrow(TypeError);
    // The others' starts were not cut off half-way: both run and are recorded as meant to.
    expect([...backend.running.keys()].sort()).toEqual(["vm-2", "vm-3"]);
    const record = await fakeRecord(dir);
    expect(record.vms["vm-1"]?.running).toBe(false);
    expect(record.vms["vm-2"]?.running).toBe(true);
  });

  it("deletes the VMs the fleet file no longer has, and keeps a stopped VM stopped for `create`", async () => {
    const { dir, bootOf } = await stateWithImages(await tempDir());
    const backend = new FakeBackend(stateLayout(dir).fleet("fake").state);
    await upOnFake(dir, fakeFleet(3), backend, bootOf);
    const { session } = await openSession(dir, fakeFleet(3), backend);
    await stopVms(session, ["vm-1"], 1_000, 2);
    const shrunk = await upOnFake(dir, fakeFleet(2), backend, bootOf, { goal: "created" });
    expect(
      Object.fromEntries(
        shrunk.outcomes.map((outcome) => [outcome.plan.name, outcome.plan.actions]),
      ),
    ).toEqual({ "vm-1": [], "vm-2": [], "vm-3": ["stop", "delete"] });
    expect(Object.keys((await fakeRecord(dir)).vms)).toEqual(["vm-1", "vm-2"]);
    expect([...backend.running.keys()]).toEqual(["vm-2"]);
  });

  it("forces off a guest that ignores the power button once the stop timeout is over, and one without a button at once", async () => {
    const { dir, bootOf } = await stateWithImages(await tempDir());
    const backend = new FakeBackend(stateLayout(dir).fleet("fake").state);
    await upOnFake(dir, fakeFleet(3), backend, bootOf);
    backend.deaf.add("vm-2");
    backend.buttonless.add("vm-3");
    const { session } = await openSession(dir, fakeFleet(3), backend);
    const outcomes = await stopVms(session, ["vm-1", "vm-2", "vm-3"], 1_500, 3);
    expect(outcomes).toEqual([
      { name: "vm-1", ok: true, detail: "clean" },
      { name: "vm-2", ok: true, detail: "forced after 2 s" },
      { name: "vm-3", ok: true, detail: "forced" },
    ]);
    expect(backend.running.size).toBe(0);
  });

  it("boots no more VMs at once than the host's boot slots, however many workers `up` has", async () => {
    const { dir, bootOf } = await stateWithImages(await tempDir());
    const backend = new FakeBackend(stateLayout(dir).fleet("fake").state);
    backend.bootMs = 300;
    const { session } = await openSession(dir, fakeFleet(6), backend, undefined, 2);
    const outcomes = await converge(session, fakeFleet(6), bootOf, {
      goal: "running",
      workers: 8,
      bootTimeoutMs: 5_000,
      stopTimeoutMs: 1_000,
    });
    expect(outcomes.every((outcome) => outcome.ok)).toBe(true);
    expect(backend.running.size).toBe(6);
    expect(backend.mostBooting).toBe(2);
  });

  it("takes a guest that went down before a second press of its button as stopped cleanly", async () => {
    const { dir, bootOf } = await stateWithImages(await tempDir());
    const backend = new FakeBackend(stateLayout(dir).fleet("fake").state);
    await upOnFake(dir, fakeFleet(1), backend, bootOf);
    backend.slow.add("vm-1");
    const { session } = await openSession(dir, fakeFleet(1), backend);
    const outcomes = await stopVms(session, ["vm-1"], 30_000, 1);
    expect(outcomes).toEqual([{ name: "vm-1", ok: true, detail: "clean" }]);
    expect(backend.calls.filter((call) => call === "shutdown vm-1")).toHaveLength(2);
  }, 20_000);
});

describe("upgrade bookkeeping on a fake backend", () => {
  const options = {
    maxUnavailable: 1,
    policy: "proceed" as const,
    bootTimeoutMs: 5_000,
    stopTimeoutMs: 1_000,
  };

  it("moves each VM to the new base, running ones started again, stopped ones left stopped", async () => {
    const { dir, bootOf, next } = await stateWithImages(await tempDir());
    const backend = new FakeBackend(stateLayout(dir).fleet("fake").state);
    await upOnFake(dir, fakeFleet(3), backend, bootOf);
    const { session } = await openSession(dir, fakeFleet(3), backend);
    await stopVms(session, ["vm-3"], 1_000, 1);
    const reports = await upgradeFleet(session, fakeFleet(3, "next"), next, options);
    expect(reports.map((report) => [report.name, report.outcome])).toEqual([
      ["vm-1", "upgraded"],
      ["vm-2", "upgraded"],
      ["vm-3", "upgraded"],
    ]);
    expect(backend.baseOf("vm-1")).toBe(next.id);
    expect(backend.baseOf("vm-3")).toBeUndefined();
    const record = await fakeRecord(dir);
    expect(Object.values(record.vms).map((vm) => [vm.baseId, vm.spec.image, vm.upgrading])).toEqual(
      [
        [next.id, "next", undefined],
        [next.id, "next", undefined],
        [next.id, "next", undefined],
      ],
    );
  });

  it("sends the new base to every VM's host before it stops any VM; a host it cannot reach then is left to that VM's move", async () => {
    const { dir, bootOf, next } = await stateWithImages(await tempDir());
    const backend = new (class extends FakeBackend {
      async stageBoot(vm: BackendVm, boot: BootFiles) {
        this.calls.push(`stage ${vm.name} ${boot.baseId}`);
        if (vm.name === "vm-2") throw new HostUnreachable("h2", "no route");
      }
    })(stateLayout(dir).fleet("fake").state);
    await upOnFake(dir, fakeFleet(3), backend, bootOf);
    const { session } = await openSession(dir, fakeFleet(3), backend);
    backend.calls.length = 0;
    const reports = await upgradeFleet(session, fakeFleet(3, "next"), next, options);
    expect(reports.map((report) => report.outcome)).toEqual(["upgraded", "upgraded", "upgraded"]);
    expect(backend.calls.slice(0, 4)).toEqual([
      `stage vm-1 ${next.id}`,
      `stage vm-2 ${next.id}`,
      `stage vm-3 ${next.id}`,
      "shutdown vm-1",
    ]);
  });

  it("owes a start to a VM a killed upgrade had stopped, and the next upgrade pays it", async () => {
    const { dir, bootOf, next } = await stateWithImages(await tempDir());
    const backend = new FakeBackend(stateLayout(dir).fleet("fake").state);
    await upOnFake(dir, fakeFleet(2), backend, bootOf);
    backend.killAt = "start vm-1";
    const killed = await openSession(dir, fakeFleet(2), backend);
    await expect(upgradeFleet(killed.session, fakeFleet(2, "next"), next, options)).rejects.toThrow(
      Killed,
    );
    await backend.afterKill();
    const owed = await fakeRecord(dir);
    expect(owed.vms["vm-1"]).toMatchObject({ upgrading: true, baseId: next.id });
    expect(backend.running.has("vm-1")).toBe(false);

    const resumed = await openSession(dir, fakeFleet(2), backend);
    const reports = await upgradeFleet(resumed.session, fakeFleet(2, "next"), next, options);
    expect(reports.map((report) => [report.name, report.outcome])).toEqual([
      ["vm-1", "upgraded"],
      ["vm-2", "upgraded"],
    ]);
    expect(backend.baseOf("vm-1")).toBe(next.id);
    expect((await fakeRecord(dir)).vms["vm-1"]?.upgrading).toBeUndefined();
  });

  it("stops the rollout at a VM that does not come back, leaving the rest on the old base", async () => {
    const { dir, bootOf, next, tiny } = await stateWithImages(await tempDir());
    const backend = new FakeBackend(stateLayout(dir).fleet("fake").state);
    await upOnFake(dir, fakeFleet(3), backend, bootOf);
    backend.guests.set("vm-2", "fails");
    const { session } = await openSession(dir, fakeFleet(3), backend);
    const reports = await upgradeFleet(session, fakeFleet(3, "next"), next, options);
    expect(reports.map((report) => [report.name, report.outcome])).toEqual([
      ["vm-1", "upgraded"],
      ["vm-2", "failed"],
      ["vm-3", "pending"],
    ]);
    expect(backend.baseOf("vm-3")).toBe(tiny.id);
    // The failed start stays owed: the next upgrade starts it again.
    expect((await fakeRecord(dir)).vms["vm-2"]?.upgrading).toBe(true);
  });

  it("cancels the owed start when the user stops the VM", async () => {
    const { dir, bootOf, next } = await stateWithImages(await tempDir());
    const backend = new FakeBackend(stateLayout(dir).fleet("fake").state);
    await upOnFake(dir, fakeFleet(1), backend, bootOf);
    backend.killAt = "start vm-1";
    const killed = await openSession(dir, fakeFleet(1), backend);
    await expect(upgradeFleet(killed.session, fakeFleet(1, "next"), next, options)).rejects.toThrow(
      Killed,
    );
    await backend.afterKill();
    const { session } = await openSession(dir, fakeFleet(1), backend);
    await stopVms(session, ["vm-1"], 1_000, 1);
    expect((await fakeRecord(dir)).vms["vm-1"]?.upgrading).toBeUndefined();
    const reports = await upgradeFleet(session, fakeFleet(1, "next"), next, options);
    expect(reports).toEqual([]);
    expect(backend.running.size).toBe(0);
  });

  it("moves running VMs whose only change is the image during `up`, one at a time", async () => {
    const { dir, bootOf, next } = await stateWithImages(await tempDir());
    const backend = new FakeBackend(stateLayout(dir).fleet("fake").state);
    await upOnFake(dir, fakeFleet(2), backend, bootOf);
    backend.calls.length = 0;
    const { outcomes } = await upOnFake(dir, fakeFleet(2, "next"), backend, bootOf);
    expect(
      outcomes.map((outcome) => [outcome.plan.name, outcome.plan.actions, outcome.ok]),
    ).toEqual([
      ["vm-1", ["upgrade"], true],
      ["vm-2", ["upgrade"], true],
    ]);
    // One down at a time: vm-2 is stopped only after vm-1 is back.
    expect(backend.calls).toEqual([
      "shutdown vm-1",
      "destroy vm-1",
      "define vm-1",
      "start vm-1",
      "shutdown vm-2",
      "destroy vm-2",
      "define vm-2",
      "start vm-2",
    ]);
    expect(backend.baseOf("vm-2")).toBe(next.id);
  });
});

describe("impairments on a fleet whose VMs' links are on other hosts", () => {
  /** h1 and h2, each answering for its own runner, with the taps of the VMs placed on it. */
  class OverHosts extends FakeBackend {
    readonly onHost = new Map<string, RecordingRunner>();
    /** Hosts whose SSH does not answer. */
    readonly down = new Set<string>();
    constructor(
      state: string,
      private readonly dir: string,
      taps: ReadonlyMap<string, readonly string[]>,
    ) {
      super(state);
      for (const host of ["h1", "h2"]) {
        const links = JSON.stringify((taps.get(host) ?? []).map((ifname) => ({ ifname })));
        const runner = new RecordingRunner((command) => {
          if (this.down.has(host)) throw new HostUnreachable(host, "ssh: connection refused");
          const line = command.argv.join(" ");
          // No table of shoal's is there yet.
          if (line.startsWith("nft list table")) return { code: 1 };
          return line === "ip -j link show" ? { stdout: links } : {};
        });
        this.onHost.set(host, runner);
      }
    }
    async joinNetwork(): Promise<void> {}
    readonly released: string[] = [];
    async unreachableHosts(): Promise<HostUnreachable[]> {
      return [...this.down].map((host) => new HostUnreachable(host, "ssh: connection refused"));
    }
    async releaseHost(_fleet: string, host: HostSpec): Promise<void> {
      if (this.down.has(host.name)) throw new HostUnreachable(host.name, "ssh: connection refused");
      this.released.push(host.name);
    }
    hostNetworks(fleet: string): HostNetwork[] {
      const layout = stateLayout(this.dir);
      const paths = layout.fleet(fleet).net;
      const owner = { root: layout.root, fleet };
      return [...this.onHost].map(([host, runner]) => ({
        host,
        runner,
        network: new FleetNetwork(
          runner,
          { ...paths, impairments: paths.impairmentsOn(host) },
          owner,
          { kind: "host-bridge", bridge: "fleet-br" },
          "vif",
        ),
      }));
    }
  }

  const H1 = "{ name: h1, uri: 'qemu+ssh://root@10.9.0.1/system' }";
  const H2 = "{ name: h2, uri: 'qemu+ssh://root@10.9.0.2/system' }";

  /** Fleet "fake" of `count` VMs placed over `hosts` as libvirt places them, on the fake backend. */
  function placedFleet(impairments: readonly string[], count = 4, hosts = [H1, H2]) {
    const placed = fleetOf(
      [
        "name: fake",
        "backend: libvirt",
        `count: ${count}`,
        "vm: { layer: { size: 64M } }",
        `hosts: [ ${hosts.join(", ")} ]`,
        ...(count === 4 ? ["groups: { a: [vm-1, vm-2], b: [vm-3, vm-4] }"] : []),
        ...impairments,
        "",
      ].join("\n"),
    );
    // The fake backend's own network (a bridge of the host's) with the libvirt fleet's placement.
    return { ...placed, backend: "qemu", network: fakeFleet(4).network };
  }

  it("puts the same bridge table on every host, groups known by MAC, and each VM's qdiscs on its own host", async () => {
    const { dir, bootOf } = await stateWithImages(await tempDir());
    const fleet = placedFleet([
      "impairments:",
      "  - { group: a, to: b, direction: out, loss: 10% }",
      "  - { vms: vm-1, direction: in, rate: 1mbit }",
    ]);
    const owner = { root: stateLayout(dir).root, fleet: "fake" };
    const tapOf = (name: string) =>
      hostTapName(owner, fleet.vms.find((vm) => vm.name === name)?.index ?? -1);
    const hostOf = new Map(fleet.vms.map((vm) => [vm.name, vm.host]));
    expect([...hostOf]).toEqual([
      ["vm-1", "h1"],
      ["vm-2", "h2"],
      ["vm-3", "h1"],
      ["vm-4", "h2"],
    ]);
    const taps = new Map([
      ["h1", [tapOf("vm-1"), tapOf("vm-3")]],
      ["h2", [tapOf("vm-2"), tapOf("vm-4")]],
    ]);
    const backend = new OverHosts(stateLayout(dir).fleet("fake").state, dir, taps);
    const { outcomes } = await upOnFake(dir, fleet, backend, bootOf);
    expect(outcomes.every((outcome) => outcome.ok)).toBe(true);
    const tables = ["h1", "h2"].map((host) =>
      (backend.onHost.get(host)?.commands ?? [])
        .filter((command) => command.argv.join(" ") === "nft -f -")
        .map((command) => command.input ?? ""),
    );
    expect(tables[0]).toHaveLength(1);
    expect(tables[1]).toEqual(tables[0]);
    const table = tables[0]?.[0] ?? "";
    const macOf = (name: string) => fleet.vms.find((vm) => vm.name === name)?.mac;
    expect(table).toContain(
      `set m1 { type ether_addr; elements = { ${macOf("vm-1")}, ${macOf("vm-2")} }; comment "group a"; }`,
    );
    expect(table).toContain(
      `set g2 { type ifname; elements = { "${tapOf("vm-3")}", "${tapOf("vm-4")}" }; comment "group b"; }`,
    );
    expect(table).toContain(`"${tapOf("vm-4")}" . ${macOf("vm-4")}`);
    expect(table).toContain("iifname @taps iifname . ether saddr != @own drop");
    expect(table).toContain("ether saddr @m1 oifname @g2 numgen random mod 1000000 < 100000 drop");
    // vm-1's rate is a qdisc on its tap, on h1 only.
    const batches = (host: string) =>
      (backend.onHost.get(host)?.commands ?? [])
        .filter((command) => command.argv.join(" ") === "tc -batch -")
        .map((command) => command.input ?? "")
        .join("");
    expect(batches("h1")).toContain(
      `qdisc replace dev ${tapOf("vm-1")} root handle 1: htb default 10`,
    );
    expect(batches("h1")).toContain("htb rate 1mbit ceil 1mbit");
    expect(batches("h2")).toBe("");
  });

  it("takes a destroyed VM out of every host's table", async () => {
    const { dir, bootOf } = await stateWithImages(await tempDir());
    const fleet = placedFleet(["impairments:", "  - { group: a, to: b, loss: 10% }"]);
    const backend = new OverHosts(stateLayout(dir).fleet("fake").state, dir, new Map());
    const { session } = await upOnFake(dir, fleet, backend, bootOf);
    const tap = hostTapName(session.network.owner, 2);
    const lastTable = (host: string) =>
      (backend.onHost.get(host)?.commands ?? [])
        .filter((command) => command.argv.join(" ") === "nft -f -")
        .map((command) => command.input ?? "")
        .at(-1);
    expect(lastTable("h1")).toContain(`"${tap}"`);
    await destroyVms(session, ["vm-2"], { whole: false, workers: 1 });
    for (const host of ["h1", "h2"]) {
      expect(lastTable(host)).toContain("ether saddr @m1 oifname @g2");
      expect(lastTable(host)).not.toContain(`"${tap}"`);
    }
  });

  it("applies a live change on the hosts that answer, records it, and names the one that does not", async () => {
    const { dir, bootOf } = await stateWithImages(await tempDir());
    const fleet = placedFleet([]);
    const backend = new OverHosts(stateLayout(dir).fleet("fake").state, dir, new Map());
    await upOnFake(dir, fleet, backend, bootOf);
    backend.down.add("h2");
    const notices: string[] = [];
    const session = await FleetSession.open(
      {
        runner: fakeHostRunner(),
        layout: stateLayout(dir),
        event: () => {},
        notice: (line) => notices.push(line),
      },
      fleet,
      backend,
    );
    await changeImpairments(session, (state) => ({ ...state, partition: ["a", "b"] }));
    const tables = (backend.onHost.get("h1")?.commands ?? []).filter(
      (command) => command.argv.join(" ") === "nft -f -",
    );
    expect(tables.map((command) => command.input)).toEqual([
      expect.stringContaining("ether saddr @m1 oifname @g2 drop"),
    ]);
    expect(notices).toEqual([
      "host h2 cannot be reached: ssh: connection refused: its VMs get this change with the next `shoal up`",
    ]);
    expect((await fakeRecord(dir)).impair?.partition).toEqual(["a", "b"]);
  });

  it("refuses to reschedule a down host's VMs where the other hosts have no room, before anything changes", async () => {
    const { dir, bootOf } = await stateWithImages(await tempDir());
    const roomForTwo = (host: string) => host.replace(" }", ", capacity: { vms: 2 } }");
    const fleet = placedFleet([], 4, [H1, H2].map(roomForTwo));
    const backend = new OverHosts(stateLayout(dir).fleet("fake").state, dir, new Map());
    await upOnFake(dir, fleet, backend, bootOf);
    const before = await fakeRecord(dir);
    backend.down.add("h2");
    backend.calls.length = 0;
    await expect(upOnFake(dir, fleet, backend, bootOf, { reschedule: true })).rejects.toThrow(
      /^fleet fake cannot be placed: .*no room for 2/,
    );
    expect(backend.calls).toEqual([]);
    expect(await fakeRecord(dir)).toEqual(before);
  });

  it("releases a host that left hosts: once its last VM is gone, and one that does not answer once it does", async () => {
    const { dir, bootOf } = await stateWithImages(await tempDir());
    const backend = new OverHosts(stateLayout(dir).fleet("fake").state, dir, new Map());
    await upOnFake(dir, placedFleet([]), backend, bootOf);
    const onlyH1 = placedFleet([], 1, [H1]);
    backend.down.add("h2");
    // h2's VMs are deleted, but h2 cannot be told: it stays recorded.
    await upOnFake(dir, onlyH1, backend, bootOf);
    expect(Object.keys((await fakeRecord(dir)).vms)).toEqual(["vm-1"]);
    expect(backend.released).toEqual([]);
    expect((await fakeRecord(dir)).hosts?.map((host) => host.name)).toEqual(["h1", "h2"]);
    backend.down.delete("h2");
    await upOnFake(dir, onlyH1, backend, bootOf);
    expect(backend.released).toEqual(["h2"]);
    expect((await fakeRecord(dir)).hosts?.map((host) => host.name)).toEqual(["h1"]);
  });
});

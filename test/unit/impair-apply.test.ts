import { describe, expect, it } from "vitest";
import { groupMembers, planImpairments } from "../../src/core/impair-plan.js";
import { renderImpairments } from "../../src/core/render/impair.js";
import { checkEffective, planOf } from "../../src/fleet/impairments.js";
import { NetworkImpairments } from "../../src/net/impairments.js";
import { FleetNetwork } from "../../src/net/network.js";
import { stateLayout } from "../../src/state/layout.js";
import { RecordingRunner } from "../helpers/recording-runner.js";
import { useTempDirs } from "../helpers/tmp.js";

const tempDir = useTempDirs();
const NS = ["ip", "netns", "exec"];

/** A fleet's network whose kernel state the test makes up: taps 1 and 2, and what tc holds. */
async function setUp(qdiscs: object[] = []) {
  const layout = stateLayout(await tempDir());
  const owner = { root: layout.root, fleet: "lab" };
  const runner = new RecordingRunner((command) => {
    const argv = command.argv.join(" ");
    if (argv.endsWith("tc -j qdisc show")) return { stdout: JSON.stringify(qdiscs) };
    if (argv.endsWith("-j link show type ifb")) return { stdout: "[]" };
    if (argv.endsWith("-j link show")) {
      return { stdout: JSON.stringify([{ ifname: "tap1" }, { ifname: "tap2" }]) };
    }
    return {};
  });
  const network = new FleetNetwork(runner, layout.fleet("lab").net, owner, {
    kind: "isolated",
    nat: false,
  });
  return { runner, network, impairments: new NetworkImpairments(runner, network) };
}

function rendered(network: FleetNetwork, rate: number) {
  const { members } = groupMembers({ east: ["a"], west: ["b"] }, ["a", "b"]);
  const plan = planImpairments({
    vms: [
      { name: "a", slot: 1 },
      { name: "b", slot: 2 },
    ],
    members,
    impairments: { vms: { a: { out: { rate } } }, paths: { "east>west": { loss: 10_000 } } },
    partition: [],
  });
  return renderImpairments(plan, network.impairNaming());
}

describe("the impairments a fleet's record holds after a change", () => {
  it("must keep every jitter within its delay, also a live jitter over a delay the file shrank", () => {
    const state = {
      groups: {},
      file: { vms: { a: { out: { delay: 10_000 } } }, paths: {} },
      live: { vms: { a: { out: { jitter: 15_000 } } }, paths: {} },
      partition: [],
    };
    expect(() => checkEffective(state)).toThrow(
      "a out: jitter 15ms is larger than its delay 10ms; a jitter varies a delay by at most its size",
    );
    expect(() =>
      checkEffective({ ...state, file: { vms: { a: { out: { delay: 20_000 } } }, paths: {} } }),
    ).not.toThrow();
  });
});

describe("a starting VM's part of the impairments", () => {
  it("is what planning the whole fleet gives its devices, from planning that VM alone", async () => {
    const { network } = await setUp();
    const state = {
      groups: { east: ["a", "c"], west: ["b"] },
      file: {
        vms: { a: { out: { rate: 2_000_000 } }, d: { in: { loss: 5000 } } },
        paths: { "west>east": { rate: 5_000_000 }, "east>west": { loss: 10_000 } },
      },
      live: { vms: { c: { in: { rate: 3_000_000 } } }, paths: {} },
      partition: [],
    };
    const vms = ["a", "b", "c", "d"].map((name, i) => ({ name, slot: i + 1 }));
    const whole = renderImpairments(planOf(state, vms), network.impairNaming());
    for (const vm of vms) {
      const alone = renderImpairments(planOf(state, [vm]), network.impairNaming());
      const own = (device: string) => device === `tap${vm.slot}` || device === `ifb${vm.slot}`;
      expect(alone.devices).toEqual(whole.devices.filter((script) => own(script.device)));
      expect(alone.ifbs).toEqual(whole.ifbs.filter(own));
    }
    // Some VMs have devices of their own (loss is nft, not tc: b and d have none).
    expect(whole.devices.map((script) => script.device).sort()).toEqual(["ifb1", "tap1", "tap3"]);
  });
});

describe("putting impairments on a fleet's network", () => {
  it("makes the ifb, runs one tc batch and one nft transaction in the fleet's namespace", async () => {
    const { runner, network, impairments } = await setUp();
    await impairments.apply(rendered(network, 1_000_000));
    const ns = network.namespace ?? "";
    // Besides what it looked at (the kernel's support, once, and what the namespace holds):
    expect(
      runner.commands.filter((command) => !command.probe).map((command) => command.argv),
    ).toEqual([
      ["ip", "-n", ns, "link", "add", "ifb1", "type", "ifb"],
      ["ip", "-n", ns, "link", "set", "ifb1", "txqueuelen", "1000", "up"],
      [...NS, ns, "tc", "-batch", "-"],
      [...NS, ns, "nft", "-f", "-"],
    ]);
    const batch = runner.commands.find((c) => !c.probe && c.argv.includes("-batch"));
    expect(String(batch?.input).split("\n")).toEqual([
      "qdisc replace dev ifb1 root handle 1: htb default 10",
      "class add dev ifb1 parent 1: classid 1:1 htb rate 1mbit ceil 1mbit quantum 12500",
      "class add dev ifb1 parent 1:1 classid 1:10 htb rate 1mbit ceil 1mbit quantum 12500",
      "qdisc add dev tap1 clsact",
      "filter add dev tap1 ingress protocol all prio 1 u32 match u32 0 0 action mirred egress redirect dev ifb1",
      "",
    ]);
    const nft = runner.commands.find((c) => !c.probe && c.argv.includes("nft"));
    expect(String(nft?.input)).toMatch(
      /^table bridge shoal_impair \{\}\ndelete table bridge shoal_impair\ntable bridge shoal_impair \{\n/,
    );
  });

  it("leaves a device alone that holds what was applied, and remakes one that changed", async () => {
    const held = [
      { kind: "htb", handle: "1:", dev: "ifb1", root: true },
      { kind: "clsact", handle: "ffff:", dev: "tap1" },
    ];
    const first = await setUp(held);
    await first.impairments.apply(rendered(first.network, 1_000_000));
    // The same state directory, the same kernel state: a second command changes no device.
    const again = new RecordingRunner((command) => {
      const argv = command.argv.join(" ");
      if (argv.endsWith("tc -j qdisc show")) return { stdout: JSON.stringify(held) };
      if (argv.endsWith("-j link show type ifb")) return { stdout: '[{"ifname":"ifb1"}]' };
      if (argv.endsWith("-j link show")) {
        return { stdout: '[{"ifname":"tap1"},{"ifname":"tap2"},{"ifname":"ifb1"}]' };
      }
      return {};
    });
    const network = new FleetNetwork(again, first.network.paths, first.network.owner, {
      kind: "isolated",
      nat: false,
    });
    await new NetworkImpairments(again, network).apply(rendered(network, 1_000_000));
    expect(again.commands.some((c) => !c.probe && c.argv.includes("-batch"))).toBe(false);
    await new NetworkImpairments(again, network).apply(rendered(network, 2_000_000));
    const batch = again.commands.find((c) => !c.probe && c.argv.includes("-batch"));
    expect(String(batch?.input).split("\n").slice(0, 3)).toEqual([
      "qdisc del dev ifb1 root",
      "qdisc replace dev ifb1 root handle 1: htb default 10",
      "class add dev ifb1 parent 1: classid 1:1 htb rate 2mbit ceil 2mbit quantum 25000",
    ]);
  });

  it("refuses delay on a kernel without netem before it changes anything", async () => {
    const { network } = await setUp();
    const runner = new RecordingRunner((command) =>
      command.argv[0] === "unshare"
        ? { code: 2, stderr: "Error: Specified qdisc kind is unknown." }
        : {},
    );
    const { members } = groupMembers({}, ["a"]);
    const plan = planImpairments({
      vms: [{ name: "a", slot: 1 }],
      members,
      impairments: { vms: { a: { in: { delay: 40_000 } } }, paths: {} },
      partition: [],
    });
    const withoutNetem = new NetworkImpairments(runner, network);
    await expect(
      withoutNetem.apply(renderImpairments(plan, network.impairNaming())),
    ).rejects.toThrow(
      /need the kernel's netem qdisc \(sch_netem\), which this host's kernel lacks/,
    );
    // It only looked: no command that changes anything ran.
    expect(runner.argvs).toContainEqual([
      "unshare",
      "--net",
      "tc",
      "qdisc",
      "add",
      "dev",
      "lo",
      "root",
      "netem",
      "delay",
      "1ms",
    ]);
    expect(runner.commands.filter((command) => !command.probe)).toEqual([]);
  });
});

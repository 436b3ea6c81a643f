import { describe, expect, it } from "vitest";
import {
  describeImpairment,
  formatDelay,
  formatPercent,
  formatRate,
  inSeries,
  parseDelay,
  parseImpairment,
  parsePercent,
  parseRate,
} from "../../src/core/impair.js";
import {
  groupMembers,
  type ImpairmentSet,
  NO_IMPAIRMENTS,
  overlaySets,
  planImpairments,
  resetLive,
  setLive,
} from "../../src/core/impair-plan.js";
import {
  hostIfbName,
  hostImpairTable,
  hostTapName,
  ifbName,
  isHostDeviceOf,
  NFT_COMMENT_MAX,
  ownerMark,
  tapName,
} from "../../src/core/net.js";
import {
  hostsNaming,
  type ImpairNaming,
  renderImpairments,
  renderNftReplacement,
} from "../../src/core/render/impair.js";
import { fleetOf, problemsOf } from "../helpers/fleet.js";

const ok = <T>(value: T) => ({ ok: true, value });

describe("impairment values", () => {
  it.each([
    ["40ms", 40_000],
    ["500us", 500],
    ["1.5s", 1_500_000],
    ["0.25ms", 250],
    ["0ms", 0],
    ["60s", 60_000_000],
  ])("delay %s is %i us", (text, us) => {
    expect(parseDelay(text)).toEqual(ok(us));
  });

  it.each([
    ["40", "is not a delay"],
    ["40 minutes", "is not a delay"],
    ["0.5us", "finer than a microsecond"],
    ["61s", "longer than 60s"],
    ["-1ms", "is not a delay"],
  ])("delay %s is refused (%s)", (text, why) => {
    const parsed = parseDelay(text);
    expect(parsed.ok).toBe(false);
    if (!parsed.ok) expect(parsed.message).toContain(why);
  });

  it.each([
    ["1%", 10_000],
    ["0.5%", 5000],
    ["0.0001%", 1],
    ["100%", 1_000_000],
    ["0%", 0],
  ])("share %s is %i ppm", (text, ppm) => {
    expect(parsePercent(text)).toEqual(ok(ppm));
  });

  it.each([
    ["101%", "over 100%"],
    ["0.00001%", "finer than 0.0001%"],
    ["5", "not a share"],
  ])("share %s is refused (%s)", (text, why) => {
    const parsed = parsePercent(text);
    expect(parsed.ok).toBe(false);
    if (!parsed.ok) expect(parsed.message).toContain(why);
  });

  it.each([
    ["10mbit", 10_000_000],
    ["1.1mbit", 1_100_000],
    ["512kbit", 512_000],
    ["1gbit", 1_000_000_000],
    ["10Mbit", 10_000_000],
  ])("rate %s is %i bit/s", (text, bits) => {
    expect(parseRate(text)).toEqual(ok(bits));
  });

  it.each([
    ["0mbit", "a rate of 0 lets nothing through"],
    ["10mbps", "bytes per second"],
    ["100bit", "below 1kbit"],
    ["200gbit", "over 100gbit"],
    ["fast", "not a rate"],
  ])("rate %s is refused (%s)", (text, why) => {
    const parsed = parseRate(text);
    expect(parsed.ok).toBe(false);
    if (!parsed.ok) expect(parsed.message).toContain(why);
  });

  it("parses the keys given, in their units, and names the first that is not a value", () => {
    expect(parseImpairment({ delay: "40ms", loss: "1%", rate: undefined })).toEqual(
      ok({ delay: 40_000, loss: 10_000 }),
    );
    expect(parseImpairment({})).toEqual(ok({}));
    expect(parseImpairment({ delay: "40ms", jitter: "lots", rate: "fast" })).toEqual({
      ok: false,
      failed: "jitter",
      message: expect.stringContaining("is not a jitter"),
    });
  });

  it("prints values the way they are written", () => {
    expect([formatDelay(40_000), formatDelay(1_500_000), formatDelay(250), formatDelay(0)]).toEqual(
      ["40ms", "1500ms", "250us", "0ms"],
    );
    expect([formatPercent(10_000), formatPercent(1), formatRate(10_000_000)]).toEqual([
      "1%",
      "0.0001%",
      "10mbit",
    ]);
    expect(describeImpairment({ delay: 40_000, loss: 0, rate: 1_000_000 })).toBe(
      "delay 40ms rate 1mbit",
    );
    expect(describeImpairment({})).toBe("none");
  });

  it("puts two impairments in series: delays add, chances combine, the lower rate holds", () => {
    expect(
      inSeries(
        { delay: 10_000, jitter: 1000, loss: 100_000, rate: 5_000_000 },
        { delay: 30_000, loss: 100_000, corrupt: 10_000 },
      ),
    ).toEqual({
      delay: 40_000,
      jitter: 1000,
      loss: 190_000,
      corrupt: 10_000,
      duplicate: 0,
      rate: 5_000_000,
    });
  });
});

describe("live changes over the fleet file's", () => {
  const file: ImpairmentSet = {
    vms: { "a-1": { out: { delay: 1000 }, in: { loss: 10_000 } } },
    paths: { "a>b": { rate: 1_000_000 } },
  };

  it("lay values key by key over the file's, each side and path alone", () => {
    const live = setLive(NO_IMPAIRMENTS, { kind: "vms", vms: ["a-1", "a-2"] }, "out", {
      loss: 20_000,
    });
    const paths = setLive(live, { kind: "path", from: "a", to: "b" }, "both", { delay: 5000 });
    expect(overlaySets(file, paths)).toEqual({
      vms: {
        "a-1": { out: { delay: 1000, loss: 20_000 }, in: { loss: 10_000 } },
        "a-2": { out: { loss: 20_000 } },
      },
      paths: { "a>b": { rate: 1_000_000, delay: 5000 }, "b>a": { delay: 5000 } },
    });
  });

  it("are taken back for one side, one path, or all at once", () => {
    let live = setLive(NO_IMPAIRMENTS, { kind: "vms", vms: ["a-1"] }, "both", { loss: 1 });
    live = setLive(live, { kind: "path", from: "a", to: "b" }, "both", { loss: 1 });
    const outGone = resetLive(live, { kind: "vms", vms: ["a-1"] }, "out");
    expect(outGone.vms).toEqual({ "a-1": { in: { loss: 1 } } });
    const oneWay = resetLive(live, { kind: "path", from: "a", to: "b" }, "out");
    expect(Object.keys(oneWay.paths)).toEqual(["b>a"]);
    expect(resetLive(live, undefined, "both")).toEqual(NO_IMPAIRMENTS);
  });
});

describe("groups", () => {
  it("pick VMs by pattern, each VM in one group at most", () => {
    const vms = ["e-1", "e-2", "w-1", "x"];
    const { members, clash } = groupMembers({ east: ["e-*"], west: ["w-*", "e-2"] }, vms);
    expect(members.get("east")).toEqual(["e-1", "e-2"]);
    expect(members.get("west")).toEqual(["e-2", "w-1"]);
    expect(clash).toEqual({ vm: "e-2", groups: ["east", "west"] });
    expect(groupMembers({ east: ["e-*"] }, vms).clash).toBeUndefined();
  });
});

const owner = { root: "/var/lib/shoal", fleet: "lab" };
const isolated: ImpairNaming = {
  nic: tapName,
  ifb: ifbName,
  owns: () => true,
  match: "marks",
  table: "shoal_impair",
};
const hostBridge: ImpairNaming = {
  nic: (slot) => hostTapName(owner, slot),
  ifb: (slot) => hostIfbName(owner, slot),
  owns: (device) => isHostDeviceOf(owner, device),
  match: "ports",
  table: "shoal_impair_x",
  comment: "shoal owner=/var/lib/shoal fleet=lab",
};

function planFor(set: ImpairmentSet, partition: string[] = []) {
  const vms = [
    { name: "e-1", slot: 1 },
    { name: "w-1", slot: 2 },
    { name: "z", slot: 3 },
  ];
  const { members } = groupMembers({ east: ["e-*"], west: ["w-*"] }, ["e-1", "w-1", "z"]);
  return planImpairments({ vms, members, impairments: set, partition });
}

describe("rendering impairments for tc and nft", () => {
  it("gives nothing to a fleet without impairments", () => {
    expect(renderImpairments(planFor(NO_IMPAIRMENTS), isolated)).toEqual({
      ifbs: [],
      devices: [],
      nft: undefined,
    });
  });

  it("shapes what a VM receives at its tap, what it sends on its ifb, and drops at random in nft", () => {
    const rendered = renderImpairments(
      planFor({
        vms: {
          "e-1": {
            out: { rate: 2_000_000, loss: 50_000 },
            in: { delay: 40_000, jitter: 5000, corrupt: 1000 },
          },
        },
        paths: {},
      }),
      isolated,
    );
    expect(rendered.ifbs).toEqual(["ifb1"]);
    expect(rendered.devices).toEqual([
      {
        device: "ifb1",
        lines: [
          "qdisc replace dev ifb1 root handle 1: htb default 10",
          "class add dev ifb1 parent 1: classid 1:1 htb rate 2mbit ceil 2mbit quantum 25000",
          "class add dev ifb1 parent 1:1 classid 1:10 htb rate 2mbit ceil 2mbit quantum 25000",
        ],
      },
      {
        device: "tap1",
        lines: [
          "qdisc replace dev tap1 root handle 1: htb default 10",
          "class add dev tap1 parent 1: classid 1:1 htb rate 100gbit ceil 100gbit burst 256k cburst 256k quantum 200000",
          "class add dev tap1 parent 1:1 classid 1:10 htb rate 100gbit ceil 100gbit burst 256k cburst 256k quantum 200000",
          "qdisc add dev tap1 parent 1:10 handle 10: netem limit 100000 delay 40ms 5ms corrupt 0.1%",
          "qdisc add dev tap1 clsact",
          "filter add dev tap1 ingress protocol all prio 1 u32 match u32 0 0 action mirred egress redirect dev ifb1",
        ],
      },
    ]);
    expect(rendered.nft).toBe(
      [
        "table bridge shoal_impair {",
        "  chain prerouting {",
        "    type filter hook prerouting priority -200; policy accept;",
        '    iifname "tap1" numgen random mod 1000000 < 50000 drop',
        "  }",
        "}",
        "",
      ].join("\n"),
    );
  });

  it("gives a path its own class at each receiving VM, picked by the sending group's mark", () => {
    const rendered = renderImpairments(
      planFor({
        vms: { "w-1": { in: { rate: 5_000_000 } } },
        paths: { "east>west": { delay: 40_000, rate: 10_000_000, loss: 10_000 } },
      }),
      isolated,
    );
    expect(rendered.ifbs).toEqual([]);
    expect(rendered.devices).toEqual([
      {
        device: "tap2",
        lines: [
          "qdisc replace dev tap2 root handle 1: htb default 10",
          "class add dev tap2 parent 1: classid 1:1 htb rate 5mbit ceil 5mbit quantum 62500",
          "class add dev tap2 parent 1:1 classid 1:10 htb rate 5mbit ceil 5mbit quantum 62500",
          // The path after the VM's own link: its rate is capped by the VM's.
          "class add dev tap2 parent 1:1 classid 1:101 htb rate 5mbit ceil 5mbit quantum 62500",
          "qdisc add dev tap2 parent 1:101 handle 101: netem limit 100000 delay 40ms",
        ],
      },
    ]);
    expect(rendered.nft).toContain(
      "    oifname @g2 meta mark and 0x00ff0000 == 0x00010000 numgen random mod 1000000 < 10000 drop\n" +
        "    oifname @g2 meta mark and 0x00ff0000 == 0x00010000 meta priority set 1:101\n",
    );
    expect(rendered.nft).toContain(
      "    iifname @g1 meta mark set meta mark and 0xff00ffff or 0x00010000\n" +
        "    iifname @g2 meta mark set meta mark and 0xff00ffff or 0x00020000\n",
    );
    expect(rendered.nft).toContain(
      '  set g1 { type ifname; elements = { "tap1" }; comment "group east"; }',
    );
  });

  it("cuts partitioned groups apart both ways, by marks on the fleet's own network", () => {
    const rendered = renderImpairments(planFor(NO_IMPAIRMENTS, ["east", "west"]), isolated);
    expect(rendered.devices).toEqual([]);
    expect(rendered.nft).toContain(
      "  chain postrouting {\n" +
        "    type filter hook postrouting priority -200; policy accept;\n" +
        "    oifname @g2 meta mark and 0x00ff0000 == 0x00010000 drop\n" +
        "    oifname @g1 meta mark and 0x00ff0000 == 0x00020000 drop\n" +
        "  }",
    );
  });

  it("matches both ports in the forward hook on a host bridge, and marks the table as the fleet's", () => {
    const rendered = renderImpairments(
      planFor({ vms: {}, paths: { "east>west": { loss: 10_000 } } }, ["east", "west"]),
      hostBridge,
    );
    const tap = hostTapName(owner, 1);
    expect(rendered.nft).toBe(
      [
        "table bridge shoal_impair_x {",
        '  comment "shoal owner=/var/lib/shoal fleet=lab"',
        `  set g1 { type ifname; elements = { "${tap}" }; comment "group east"; }`,
        `  set g2 { type ifname; elements = { "${hostTapName(owner, 2)}" }; comment "group west"; }`,
        "  chain forward {",
        "    type filter hook forward priority -200; policy accept;",
        "    iifname @g1 oifname @g2 drop",
        "    iifname @g2 oifname @g1 drop",
        "    iifname @g1 oifname @g2 numgen random mod 1000000 < 10000 drop",
        "  }",
        "}",
        "",
      ].join("\n"),
    );
    expect(rendered.nft).not.toContain("meta mark");
  });

  it("over several hosts, knows a group's packets by their VMs' MACs and drops what a tap sends from another MAC", () => {
    const macs = new Map([
      ["e-1", "52:54:00:00:00:01"],
      ["w-1", "52:54:00:00:00:02"],
      ["z", "52:54:00:00:00:03"],
    ]);
    const naming = hostsNaming(owner, macs);
    const rendered = renderImpairments(
      planFor({ vms: {}, paths: { "east>west": { loss: 10_000, rate: 1_000_000 } } }, ["east"]),
      naming,
    );
    const [e1, w1, z] = [1, 2, 3].map((slot) => hostTapName(owner, slot));
    expect(rendered.nft).toBe(
      [
        `table bridge ${hostImpairTable(owner)} {`,
        `  comment "${ownerMark(owner, NFT_COMMENT_MAX)}"`,
        `  set g1 { type ifname; elements = { "${e1}" }; comment "group east"; }`,
        '  set m1 { type ether_addr; elements = { 52:54:00:00:00:01 }; comment "group east"; }',
        `  set g2 { type ifname; elements = { "${w1}" }; comment "group west"; }`,
        '  set m2 { type ether_addr; elements = { 52:54:00:00:00:02 }; comment "group west"; }',
        `  set taps { type ifname; elements = { "${e1}", "${w1}", "${z}" }; comment "the fleet's taps"; }`,
        `  set own { type ifname . ether_addr; elements = { "${e1}" . 52:54:00:00:00:01, "${w1}" . 52:54:00:00:00:02, "${z}" . 52:54:00:00:00:03 }; comment "each tap's MAC"; }`,
        "  chain prerouting {",
        "    type filter hook prerouting priority -200; policy accept;",
        "    iifname @taps iifname . ether saddr != @own drop",
        "  }",
        "  chain forward {",
        "    type filter hook forward priority -200; policy accept;",
        "    ether saddr @m1 oifname @g2 numgen random mod 1000000 < 10000 drop",
        "    ether saddr @m1 oifname @g2 meta priority set 1:101",
        "  }",
        "}",
        "",
      ].join("\n"),
    );
    // What the path's rate does is a class on the receiving VM's tap, wherever its host is.
    expect(rendered.devices.map((script) => script.device)).toEqual([w1]);
    // Without group rules, no VM's MAC is held to: per-VM rules match its tap alone.
    const own = renderImpairments(
      planFor({ vms: { "e-1": { out: { loss: 10_000 } } }, paths: {} }),
      naming,
    );
    expect(own.nft).not.toContain("ether");
    // A MAC the record holds that is not one is refused before it reaches nft.
    expect(() =>
      renderImpairments(
        planFor({ vms: {}, paths: {} }, ["east", "west"]),
        hostsNaming(owner, new Map([["e-1", "52:54:00:00:00:01 } drop"]])),
      ),
    ).toThrow("reached a renderer unvalidated");
  });

  it("replaces the table in one transaction, or removes it", () => {
    expect(renderNftReplacement("shoal_impair", undefined)).toBe(
      "table bridge shoal_impair {}\ndelete table bridge shoal_impair\n",
    );
    expect(renderNftReplacement("shoal_impair", "table bridge shoal_impair {\n}\n")).toBe(
      "table bridge shoal_impair {}\ndelete table bridge shoal_impair\ntable bridge shoal_impair {\n}\n",
    );
    expect(() => renderNftReplacement("bad name; flush ruleset", undefined)).toThrow();
  });

  it("names host-side devices after the fleet's owner, and knows them", () => {
    expect(isHostDeviceOf(owner, hostTapName(owner, 7))).toBe(true);
    expect(isHostDeviceOf(owner, hostIfbName(owner, 7))).toBe(true);
    expect(isHostDeviceOf({ ...owner, fleet: "other" }, hostIfbName(owner, 7))).toBe(false);
    expect(isHostDeviceOf(owner, "eth0")).toBe(false);
  });
});

describe("groups and impairments in the fleet file", () => {
  const head = ["name: lab", "count: 4", 'vm: { name: "n-{n}" }', "groups:"];

  it("resolve to what each VM side and each path gets", () => {
    const fleet = fleetOf(
      [
        ...head,
        '  east: ["n-1", "n-2"]',
        '  west: "n-{3,4}"',
        "impairments:",
        "  - { group: east, to: west, delay: 40ms, rate: 10mbit }",
        "  - { vms: n-4, direction: in, loss: 1% }",
        "  - { group: west, direction: out, rate: 1mbit }",
      ].join("\n"),
    );
    expect(fleet.impairments).toEqual({
      groups: { east: ["n-1", "n-2"], west: ["n-{3,4}"] },
      set: {
        vms: {
          "n-4": { in: { loss: 10_000 }, out: { rate: 1_000_000 } },
          "n-3": { out: { rate: 1_000_000 } },
        },
        paths: {
          "east>west": { delay: 40_000, rate: 10_000_000 },
          "west>east": { delay: 40_000, rate: 10_000_000 },
        },
      },
    });
    expect(fleetOf("name: lab").impairments).toEqual({ groups: {}, set: NO_IMPAIRMENTS });
  });

  it("are refused with the position of each problem", () => {
    expect(
      problemsOf(
        [
          ...head,
          '  east: ["n-1", "n-2"]',
          '  west: "x-*"',
          "impairments:",
          "  - { group: east, to: south, loss: 5% }",
          "  - { vms: n-9, loss: 5% }",
          "  - { vms: n-1, jitter: 5ms }",
          "  - { group: east, loss: 1% }",
        ].join("\n"),
      ),
    ).toEqual(['test.yaml:6:9 groups.west: "x-*" matches no VM of the fleet']);
    expect(
      problemsOf(
        [
          ...head,
          '  east: ["n-1", "n-2"]',
          '  west: "n-{3,4}"',
          "impairments:",
          "  - { group: east, to: south, loss: 5% }",
          "  - { vms: n-9, loss: 5% }",
          "  - { vms: n-1, delay: 1ms, jitter: 5ms }",
          "  - { group: east, loss: 1% }",
          "  - { group: east, to: west, direction: out, loss: 1% }",
          "  - { group: west, to: east, loss: 1% }",
        ].join("\n"),
      ),
    ).toEqual([
      "test.yaml:8:24 impairments[0].to: there is no group south in groups:",
      'test.yaml:9:12 impairments[1].vms: "n-9" matches no VM of the fleet',
      "test.yaml:10:37 impairments[2].jitter: jitter 5ms is larger than its delay 1ms; a jitter varies a delay by at most its size",
      "test.yaml:11:5 impairments[3]: overlaps impairments[2] on n-1 out, n-1 in; give each link one rule",
      "test.yaml:13:5 impairments[5]: overlaps impairments[4] on the path east to west; give each link one rule",
    ]);
  });

  it("refuse a VM in two groups, a rule of nothing, and bad values", () => {
    expect(problemsOf([...head, '  east: "n-*"', '  west: "n-4"'].join("\n"))).toEqual([
      "test.yaml:6:9 groups.west: VM n-4 is also in group east; a VM is in at most one group",
    ]);
    expect(
      problemsOf(
        [
          ...head,
          '  east: "n-*"',
          '  west: "n-4"',
          "impairments:",
          "  - { vms: n-1 }",
          "  - { vms: n-1, group: east, loss: 1% }",
          "  - { to: east, loss: 1% }",
          "  - { vms: n-2, rate: 0bit, loss: 120% }",
        ].join("\n"),
      ),
    ).toEqual([
      "test.yaml:8:5 impairments[0]: impairs nothing; give at least one of delay, jitter, loss, rate, corrupt, duplicate",
      "test.yaml:9:5 impairments[1]: give vms: or group:, not both",
      "test.yaml:10:5 impairments[2]: needs vms: or group: to say whose links it impairs",
      "test.yaml:11:23 impairments[3].rate: a rate of 0 lets nothing through; cut VMs off with `shoal net partition`, or give a rate like 1kbit",
      'test.yaml:11:35 impairments[3].loss: "120%" is over 100%',
    ]);
  });
});

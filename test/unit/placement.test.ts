import { describe, expect, it } from "vitest";
import { parseLibvirtUri } from "../../src/core/hosts.js";
import {
  type PlacementHost,
  type PlacementInput,
  type PlacementPolicy,
  placeVms,
} from "../../src/core/placement.js";
import { type HostsDown, placeFleet } from "../../src/fleet/planning.js";
import { fleetOf, problemsOf } from "../helpers/fleet.js";

const hosts = (...names: string[]): PlacementHost[] =>
  names.map((name) => ({ name, capacity: {} }));
const vms = (count: number, memoryMiB = 128) =>
  Array.from({ length: count }, (_, i) => ({ name: `vm-${i + 1}`, memoryMiB }));
const SPREAD: PlacementPolicy = { mode: "spread", pins: [] };
const PACK: PlacementPolicy = { mode: "pack", pins: [] };

/** Each host's VMs, in fleet order. */
function placed(input: PlacementInput): Record<string, string[]> {
  const result = placeVms(input);
  if (!result.ok) throw new Error(result.message);
  const byHost: Record<string, string[]> = {};
  for (const vm of input.vms) {
    const host = result.hostOf.get(vm.name) ?? "?";
    byHost[host] = [...(byHost[host] ?? []), vm.name];
  }
  return byHost;
}

describe("placing VMs on hosts", () => {
  it("spreads new VMs evenly, in turn over the hosts' order", () => {
    expect(placed({ hosts: hosts("a", "b", "c"), policy: SPREAD, vms: vms(7) })).toEqual({
      a: ["vm-1", "vm-4", "vm-7"],
      b: ["vm-2", "vm-5"],
      c: ["vm-3", "vm-6"],
    });
  });

  it("packs them into the first host with room, by VM count and by memory", () => {
    const byCount = [
      { name: "a", capacity: { vms: 4 } },
      { name: "b", capacity: { vms: 4 } },
    ];
    expect(placed({ hosts: byCount, policy: PACK, vms: vms(6) })).toEqual({
      a: ["vm-1", "vm-2", "vm-3", "vm-4"],
      b: ["vm-5", "vm-6"],
    });
    const byMemory = [
      { name: "a", capacity: { memoryMiB: 300 } },
      { name: "b", capacity: {} },
    ];
    expect(placed({ hosts: byMemory, policy: PACK, vms: vms(3) })).toEqual({
      a: ["vm-1", "vm-2"],
      b: ["vm-3"],
    });
  });

  it("spreads only over hosts with room left", () => {
    const input = {
      hosts: [
        { name: "small", capacity: { vms: 1 } },
        { name: "big", capacity: {} },
      ],
      policy: SPREAD,
      vms: vms(4),
    };
    expect(placed(input)).toEqual({ small: ["vm-1"], big: ["vm-2", "vm-3", "vm-4"] });
  });

  it("puts pinned VMs on their pin's host and spreads the rest around them", () => {
    const policy: PlacementPolicy = {
      mode: "spread",
      pins: [{ vms: ["vm-1", "vm-2"], host: "a" }],
    };
    expect(placed({ hosts: hosts("a", "b"), policy, vms: vms(4) })).toEqual({
      a: ["vm-1", "vm-2"],
      b: ["vm-3", "vm-4"],
    });
    const patterns: PlacementPolicy = { mode: "pack", pins: [{ vms: ["vm-{3,4}"], host: "b" }] };
    expect(placed({ hosts: hosts("a", "b"), policy: patterns, vms: vms(4) })).toEqual({
      a: ["vm-1", "vm-2"],
      b: ["vm-3", "vm-4"],
    });
  });

  it("leaves VMs where they run: a new host takes only new VMs", () => {
    const current = new Map([
      ["vm-1", "a"],
      ["vm-2", "b"],
      ["vm-3", "a"],
      ["vm-4", "b"],
    ]);
    expect(placed({ hosts: hosts("a", "b", "c"), policy: SPREAD, vms: vms(6), current })).toEqual({
      a: ["vm-1", "vm-3"],
      b: ["vm-2", "vm-4"],
      c: ["vm-5", "vm-6"],
    });
  });

  it("moves VMs whose host left the file or whose pin now names another host", () => {
    const current = new Map([
      ["vm-1", "gone"],
      ["vm-2", "a"],
    ]);
    const policy: PlacementPolicy = { mode: "spread", pins: [{ vms: ["vm-2"], host: "b" }] };
    expect(placed({ hosts: hosts("a", "b"), policy, vms: vms(2), current })).toEqual({
      a: ["vm-1"],
      b: ["vm-2"],
    });
  });

  it("keeps VMs on a closed host and places no new one there", () => {
    const current = new Map([["vm-1", "a"]]);
    expect(
      placed({
        hosts: hosts("a", "b"),
        policy: SPREAD,
        vms: vms(3),
        current,
        closed: new Set(["a"]),
      }),
    ).toEqual({ a: ["vm-1"], b: ["vm-2", "vm-3"] });
  });

  it("says how many VMs do not fit, and which host is too small for its pinned VMs", () => {
    const small = [
      { name: "a", capacity: { vms: 2 } },
      { name: "b", capacity: { memoryMiB: 256 } },
    ];
    expect(placeVms({ hosts: small, policy: SPREAD, vms: vms(5) })).toEqual({
      ok: false,
      message:
        "the hosts have no room for 1 of the fleet's 5 VMs (capacity: in hosts:); add a host or raise a capacity",
    });
    const pinned: PlacementPolicy = { mode: "spread", pins: [{ vms: ["*"], host: "a" }] };
    expect(placeVms({ hosts: small, policy: pinned, vms: vms(3) })).toEqual({
      ok: false,
      host: "a",
      message: "host a has room for 2 VMs, fewer than the VMs pinned to it or already on it",
    });
    expect(
      placeVms({ hosts: hosts("a"), policy: SPREAD, vms: vms(1), closed: new Set(["a"]) }),
    ).toEqual({ ok: false, message: "no host can take 1 VMs: every host is closed to new VMs" });
  });

  it("places 10,000 VMs over 10 hosts evenly (bench/plan.ts times it)", () => {
    const names = Array.from({ length: 10 }, (_, i) => `h${i}`);
    const result = placeVms({ hosts: hosts(...names), policy: SPREAD, vms: vms(10_000) });
    if (!result.ok) throw new Error(result.message);
    const counts = new Map<string, number>();
    for (const host of result.hostOf.values()) counts.set(host, (counts.get(host) ?? 0) + 1);
    expect([...counts.values()]).toEqual(Array(10).fill(1000));
  });
});

describe("libvirt URIs", () => {
  it.each([
    ["qemu:///system", { driver: "qemu" }],
    ["qemu+ssh://root@10.0.0.11/system", { driver: "qemu", hostname: "10.0.0.11" }],
    [
      "qemu+ssh://root@node7:2222/system?keyfile=/root/.ssh/id_fleet&no_tty=1",
      { driver: "qemu", hostname: "node7" },
    ],
    ["qemu+ssh://root@[fd00::7]/system", { driver: "qemu", hostname: "fd00::7" }],
    ["qemu+unix:///system", { driver: "qemu" }],
  ])("reads %s", (text, uri) => {
    expect(parseLibvirtUri(text)).toEqual({ ok: true, uri });
  });

  it.each([
    ["vbox:///session", "names a libvirt driver shoal has no domains for; use qemu"],
    [
      "xen+ssh://root@h/system",
      "names libvirt's Xen driver, for which shoal renders no domains yet; use backend xl on Xen hosts",
    ],
    [
      "qemu+carrier://h/system",
      "names no libvirt transport; use one of ssh, libssh, libssh2, tcp, tls, unix, ext",
    ],
    ["qemu:///session", "is not a system connection; its path must be /system (qemu:///system)"],
    ["qemu+ssh:///system", "names no host, which ssh connections need"],
    ["host1", "is not a libvirt URI like qemu+ssh://root@host/system"],
    [
      "qemu+ssh://root@h/system --readonly",
      "is not a libvirt URI: no spaces or control characters, at most 1024 bytes",
    ],
  ])("refuses %s", (text, why) => {
    expect(parseLibvirtUri(text)).toEqual({ ok: false, message: `${JSON.stringify(text)} ${why}` });
  });
});

describe("hosts: and placement: in the fleet file", () => {
  const HOSTS = `hosts:
  - { name: h1, uri: "qemu+ssh://root@10.0.0.11/system", capacity: { vms: 4 } }
  - { name: h2, uri: "qemu+ssh://root@node2/system", address: 10.0.0.12 }
`;

  it("place each VM on a host, spread by default, pins first", () => {
    const fleet = fleetOf(
      `name: lab\nbackend: libvirt\ncount: 5\n${HOSTS}placement: { pin: [ { vms: "vm-{4,5}", host: h1 } ] }\n`,
    );
    expect(fleet.vms.map((vm) => [vm.name, vm.host])).toEqual([
      ["vm-1", "h2"],
      ["vm-2", "h2"],
      ["vm-3", "h1"],
      ["vm-4", "h1"],
      ["vm-5", "h1"],
    ]);
    expect(fleet.hosts?.list.map((host) => [host.name, host.address, host.capacity])).toEqual([
      ["h1", "10.0.0.11", { vms: 4 }],
      ["h2", "10.0.0.12", {}],
    ]);
  });

  it("run a libvirt fleet without hosts: on this machine's qemu:///system", () => {
    const fleet = fleetOf("name: lab\nbackend: libvirt\ncount: 2\n");
    expect(fleet.hosts?.list).toEqual([
      { name: "local", uri: "qemu:///system", driver: "qemu", capacity: {} },
    ]);
    expect(fleet.vms.map((vm) => vm.host)).toEqual(["local", "local"]);
  });

  it.each([
    [
      "hosts on another backend",
      `name: lab\n${HOSTS}`,
      ["test.yaml:3:3 hosts: places VMs on libvirt hosts; add backend: libvirt"],
    ],
    [
      "a host named twice and a URI given twice",
      `name: lab\nbackend: libvirt\nhosts:\n  - { name: h1, uri: "qemu:///system" }\n  - { name: h1, uri: "qemu:///system" }\n`,
      [
        'test.yaml:5:13 hosts[1].name: "h1" is listed twice (also hosts[0])',
        'test.yaml:5:22 hosts[1].uri: "qemu:///system" is listed twice (also hosts[0])',
      ],
    ],
    [
      "an unknown URI",
      `name: lab\nbackend: libvirt\nhosts:\n  - { name: h1, uri: "vbox:///session" }\n`,
      [
        'test.yaml:4:22 hosts[0].uri: "vbox:///session" names a libvirt driver shoal has no domains for; use qemu',
      ],
    ],
    [
      "a pin naming no host, and one matching no VM",
      `name: lab\nbackend: libvirt\ncount: 2\n${HOSTS}placement:\n  pin:\n    - { vms: "vm-*", host: h9 }\n    - { vms: "db-*", host: h1 }\n`,
      [
        'test.yaml:9:28 placement.pin[0].host: "h9" is not a host of hosts: (h1, h2)',
        'test.yaml:10:14 placement.pin[1].vms: "db-*" matches no VM of the fleet',
      ],
    ],
    [
      "capacity exceeded",
      `name: lab\nbackend: libvirt\ncount: 3\nhosts:\n  - { name: h1, uri: "qemu:///system", capacity: { memory: 256M } }\n`,
      [
        "test.yaml:5:3 hosts: the hosts have no room for 1 of the fleet's 3 VMs (capacity: in hosts:); add a host or raise a capacity",
      ],
    ],
  ])("refuse %s before anything is made", (_what, text, expected) => {
    expect(problemsOf(text)).toEqual(expected);
  });
});

describe("a fleet's VMs around hosts that are down", () => {
  const fleet = fleetOf(`name: lab
backend: libvirt
count: 4
hosts:
  - { name: h1, uri: "qemu+ssh://root@10.0.0.11/system" }
  - { name: h2, uri: "qemu+ssh://root@10.0.0.12/system" }
  - { name: h3, uri: "qemu+ssh://root@10.0.0.13/system" }
placement: { pin: [ { vms: "vm-4", host: h1 } ] }
`);
  // vm-1 and vm-4 on h1, vm-2 on h2; vm-3 is new.
  const recorded = new Map(
    fleet.vms
      .filter((vm) => vm.name !== "vm-3")
      .map((vm) => [vm.name, { ...vm, host: vm.name === "vm-2" ? "h2" : "h1" }]),
  );
  const hostOf = (down?: HostsDown) =>
    Object.fromEntries(placeFleet(fleet, recorded, down).map((vm) => [vm.name, vm.host]));

  it("leave a down host's VMs there and place new ones on the others", () => {
    expect(hostOf({ hosts: new Set(["h1", "h3"]), reschedule: false })).toEqual({
      "vm-1": "h1",
      "vm-2": "h2",
      "vm-3": "h2",
      "vm-4": "h1",
    });
  });

  it("rescheduled, place a down host's VMs on the others, except those pinned to it", () => {
    expect(hostOf({ hosts: new Set(["h1"]), reschedule: true })).toEqual({
      "vm-1": "h3",
      "vm-2": "h2",
      "vm-3": "h2",
      "vm-4": "h1",
    });
  });
});

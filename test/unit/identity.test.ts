import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import type { VmIdentity } from "../../src/core/fleet.js";
import { deriveIdentities } from "../../src/core/identity.js";
import { makeSubnet, parseCidr } from "../../src/core/ipv4.js";
import { fleetOf } from "../helpers/fleet.js";

const identity = ({ name, hostname, index, mac, ip, machineId }: VmIdentity) => ({
  name,
  hostname,
  index,
  mac,
  ip,
  machineId,
});
const identities = (text: string) => fleetOf(text).vms.map(identity);
const byName = (list: ReturnType<typeof identities>) => new Map(list.map((vm) => [vm.name, vm]));

function subnet(cidr: string, gateway?: number) {
  const parsed = parseCidr(cidr);
  if (!parsed.ok) throw new Error(parsed.message);
  return makeSubnet(parsed.network, parsed.prefix, gateway);
}

describe("identity is derived from the fleet file alone", () => {
  it("is the same on every run", () => {
    const text = 'name: lab\ncount: 50\nvm: { name: "agent-{n:03}" }\n';
    expect(identities(text)).toEqual(identities(text));
  });

  it("is the same on every machine and in every shoal version: these values are a contract", () => {
    expect(identities('name: lab\ncount: 2\nvm: { name: "agent-{n:03}" }\n')).toEqual([
      {
        name: "agent-001",
        hostname: "agent-001",
        index: 1,
        mac: "52:54:00:69:35:3f",
        ip: "10.77.0.2",
        machineId: "5432d5c765c44aada58e382792843ff0",
      },
      {
        name: "agent-002",
        hostname: "agent-002",
        index: 2,
        mac: "52:54:00:d9:94:fc",
        ip: "10.77.0.3",
        machineId: "ff1c00870fc94d92b6ab5accf7269592",
      },
    ]);
  });

  it("takes MACs from the fleet and VM name, as documented: sha256 of 'mac', fleet, name, attempt", () => {
    const expected = createHash("sha256")
      .update("mac\0lab\0agent-001\x000")
      .digest()
      .subarray(0, 3)
      .toString("hex");
    const vm = identities('name: lab\ncount: 1\nvm: { name: "agent-{n:03}" }\n')[0];
    expect(vm?.mac.replaceAll(":", "")).toBe(`525400${expected}`);
  });

  it("uses Xen's OUI for xl and QEMU's for qemu", () => {
    expect(
      identities("name: lab\nbackend: xl\n").every((vm) => vm.mac.startsWith("00:16:3e:")),
    ).toBe(true);
    expect(
      identities("name: lab\nbackend: qemu\n").every((vm) => vm.mac.startsWith("52:54:00:")),
    ).toBe(true);
  });

  it("differs between fleets with the same VM names", () => {
    const a = identities("name: one\n");
    const b = identities("name: two\n");
    a.forEach((vm, i) => {
      expect(vm.mac).not.toBe(b[i]?.mac);
      expect(vm.machineId).not.toBe(b[i]?.machineId);
    });
  });

  it("gives machine-ids that look like systemd's: 32 hex digits, UUID version 4", () => {
    for (const vm of identities("name: lab\ncount: 100\n")) {
      expect(vm.machineId).toMatch(/^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$/);
    }
  });
});

describe("raising count", () => {
  it("changes nothing for the VMs that were there", () => {
    const fifty = identities("name: lab\ncount: 50\n");
    const fiftyOne = identities("name: lab\ncount: 51\n");
    expect(fiftyOne.slice(0, 50)).toEqual(fifty);
    expect(fiftyOne[50]?.name).toBe("vm-51");
  });
});

describe("an explicit list", () => {
  const names = Array.from(
    { length: 40 },
    (_, i) => `node-${String.fromCharCode(97 + (i % 26))}${i}`,
  );
  const list = (subset: readonly string[], cidr = "10.77.0.0/16") =>
    `name: lab\nnetwork: { subnet: ${cidr} }\nvms:\n${subset.map((name) => `  - name: ${name}\n`).join("")}`;

  it("renumbers nobody when a VM is removed", () => {
    const all = byName(identities(list(names)));
    for (const removed of names) {
      const rest = identities(list(names.filter((name) => name !== removed)));
      for (const vm of rest) expect(vm).toEqual(all.get(vm.name));
    }
  });

  it("does not depend on the order of the list", () => {
    const forward = byName(identities(list(names)));
    for (const vm of identities(list([...names].reverse())))
      expect(vm).toEqual(forward.get(vm.name));
  });

  it("settles an address collision in name order, and only the winner's removal moves the loser", () => {
    const cidr = "10.0.0.0/29";
    // A VM alone in the list sits in its home slot; find two names with the same home.
    const home = (name: string) => identities(list([name], cidr))[0]?.ip;
    const candidates = Array.from({ length: 26 }, (_, i) => `vm-${String.fromCharCode(97 + i)}`);
    const [winner, loser] =
      candidates.flatMap((a) =>
        candidates.filter((b) => b > a && home(a) === home(b)).map((b) => [a, b]),
      )[0] ?? [];
    if (!winner || !loser) throw new Error("no two of 26 names share one of 5 slots: impossible");
    const both = byName(identities(list([loser, winner], cidr)));
    expect(both.get(winner)?.ip).toBe(home(winner));
    expect(both.get(loser)?.ip).not.toBe(home(loser));
    expect(byName(identities(list([winner], cidr))).get(winner)).toEqual(both.get(winner));
    expect(identities(list([loser], cidr))[0]?.ip).toBe(home(loser));
  });

  it("fills a subnet exactly, and refuses one VM more", () => {
    const five = ["a", "b", "c", "d", "e"];
    expect(
      identities(list(five, "10.0.0.0/29"))
        .map((vm) => vm.index)
        .sort(),
    ).toEqual([1, 2, 3, 4, 5]);
    expect(() => identities(list([...five, "f"], "10.0.0.0/29"))).toThrow(
      "6 VMs do not fit in network.subnet 10.0.0.0/29, which has 5 VM addresses",
    );
  });
});

describe("uniqueness across the whole fleet", () => {
  it("holds for 1023 VMs, the most a fleet has, in a /16", () => {
    const vms = identities("name: lab\ncount: 1023\n");
    for (const key of ["name", "mac", "ip", "machineId", "index"] as const) {
      expect(new Set(vms.map((vm) => vm[key])).size).toBe(1023);
    }
  });

  it("resolves MAC hash collisions instead of sharing a MAC", () => {
    // 20000 names over 2^24 MAC suffixes collide about a dozen times on the first attempt.
    const requests = Array.from({ length: 20_000 }, (_, i) => ({ name: `n${i}`, counter: i + 1 }));
    const { identities: vms } = deriveIdentities(
      "lab",
      "52:54:00",
      subnet("10.0.0.0/16"),
      requests,
    );
    const firstAttempt = requests.map(({ name }) =>
      createHash("sha256").update(`mac\0lab\0${name}\x000`).digest().subarray(0, 3).toString("hex"),
    );
    const collisions = firstAttempt.length - new Set(firstAttempt).size;
    expect(collisions).toBeGreaterThan(0);
    expect(new Set(vms.map((vm) => vm.mac)).size).toBe(20_000);
    // The VM that sorts first keeps its hashed MAC; the other one moves.
    const seen = new Map<string, string>();
    const sorted = requests
      .map((r, i) => [r.name, i] as const)
      .sort(([a], [b]) => (a < b ? -1 : 1));
    for (const [name, i] of sorted) {
      const mac = vms[i]?.mac.slice(9).replaceAll(":", "");
      if (!seen.has(firstAttempt[i] ?? "")) expect(mac).toBe(firstAttempt[i]);
      else expect(mac).not.toBe(firstAttempt[i]);
      seen.set(firstAttempt[i] ?? "", name);
    }
  });
});

describe("addresses", () => {
  it("skip the network, gateway and broadcast addresses at both ends of the subnet", () => {
    const vms = identities("name: a\ncount: 253\nnetwork: { subnet: 192.168.5.0/24 }\n");
    expect(vms[0]?.ip).toBe("192.168.5.2");
    expect(vms[252]?.ip).toBe("192.168.5.254");
    expect(vms.some((vm) => ["192.168.5.0", "192.168.5.1", "192.168.5.255"].includes(vm.ip))).toBe(
      false,
    );
  });

  it("step over a gateway in the middle of the range", () => {
    const vms = identities(
      "name: a\ncount: 5\nnetwork: { subnet: 10.0.0.0/29, gateway: 10.0.0.3 }\n",
    );
    expect(vms.map((vm) => vm.ip)).toEqual([
      "10.0.0.1",
      "10.0.0.2",
      "10.0.0.4",
      "10.0.0.5",
      "10.0.0.6",
    ]);
  });

  it("fit one VM in a /30 and cross byte boundaries in larger subnets", () => {
    expect(identities("name: a\ncount: 1\nnetwork: { subnet: 10.0.0.4/30 }\n")[0]?.ip).toBe(
      "10.0.0.6",
    );
    expect(identities("name: a\ncount: 300\nnetwork: { subnet: 10.0.0.0/16 }\n")[299]?.ip).toBe(
      "10.0.1.45",
    );
  });

  it("refuse a fleet one VM larger than its subnet, naming count and network.subnet", () => {
    expect(() => identities("name: a\ncount: 2\nnetwork: { subnet: 10.0.0.4/30 }\n")).toThrow(
      "test.yaml:2:8 count: 2 VMs do not fit in network.subnet 10.0.0.4/30, which has 1 VM addresses",
    );
  });
});

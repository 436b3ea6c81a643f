import { execFile, spawn } from "node:child_process";
import { chmod, mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { FleetSpec } from "../../src/core/fleet.js";
import { namespaceName, natLink } from "../../src/core/net.js";
import { hostNameservers } from "../../src/net/network.js";
import { stateLayout } from "../../src/state/layout.js";
import { collect } from "../helpers/cli.js";
import { fleetOf } from "../helpers/fleet.js";
import { useFileTempDir } from "../helpers/tmp.js";
import { isRunning } from "../helpers/vm.js";

/**
 * Outbound NAT with the real tools, and what it keeps a fleet from. The host is a network
 * namespace this test makes, and shoal's network code runs inside it; "the outside" is a second
 * namespace behind it, on documentation addresses, which also answers at 169.254.169.254 as a
 * cloud's metadata service does; a VM is a namespace of its own on the fleet's bridge. No VM
 * boots, and no packet leaves the test's namespaces.
 */

const exec = promisify(execFile);
const DRIVER = fileURLToPath(new URL("../helpers/fleet-network.mjs", import.meta.url));
const HOST = `shoaltest-nathost-${process.pid}`;
const OUTSIDE = `shoaltest-natout-${process.pid}`;
const FLEET = `nat${process.pid}`;
/** The host's address towards the outside, and one more of its own, on its loopback. */
const HOST_WAN = "192.0.2.1";
const HOST_OTHER = "198.51.100.1";
/** An address of the host whose traffic it forwards elsewhere (DNAT), as Docker's published ports. */
const HOST_FORWARDED = "198.51.100.7";
const OUTSIDE_ADDRESS = "192.0.2.2";
const METADATA = "169.254.169.254";

const stateDirs = useFileTempDir("shoal-nat-");
const vms: string[] = [];
const states: string[] = [];
const dnsPidFile = () => join(stateDirs(), "host-dns.pid");
let nameserver: string;

const ipIn = (namespace: string, ...args: string[]) => exec("ip", ["-n", namespace, ...args]);

/** `op` on fleet FLEET of state directory `dir`, run inside the test's host. */
async function network(op: "ensure" | "remove", dir: string, fleet: FleetSpec) {
  const request = {
    op,
    stateDir: dir,
    fleet: fleet.name,
    mode: fleet.network,
    spec: { fleet: fleet.name, subnet: fleet.subnet, vms: fleet.vms },
  };
  const argv = [
    "nsenter",
    `--net=/run/netns/${HOST}`,
    "--",
    process.execPath,
    "--import",
    "tsx",
    DRIVER,
  ];
  return collect([...argv, JSON.stringify(request)]);
}

async function stateDir(name: string): Promise<string> {
  const dir = join(stateDirs(), name);
  // A host's state directory: others may enter it (dnsmasq reads its files as nobody).
  await mkdir(dir);
  await chmod(dir, 0o755);
  states.push(dir);
  return dir;
}

const natted = (extra = "") =>
  fleetOf(`name: ${FLEET}\ncount: 1\nnetwork: { subnet: 10.97.0.0/24, nat: true${extra} }\n`);

/** A "VM": a namespace of its own with the fleet's first address, plugged into its bridge. */
async function plugVm(dir: string, fleet: FleetSpec): Promise<string> {
  const vm = `shoaltest-natvm-${process.pid}-${vms.length}`;
  vms.push(vm);
  const namespace = namespaceName({ root: stateLayout(dir).root, fleet: fleet.name });
  await exec("ip", ["netns", "add", vm]);
  await ipIn(
    namespace,
    "link",
    "add",
    "vmport",
    "type",
    "veth",
    "peer",
    "name",
    "eth0",
    "netns",
    vm,
  );
  await ipIn(namespace, "link", "set", "vmport", "master", "shoal0", "up");
  await ipIn(vm, "link", "set", "lo", "up");
  await ipIn(vm, "addr", "add", `${fleet.vms[0]?.ip}/24`, "dev", "eth0");
  await ipIn(vm, "link", "set", "eth0", "up");
  await ipIn(vm, "route", "add", "default", "via", "10.97.0.1");
  return vm;
}

/** Whether one ping from `namespace` to `address` gets its answer. */
async function answers(namespace: string, address: string): Promise<boolean> {
  const ping = ["netns", "exec", namespace, "busybox", "ping", "-c", "1", "-W", "1", address];
  return exec("ip", ping).then(
    () => true,
    () => false,
  );
}

/** Whether UDP datagrams from `namespace` reach the outside's `port` (Node at both ends). */
async function udpArrives(namespace: string, port: number): Promise<boolean> {
  const listen = `const s = require("node:dgram").createSocket("udp4");
    s.on("message", () => process.exit(0));
    s.bind(${port}, () => console.log("ready"));
    setTimeout(() => process.exit(1), 4000);`;
  const listener = spawn("ip", ["netns", "exec", OUTSIDE, process.execPath, "-e", listen]);
  const ended = new Promise<number | null>((resolve) => listener.on("close", resolve));
  await new Promise<void>((resolve) => listener.stdout.once("data", () => resolve()));
  const send = `const s = require("node:dgram").createSocket("udp4");
    let n = 0;
    const next = () => (n++ < 5 ? s.send("x", ${port}, "${OUTSIDE_ADDRESS}", () => setTimeout(next, 200)) : s.close());
    next();`;
  await exec("ip", ["netns", "exec", namespace, process.execPath, "-e", send]);
  return (await ended) === 0;
}

beforeAll(async () => {
  await chmod(stateDirs(), 0o755);
  await exec("ip", ["netns", "add", HOST]);
  await exec("ip", ["netns", "add", OUTSIDE]);
  await ipIn(HOST, "link", "set", "lo", "up");
  await ipIn(HOST, "addr", "add", `${HOST_OTHER}/32`, "dev", "lo");
  await ipIn(HOST, "addr", "add", `${HOST_FORWARDED}/32`, "dev", "lo");
  await exec("ip", [
    "netns",
    "exec",
    HOST,
    "nft",
    `add table ip forwarder { chain prerouting { type nat hook prerouting priority dstnat; ip daddr ${HOST_FORWARDED} dnat to ${OUTSIDE_ADDRESS}; }; }`,
  ]);
  await ipIn(HOST, "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", OUTSIDE);
  await ipIn(HOST, "addr", "add", `${HOST_WAN}/24`, "dev", "wan0");
  await ipIn(HOST, "link", "set", "wan0", "up");
  await ipIn(HOST, "route", "add", `${METADATA}/32`, "via", OUTSIDE_ADDRESS);
  await ipIn(OUTSIDE, "addr", "add", `${OUTSIDE_ADDRESS}/24`, "dev", "eth0");
  await ipIn(OUTSIDE, "addr", "add", `${METADATA}/32`, "dev", "eth0");
  await ipIn(OUTSIDE, "link", "set", "eth0", "up");
  // The host answers pings to multicast groups, as hosts may: a fleet must not get the answer.
  await exec("ip", [
    "netns",
    "exec",
    HOST,
    "sysctl",
    "-q",
    "-w",
    "net.ipv4.icmp_echo_ignore_broadcasts=0",
  ]);
  // A NATed fleet's dnsmasq asks the host's DNS servers. Here the test's host is one itself, at
  // that address, as a host running its own resolver is.
  const [server] = await hostNameservers();
  if (server === undefined) throw new Error("this host names no DNS server to forward to");
  nameserver = server;
  await ipIn(HOST, "addr", "add", `${nameserver}/32`, "dev", "lo");
  await exec("ip", [
    "netns",
    "exec",
    HOST,
    "dnsmasq",
    `--listen-address=${nameserver}`,
    "--bind-interfaces",
    "--no-resolv",
    "--no-hosts",
    "--address=/outside.test/192.0.2.2",
    `--pid-file=${dnsPidFile()}`,
  ]);
}, 60_000);

afterAll(async () => {
  for (const dir of states) {
    await network("remove", dir, natted());
    // Should shoal's removal fail, the test's own cleanup still leaves nothing behind.
    const fleetDnsmasq = Number(
      await readFile(stateLayout(dir).fleet(FLEET).net.pid, "utf8").catch(() => "0"),
    );
    if (fleetDnsmasq > 0 && (await isRunning(fleetDnsmasq))) process.kill(fleetDnsmasq, "SIGKILL");
    const namespace = namespaceName({ root: stateLayout(dir).root, fleet: FLEET });
    await exec("ip", ["netns", "del", namespace]).catch(() => undefined);
  }
  const dns = Number(await readFile(dnsPidFile(), "utf8").catch(() => "0"));
  if (dns > 0 && (await isRunning(dns))) process.kill(dns, "SIGKILL");
  for (const namespace of [...vms, OUTSIDE, HOST]) {
    await exec("ip", ["netns", "del", namespace]).catch(() => undefined);
  }
}, 120_000);

describe("outbound NAT", () => {
  let dir: string;
  let vm: string;

  beforeAll(async () => {
    dir = await stateDir("first");
    const made = await network("ensure", dir, natted());
    expect(made.code, made.stderr).toBe(0);
    vm = await plugVm(dir, natted());
  }, 60_000);

  it("takes a VM to the outside, but not to any address of the host (one it forwards elsewhere too), link-local addresses or multicast", async () => {
    expect(await answers(vm, OUTSIDE_ADDRESS)).toBe(true);
    const link = natLink({ root: stateLayout(dir).root, fleet: FLEET });
    const host = [HOST_WAN, HOST_OTHER, HOST_FORWARDED, link.hostAddress, nameserver];
    for (const address of [...host, METADATA]) {
      expect(await answers(vm, address), address).toBe(false);
    }
    // Multicast leaves a fleet only from its own namespace (its dnsmasq's), by the uplink.
    const fleetNamespace = namespaceName({ root: stateLayout(dir).root, fleet: FLEET });
    expect(await answers(fleetNamespace, "224.0.0.1")).toBe(false);
  });

  it("lets UDP out, but not VXLAN (UDP 4789), which could put frames on the bridges of fleets over hosts", async () => {
    expect(await udpArrives(vm, 4790)).toBe(true);
    expect(await udpArrives(vm, 4789)).toBe(false);
  });

  it("keeps the fleet's names resolving through the host's own DNS server", async () => {
    const asked = await exec("ip", [
      "netns",
      "exec",
      vm,
      "busybox",
      "nslookup",
      "-type=a",
      "outside.test",
      "10.97.0.1",
    ]);
    expect(asked.stdout).toContain("192.0.2.2");
  });

  it("opens what network.allow names, and only that", async () => {
    const opened = natted(`, allow: [${HOST_OTHER}, "${METADATA}/32"]`);
    const made = await network("ensure", dir, opened);
    expect(made.code, made.stderr).toBe(0);
    expect(await answers(vm, HOST_OTHER)).toBe(true);
    expect(await answers(vm, METADATA)).toBe(true);
    expect(await answers(vm, HOST_WAN)).toBe(false);
    const closed = await network("ensure", dir, natted());
    expect(closed.code, closed.stderr).toBe(0);
    expect(await answers(vm, HOST_OTHER)).toBe(false);
    expect(await answers(vm, OUTSIDE_ADDRESS)).toBe(true);
  });
});

describe("outbound NAT beside another state directory's fleet of the same name", () => {
  it("runs side by side with it, and removing one leaves the other's link, table and traffic", async () => {
    const first = await stateDir("one");
    const second = await stateDir("two");
    for (const dir of [first, second]) {
      const made = await network("ensure", dir, natted());
      expect(made.code, made.stderr).toBe(0);
    }
    const secondVm = await plugVm(second, natted());
    const [one, two] = [first, second].map((dir) =>
      natLink({ root: stateLayout(dir).root, fleet: FLEET }),
    );
    if (!one || !two) throw new Error("no NAT links");
    expect(one.hostSide).not.toBe(two.hostSide);
    const links = async () => (await ipIn(HOST, "-o", "link", "show")).stdout;
    const tables = async () =>
      (await exec("ip", ["netns", "exec", HOST, "nft", "list", "tables"])).stdout;
    expect(await links()).toContain(`${one.hostSide}@`);
    expect(await tables()).toContain(one.table);

    const removed = await network("remove", first, natted());
    expect(removed.code, removed.stderr).toBe(0);
    expect(await links()).not.toContain(`${one.hostSide}@`);
    expect(await tables()).not.toContain(one.table);
    expect(await links()).toContain(`${two.hostSide}@`);
    expect(await tables()).toContain(two.table);
    expect(await answers(secondVm, OUTSIDE_ADDRESS)).toBe(true);
    const pid = Number(await readFile(stateLayout(second).fleet(FLEET).net.pid, "utf8"));
    expect(await isRunning(pid)).toBe(true);
  });

  it("refuses an interface or table of its names that is not its own, and leaves it", async () => {
    const dir = await stateDir("squatted");
    const link = natLink({ root: stateLayout(dir).root, fleet: FLEET });
    await ipIn(HOST, "link", "add", link.hostSide, "type", "veth", "peer", "name", "squat0");
    const refused = await network("ensure", dir, natted());
    expect(refused.code).toBe(2);
    expect(refused.stderr).toBe(
      `interface ${link.hostSide} exists without shoal's owner mark: another program made it, or a shoal before owner marks\n`,
    );
    expect(await ipIn(HOST, "-o", "link", "show", "dev", link.hostSide)).toBeTruthy();
    await ipIn(HOST, "link", "del", link.hostSide);

    const other = "shoal owner=/srv/other-state fleet=x";
    await exec("ip", [
      "netns",
      "exec",
      HOST,
      "nft",
      `add table ip ${link.table} { comment "${other}"; }`,
    ]);
    const table = await network("ensure", dir, natted());
    expect(table.code).toBe(2);
    expect(table.stderr).toBe(
      `nft table ip ${link.table} belongs to state directory /srv/other-state (fleet x), not this one\n`,
    );
    expect((await network("remove", dir, natted())).code).toBe(0);
    const listed = await exec("ip", [
      "netns",
      "exec",
      HOST,
      "nft",
      "list",
      "table",
      "ip",
      link.table,
    ]);
    expect(listed.stdout).toContain(other);
  });
});

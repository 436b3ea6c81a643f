import { execFile } from "node:child_process";
import { chmod, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { hostIfbName, hostImpairTable, hostTapName } from "../../src/core/net.js";
import { hostNameservers } from "../../src/net/network.js";
import { stateLayout } from "../../src/state/layout.js";
import { shoal } from "../helpers/cli.js";
import { sharedImage } from "../helpers/images.js";
import { useFileTempDir } from "../helpers/tmp.js";
import { isRunning, killQemusMentioning, qemuPidsMentioning } from "../helpers/vm.js";

/**
 * A fleet and the networks around it. The host is a network namespace this test makes, and shoal
 * runs inside it; "the outside" is a second namespace behind it, on documentation addresses.
 * - `network: { bridge: br0, managed: false }`: VMs on a bridge shoal does not manage, addressed
 *   by the user's own DHCP server set up from `shoal export dhcp`.
 * - `network: { nat: true }`: a fleet's own network masqueraded to the outside, which answers
 *   pings and, at the host's DNS server's address, DNS; a fleet without it reaches nothing outside.
 */

const exec = promisify(execFile);
const stateDir = useFileTempDir("shoal-bridge-");
const filesDir = useFileTempDir("shoal-bridge-files-");
const NAMESPACE = `shoaltest-host-${process.pid}`;
const OUTSIDE = `shoaltest-out-${process.pid}`;

const VMS = ["vm-1", "vm-2", "vm-3"];
let state: string;
let file: string;
let dhcpDir: string;

const inHost = (args: readonly string[]) =>
  shoal(["--state-dir", state, ...args], { namespace: NAMESPACE });
const ipHost = async (...args: string[]) => (await exec("ip", ["-n", NAMESPACE, ...args])).stdout;

beforeAll(async () => {
  state = stateDir();
  await chmod(state, 0o755);
  await sharedImage(state, "tiny", { from: "busybox" });
  await exec("ip", ["netns", "add", NAMESPACE]);
  await ipHost("link", "set", "lo", "up");
  await ipHost("link", "add", "br0", "type", "bridge");
  await ipHost("addr", "add", "10.79.0.1/24", "dev", "br0");
  await ipHost("link", "set", "br0", "up");
  // The outside: 192.0.2.2 (TEST-NET-1) behind the host's wan0, with a DNS server for outside.test.
  await exec("ip", ["netns", "add", OUTSIDE]);
  await ipHost("link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", OUTSIDE);
  await ipHost("addr", "add", "192.0.2.1/24", "dev", "wan0");
  await ipHost("link", "set", "wan0", "up");
  await exec("ip", ["-n", OUTSIDE, "addr", "add", "192.0.2.2/24", "dev", "eth0"]);
  await exec("ip", ["-n", OUTSIDE, "link", "set", "eth0", "up"]);
  await exec("ip", ["-n", OUTSIDE, "link", "set", "lo", "up"]);
  dhcpDir = filesDir();
  await chmod(dhcpDir, 0o755);
  file = join(dhcpDir, "shoal.yaml");
  await writeFile(
    file,
    "name: bridged\ncount: 3\nnetwork: { subnet: 10.79.0.0/24, bridge: br0, managed: false }\n",
  );
});

afterAll(async () => {
  for (const fleet of ["bridged", "natted", "closed"]) {
    await inHost(["destroy", "--fleet", fleet, "--yes"]);
  }
  for (const pidFile of ["dnsmasq.pid", "outside-dns.pid"]) {
    const pid = Number(await readFile(join(dhcpDir, pidFile), "utf8").catch(() => "0"));
    if (pid > 0 && (await isRunning(pid))) process.kill(pid, "SIGKILL");
  }
  for (const namespace of [NAMESPACE, OUTSIDE]) {
    await exec("ip", ["netns", "del", namespace]).catch(() => undefined);
  }
  await killQemusMentioning(state);
});

describe("a fleet on the host's bridge", () => {
  it("is attached to the bridge, where the user's DHCP server, set up from `shoal export dhcp`, gives each VM its planned address", async () => {
    const exported = await shoal(["export", "dhcp", "-f", file]);
    expect(exported.code, exported.stderr).toBe(0);
    const reservations = join(dhcpDir, "reservations.conf");
    await writeFile(reservations, exported.stdout);
    await exec("ip", [
      "netns",
      "exec",
      NAMESPACE,
      "dnsmasq",
      `--conf-file=${reservations}`,
      "--interface=br0",
      "--bind-interfaces",
      "--port=0",
      "--dhcp-range=10.79.0.0,static,255.255.255.0",
      `--dhcp-leasefile=${join(dhcpDir, "leases")}`,
      `--pid-file=${join(dhcpDir, "dnsmasq.pid")}`,
    ]);

    const up = await inHost(["up", "-f", file, "--timeout", "600"]);
    expect(up.code, up.stderr).toBe(0);
    const ports = await ipHost("-o", "link", "show", "master", "br0");
    const owner = { root: stateLayout(state).root, fleet: "bridged" };
    for (const index of [1, 2, 3]) expect(ports).toContain(` ${hostTapName(owner, index)}:`);
    // Nothing of the fleet in the test's own namespace, and no namespace of the fleet's own.
    expect((await exec("ip", ["-o", "link", "show"])).stdout).not.toContain(hostTapName(owner, 1));
    expect((await exec("ip", ["netns", "list"])).stdout).not.toContain("shoal-bridged");

    const waited = await inHost(["wait", "-f", file, "--timeout", "300"]);
    expect(waited.code, waited.stderr).toBe(0);
    const names = await inHost(["exec", "-f", file, "--all", "--", "hostname"]);
    expect(names.code, names.stderr).toBe(0);
    expect(names.stdout.trim().split("\n").sort()).toEqual(VMS.map((vm) => `${vm}: ${vm}`));
    const plan = JSON.parse((await shoal(["plan", "-f", file, "--json"])).stdout) as {
      name: string;
      ip: string;
      mac: string;
    }[];
    const addresses = await inHost(["exec", "-f", file, "--all", "--json", "--", "ip -4 addr"]);
    const outcomes = JSON.parse(addresses.stdout) as { name: string; stdout: string }[];
    const leases = await readFile(join(dhcpDir, "leases"), "utf8");
    for (const vm of plan) {
      expect(outcomes.find((outcome) => outcome.name === vm.name)?.stdout).toContain(
        `inet ${vm.ip}/24 `,
      );
      expect(leases).toContain(` ${vm.mac} ${vm.ip} ${vm.name} `);
    }
  });

  it("takes impairments on the host's bridge: a partition by port in the forward hook; a VM's ifb device and the fleet's table carry its owner mark", async () => {
    await writeFile(
      file,
      "name: bridged\ncount: 3\nnetwork: { subnet: 10.79.0.0/24, bridge: br0, managed: false }\ngroups: { a: vm-1, b: vm-2 }\n",
    );
    const up = await inHost(["up", "-f", file]);
    expect(up.code, up.stderr).toBe(0);
    const plan = JSON.parse((await shoal(["plan", "-f", file, "--json"])).stdout) as {
      name: string;
      ip: string;
    }[];
    const ip = (vm: string) => plan.find((entry) => entry.name === vm)?.ip ?? "";
    const reaches = async (from: string, to: string) =>
      (await inHost(["exec", "-f", file, from, "--", `ping -c 2 -W 1 ${ip(to)}`])).code === 0;
    expect((await inHost(["net", "partition", "-f", file, "a", "b"])).code).toBe(0);
    expect(await reaches("vm-1", "vm-2")).toBe(false);
    expect(await reaches("vm-1", "vm-3")).toBe(true);
    expect(await reaches("vm-2", "vm-3")).toBe(true);
    const set = await inHost([
      "net",
      "set",
      "-f",
      file,
      "vm-3",
      "--direction",
      "out",
      "--rate",
      "1mbit",
    ]);
    expect(set.code, set.stderr).toBe(0);
    const owner = { root: stateLayout(state).root, fleet: "bridged" };
    const mark = `shoal owner=${owner.root} fleet=bridged`;
    const ifbs = JSON.parse(await ipHost("-j", "link", "show", "type", "ifb")) as {
      ifname: string;
      ifalias?: string;
    }[];
    expect(ifbs).toContainEqual(
      expect.objectContaining({ ifname: hostIfbName(owner, 3), ifalias: mark }),
    );
    const tables = await exec("ip", [
      "netns",
      "exec",
      NAMESPACE,
      "nft",
      "list",
      "table",
      "bridge",
      hostImpairTable(owner),
    ]);
    expect(tables.stdout).toContain(`comment "${mark}"`);
    expect(tables.stdout).toContain("hook forward");
    expect(tables.stdout).not.toContain("meta mark");
    expect(await reaches("vm-3", "vm-1")).toBe(true);
    expect((await inHost(["net", "heal", "-f", file])).code).toBe(0);
    expect(await reaches("vm-1", "vm-2")).toBe(true);
  });

  it("`destroy` takes the VMs' taps off the bridge and leaves the bridge, which is the user's", async () => {
    const destroyed = await inHost(["destroy", "-f", file, "--yes"]);
    expect(destroyed.code, destroyed.stderr).toBe(0);
    // Nor the fleet's ifb devices or bridge table.
    expect(await ipHost("-o", "link", "show", "type", "ifb")).toBe("");
    expect(
      (await exec("ip", ["netns", "exec", NAMESPACE, "nft", "list", "tables"])).stdout,
    ).not.toContain("shoal_impair");
    expect((await ipHost("-o", "link", "show", "master", "br0")).trim()).toBe("");
    expect(await ipHost("-o", "link", "show", "br0")).toContain("br0");
    expect(await qemuPidsMentioning(state)).toEqual([]);
    await expect(readFile(stateLayout(state).fleet("bridged").state)).rejects.toThrow();
  });
});

describe("outbound NAT", () => {
  let natted: string;
  let closed: string;

  beforeAll(async () => {
    natted = join(dhcpDir, "natted.yaml");
    await writeFile(
      natted,
      "name: natted\ncount: 1\nnetwork: { subnet: 10.80.0.0/24, nat: true }\n",
    );
    closed = join(dhcpDir, "closed.yaml");
    await writeFile(closed, "name: closed\ncount: 1\nnetwork: { subnet: 10.81.0.0/24 }\n");
    // A NATed fleet's dnsmasq forwards to the host's DNS server. Here the outside plays it: its
    // address is given to the outside namespace and routed there, so no query leaves the test.
    const [server] = await hostNameservers();
    if (server === undefined) throw new Error("this host names no DNS server to forward to");
    await exec("ip", ["-n", OUTSIDE, "addr", "add", `${server}/32`, "dev", "eth0"]);
    await ipHost("route", "add", `${server}/32`, "via", "192.0.2.2");
    await exec("ip", [
      "netns",
      "exec",
      OUTSIDE,
      "dnsmasq",
      `--listen-address=${server}`,
      "--bind-interfaces",
      "--no-resolv",
      "--no-hosts",
      "--address=/outside.test/192.0.2.2",
      `--pid-file=${join(dhcpDir, "outside-dns.pid")}`,
    ]);
  });

  it("lets a fleet with nat: true reach the outside by address and by name, and a fleet without it nothing", async () => {
    for (const file of [natted, closed]) {
      const up = await inHost(["up", "-f", file, "--timeout", "600"]);
      expect(up.code, up.stderr).toBe(0);
      expect((await inHost(["wait", "-f", file, "--timeout", "300"])).code).toBe(0);
    }
    // The outside has no route to the fleet or the transit link: an answer means both NATs worked.
    const pinged = await inHost(["exec", "-f", natted, "--all", "--", "ping -c 1 -W 5 192.0.2.2"]);
    expect(pinged.code, pinged.stdout + pinged.stderr).toBe(0);
    const named = await inHost([
      "exec",
      "-f",
      natted,
      "--all",
      "--",
      "ping -c 1 -W 5 outside.test",
    ]);
    expect(named.code, named.stdout + named.stderr).toBe(0);
    expect(named.stdout).toContain("vm-1: PING outside.test (192.0.2.2)");
    // The fleet's own names stay the fleet's.
    const own = await inHost(["exec", "-f", natted, "--all", "--", "nslookup vm-1"]);
    expect(own.stdout).toContain("10.80.0.2");
    const shut = await inHost(["exec", "-f", closed, "--all", "--", "ping -c 1 -W 3 192.0.2.2"]);
    expect(shut.code).toBe(1);
    expect(shut.stderr).toContain("vm-1 (exit 1)");
  });

  it("`up` restarts a dnsmasq that died and applies nat: false, with the VMs left running; `destroy` removes the NAT", async () => {
    const paths = stateLayout(state).fleet("natted").net;
    const dnsmasq = Number(await readFile(paths.pid, "utf8"));
    process.kill(dnsmasq, "SIGKILL");
    await writeFile(natted, "name: natted\ncount: 1\nnetwork: { subnet: 10.80.0.0/24 }\n");
    const up = await inHost(["up", "-f", natted]);
    expect(up.code, up.stderr).toBe(0);
    expect(up.stdout).toMatch(/^vm-1\s+running\s+\S+\s+-/m);
    const restarted = Number(await readFile(paths.pid, "utf8"));
    expect(restarted).not.toBe(dnsmasq);
    expect(await isRunning(restarted)).toBe(true);
    const pinged = await inHost(["exec", "-f", natted, "--all", "--", "ping -c 1 -W 3 192.0.2.2"]);
    expect(pinged.code).toBe(1);
    expect(await ipHost("-o", "link", "show")).not.toMatch(/-nat[:@]/);
    expect(
      (await exec("ip", ["netns", "exec", NAMESPACE, "nft", "list", "tables"])).stdout,
    ).not.toContain("shoal_natted");

    await writeFile(
      natted,
      "name: natted\ncount: 1\nnetwork: { subnet: 10.80.0.0/24, nat: true }\n",
    );
    expect((await inHost(["up", "-f", natted])).code).toBe(0);
    expect(
      (await exec("ip", ["netns", "exec", NAMESPACE, "nft", "list", "tables"])).stdout,
    ).toContain("shoal_natted");
    for (const file of [natted, closed]) {
      const destroyed = await inHost(["destroy", "-f", file, "--yes"]);
      expect(destroyed.code, destroyed.stderr).toBe(0);
    }
    expect(await ipHost("-o", "link", "show")).not.toMatch(/-nat[:@]/);
    expect(
      (await exec("ip", ["netns", "exec", NAMESPACE, "nft", "list", "tables"])).stdout,
    ).not.toContain("shoal_natted");
    expect((await exec("ip", ["netns", "list"])).stdout).not.toMatch(/shoal-(natted|closed)\b/);
    expect(await qemuPidsMentioning(state)).toEqual([]);
  });
});

import { execFile } from "node:child_process";
import { chmod, readFile, stat, writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import { afterEach, describe, expect, it } from "vitest";
import { makeSubnet, parseIpv4 } from "../../src/core/ipv4.js";
import { ProcessRunner } from "../../src/host/runner.js";
import { FleetNetwork } from "../../src/net/network.js";
import { stateLayout } from "../../src/state/layout.js";
import { fleetOf } from "../helpers/fleet.js";
import { useTempDirs } from "../helpers/tmp.js";

/**
 * A fleet's isolated network with the real tools: ip, a network namespace, a bridge, taps and
 * dnsmasq. Everything lives in the namespace the test's fleet gets, removed after each test.
 */

const exec = promisify(execFile);
const tempDir = useTempDirs();
const runner = new ProcessRunner();
const made: FleetNetwork[] = [];

afterEach(async () => {
  await Promise.all(made.splice(0).map((network) => network.remove()));
});

async function network(count: number, name = `net${process.pid}x${made.length}`) {
  const fleet = fleetOf(`name: ${name}\ncount: ${count}\nnetwork: { subnet: 10.99.0.0/24 }\n`);
  const dir = await tempDir();
  // The state directory of a host: others may enter it (dnsmasq reads its files as nobody).
  await chmod(dir, 0o755);
  const layout = stateLayout(dir);
  const owner = { root: layout.root, fleet: name };
  const net = new FleetNetwork(runner, layout.fleet(name).net, owner, fleet.network);
  made.push(net);
  return { net, fleet, owner, paths: layout.fleet(name).net };
}

async function inNamespace(namespace: string | undefined, ...argv: string[]) {
  if (namespace === undefined) throw new Error("the fleet's network has no namespace");
  return (await exec("ip", ["netns", "exec", namespace, ...argv])).stdout;
}

async function netnsInode(path: string): Promise<number> {
  return (await stat(path)).ino;
}

describe("a fleet's network", () => {
  it("refuses a state directory dnsmasq (user nobody) could not enter, before making anything", async () => {
    const name = `closed${process.pid}`;
    const dir = await tempDir();
    const fleet = fleetOf(`name: ${name}\ncount: 1\n`);
    const owner = { root: stateLayout(dir).root, fleet: name };
    const net = new FleetNetwork(runner, stateLayout(dir).fleet(name).net, owner, fleet.network);
    made.push(net);
    const closed = net.ensure({ fleet: name, subnet: fleet.subnet, vms: fleet.vms });
    await expect(closed).rejects.toThrow(
      `dnsmasq, which runs as user nobody, cannot reach ${stateLayout(dir).fleet(name).net.dir}: ${dir} is closed to other users`,
    );
    expect(await net.exists()).toBe(false);
  });

  it("is a namespace of its own with the gateway on a bridge and dnsmasq answering for the fleet's names", async () => {
    const { net, fleet, paths } = await network(3);
    await net.ensure({ fleet: fleet.name, subnet: fleet.subnet, vms: fleet.vms });
    expect(await inNamespace(net.namespace, "ip", "-br", "addr", "show", "shoal0")).toMatch(
      /^shoal0\s+\S+\s+10\.99\.0\.1\/24/,
    );
    const pid = await net.dnsmasqPid();
    expect(pid).toBeDefined();
    // dnsmasq runs inside the fleet's namespace, not the host's.
    expect(await netnsInode(`/proc/${pid}/ns/net`)).toBe(
      await netnsInode(`/run/netns/${net.namespace}`),
    );
    expect(await readFile(paths.dhcpHosts, "utf8")).toBe(
      fleet.vms.map((vm) => `${vm.mac},${vm.ip},${vm.name},infinite\n`).join(""),
    );
    for (const name of ["vm-2", `vm-2.${fleet.name}`]) {
      const answer = await inNamespace(net.namespace, "busybox", "nslookup", name, "10.99.0.1");
      expect(answer).toContain(fleet.vms[1]?.ip);
    }
    const tap = await net.ensureTap(1, 0);
    expect(await inNamespace(net.namespace, "ip", "-o", "link", "show", tap)).toContain(
      "master shoal0",
    );
    // QEMU runs unprivileged: its user owns the tap, so it may attach to it. One an older shoal
    // made without an owner is made again.
    const owner = async () =>
      (await inNamespace(net.namespace, "ip", "-d", "link", "show", tap)).match(/ user (\S+)/)?.[1];
    expect(await owner()).toBe("shoal-qemu");
    await inNamespace(net.namespace, "ip", "link", "del", tap);
    await inNamespace(net.namespace, "ip", "tuntap", "add", "dev", tap, "mode", "tap");
    expect(await owner()).toBeUndefined();
    await net.ensureTap(1, 0);
    expect(await owner()).toBe("shoal-qemu");
    expect(await inNamespace(net.namespace, "ip", "-o", "link", "show", tap)).toContain(
      "master shoal0",
    );
    // Nothing of it in the host's namespace.
    await expect(exec("ip", ["link", "show", "shoal0"])).rejects.toThrow();
  });

  it("joins more bridges to shoal0 into one L2, each made once however many VMs start at once", async () => {
    const { net, fleet, owner, paths } = await network(2);
    await net.ensure({ fleet: fleet.name, subnet: fleet.subnet, vms: fleet.vms });
    await Promise.all([net.ensureBridge(2), net.ensureBridge(2), net.ensureBridge(0)]);
    const tap = await net.ensureTap(1, 2);
    const links = await inNamespace(net.namespace, "ip", "-o", "link", "show");
    expect(links).toMatch(/: tap1: .* master shoal2 /);
    expect(links).toMatch(/: shoal2-up@shoal2-dn: .* master shoal2 /);
    expect(links).toMatch(/: shoal2-dn@shoal2-up: .* master shoal0 /);
    expect(links).not.toMatch(/: shoal1[:@]/);
    expect(tap).toBe("tap1");
    // A host on shoal2 (a namespace of the test's, as a VM's tap would be) reaches the gateway.
    const client = `shoal-test-client-${process.pid}`;
    await exec("ip", ["netns", "add", client]);
    try {
      await exec("ip", [
        "-n",
        client,
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "port",
      ]);
      await exec("ip", ["-n", client, "link", "set", "port", "netns", net.namespace ?? ""]);
      await inNamespace(net.namespace, "ip", "link", "set", "port", "master", "shoal2", "up");
      await exec("ip", ["-n", client, "addr", "add", "10.99.0.200/24", "dev", "eth0"]);
      await exec("ip", ["-n", client, "link", "set", "eth0", "up"]);
      const ping = await exec("ip", [
        "netns",
        "exec",
        client,
        "busybox",
        "ping",
        "-c",
        "1",
        "-W",
        "5",
        "10.99.0.1",
      ]);
      expect(ping.stdout).toContain("1 packets received");
    } finally {
      await exec("ip", ["netns", "del", client]);
    }
    // Joined again by the next shoal when the pair is gone (a veth's ends go together).
    await inNamespace(net.namespace, "ip", "link", "del", "shoal2-up");
    const again = new FleetNetwork(runner, paths, owner, fleet.network);
    await again.ensureBridge(2);
    expect(await inNamespace(net.namespace, "ip", "-o", "link", "show", "shoal2-dn")).toContain(
      "master shoal0",
    );
  });

  it("keeps serving a fleet that shrank, forgetting the leases of its removed VMs", async () => {
    const { net, fleet, paths } = await network(3);
    await net.ensure({ fleet: fleet.name, subnet: fleet.subnet, vms: fleet.vms });
    // The leases dnsmasq wrote for three running VMs (infinite leases have expiry 0).
    await writeFile(
      paths.leases,
      fleet.vms.map((vm) => `0 ${vm.mac} ${vm.ip} ${vm.name} 01:${vm.mac}\n`).join(""),
    );
    const smaller = fleet.vms.slice(0, 2);
    await net.ensure({ fleet: fleet.name, subnet: fleet.subnet, vms: smaller });
    expect(await net.dnsmasqPid()).toBeDefined();
    expect((await readFile(paths.leases, "utf8")).trim().split("\n")).toEqual(
      smaller.map((vm) => `0 ${vm.mac} ${vm.ip} ${vm.name} 01:${vm.mac}`),
    );
  });

  it("takes more VMs without losing what runs, moves to a new subnet, and is gone after remove", async () => {
    const { net, fleet, paths } = await network(2);
    await net.ensure({ fleet: fleet.name, subnet: fleet.subnet, vms: fleet.vms });
    await net.ensureTap(1, 0);
    const bigger = fleetOf(`name: ${fleet.name}\ncount: 3\nnetwork: { subnet: 10.99.0.0/24 }\n`);
    await net.ensure({ fleet: fleet.name, subnet: bigger.subnet, vms: bigger.vms });
    await net.ensure({ fleet: fleet.name, subnet: bigger.subnet, vms: bigger.vms });
    expect((await readFile(paths.dhcpHosts, "utf8")).trim().split("\n")).toHaveLength(3);
    expect(await readFile(paths.conf, "utf8")).toContain("dhcp-lease-max=3\n");
    expect(await inNamespace(net.namespace, "ip", "-o", "link", "show", "tap1")).toContain(
      "master shoal0",
    );
    const answer = await inNamespace(net.namespace, "busybox", "nslookup", "vm-3", "10.99.0.1");
    expect(answer).toContain(bigger.vms[2]?.ip);
    // A new gateway in the same subnet, then a new subnet: the bridge holds the current gateway
    // only, and dnsmasq serves it.
    const regated = fleetOf(
      `name: ${fleet.name}\ncount: 3\nnetwork: { subnet: 10.99.0.0/24, gateway: 10.99.0.254 }\n`,
    );
    await net.ensure({ fleet: fleet.name, subnet: regated.subnet, vms: regated.vms });
    expect(await inNamespace(net.namespace, "ip", "-o", "-4", "addr", "show", "shoal0")).toMatch(
      /^[^\n]* inet 10\.99\.0\.254\/24 [^\n]*\n$/,
    );
    const moved = fleetOf(`name: ${fleet.name}\ncount: 3\nnetwork: { subnet: 10.98.0.0/24 }\n`);
    await net.ensure({ fleet: fleet.name, subnet: moved.subnet, vms: moved.vms });
    const addresses = await inNamespace(net.namespace, "ip", "-o", "-4", "addr", "show", "shoal0");
    expect([...addresses.matchAll(/ inet (\S+) /g)].map((match) => match[1])).toEqual([
      "10.98.0.1/24",
    ]);
    expect(await readFile(paths.conf, "utf8")).toContain("listen-address=10.98.0.1\n");
    const pid = await net.dnsmasqPid();
    await net.remove();
    expect(await net.exists()).toBe(false);
    // Gone (a zombie left to a container's init has no command line either).
    expect(await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "")).toBe("");
    await expect(stat(paths.dir)).rejects.toThrow();
    expect(parseIpv4("10.99.0.1")).toBe(makeSubnet(parseIpv4("10.99.0.0") ?? 0, 24).gateway);
  });
});

describe("a fleet's network beside another state directory's fleet of the same name", () => {
  it("runs side by side with it, and removing one leaves the other running", async () => {
    const name = `twin${process.pid}`;
    const first = await network(2, name);
    const second = await network(2, name);
    for (const { net, fleet } of [first, second]) {
      await net.ensure({ fleet: fleet.name, subnet: fleet.subnet, vms: fleet.vms });
    }
    expect(first.net.namespace).not.toBe(second.net.namespace);
    const pids = await Promise.all([first.net.dnsmasqPid(), second.net.dnsmasqPid()]);
    for (const [i, { net }] of [first, second].entries()) {
      expect(await netnsInode(`/proc/${pids[i]}/ns/net`)).toBe(
        await netnsInode(`/run/netns/${net.namespace}`),
      );
    }

    await first.net.remove();
    expect(await first.net.exists()).toBe(false);
    expect(await second.net.exists()).toBe(true);
    expect(await second.net.dnsmasqPid()).toBe(pids[1]);
    const answer = await inNamespace(
      second.net.namespace,
      "busybox",
      "nslookup",
      "vm-2",
      "10.99.0.1",
    );
    expect(answer).toContain(second.fleet.vms[1]?.ip);
  });

  it("refuses a namespace of its name that another program or state directory made, and never removes it", async () => {
    const { net, fleet } = await network(1);
    const namespace = net.namespace ?? "";
    const ensure = () => net.ensure({ fleet: fleet.name, subnet: fleet.subnet, vms: fleet.vms });
    const unmarked = `network namespace ${namespace} exists without shoal's owner mark: another program made it, or a shoal before owner marks`;
    await exec("ip", ["netns", "add", namespace]);
    try {
      await expect(ensure()).rejects.toThrow(unmarked);
      await net.remove();
      expect(await net.exists()).toBe(true);
      // Another program's bridge of shoal's name, without the mark.
      await exec("ip", ["-n", namespace, "link", "add", "shoal0", "type", "bridge"]);
      await expect(ensure()).rejects.toThrow(unmarked);
      // Another state directory's, by its mark.
      const theirs = `shoal owner=/srv/other-state fleet=${fleet.name}`;
      await exec("ip", ["-n", namespace, "link", "set", "dev", "shoal0", "alias", theirs]);
      await expect(ensure()).rejects.toThrow(
        `network namespace ${namespace} belongs to state directory /srv/other-state (fleet ${fleet.name}), not this one`,
      );
      await net.remove();
      expect(await inNamespace(namespace, "ip", "-o", "link", "show", "shoal0")).toContain(theirs);
      expect(await inNamespace(namespace, "ip", "-o", "addr", "show", "shoal0")).not.toContain(
        "inet ",
      );
    } finally {
      await exec("ip", ["netns", "del", namespace]);
    }
  });
});

import { execFile, spawn } from "node:child_process";
import { chmod, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { imageVolumes, poolName } from "../../src/backends/libvirt/names.js";
import { type ImageMeta, imageBoot } from "../../src/image/store.js";
import { stateLayout } from "../../src/state/layout.js";
import { type CliResult, SHOAL, shoal } from "../helpers/cli.js";
import { sharedImage } from "../helpers/images.js";
import { type LibvirtHost, LibvirtHosts } from "../helpers/libvirt-hosts.js";
import { useFileTempDir } from "../helpers/tmp.js";
import { sha256 } from "../helpers/vm.js";

/**
 * A fleet over two libvirt hosts on this machine (test/helpers/libvirt-hosts.ts), each with its own
 * libvirtd and sshd in namespaces of its own, reached from a control namespace over `qemu+ssh://`,
 * where shoal runs; and the control namespace's own libvirtd, which shoal reaches as this machine's
 * `qemu:///system`. The tests build on each other, in order.
 */

const exec = promisify(execFile);
const stateDir = useFileTempDir("shoal-libvirt-");
const hostsDir = useFileTempDir("shoal-libvirt-hosts-");
let state: string;
let file: string;
let image: ImageMeta;
/** The base's sha256 before any host had it. */
let baseSum: string;
let hosts: LibvirtHosts | undefined;

function theHosts(): LibvirtHosts {
  if (!hosts) throw new Error("the libvirt hosts did not start");
  return hosts;
}

async function virsh(host: LibvirtHost, ...args: string[]): Promise<string> {
  return (await theHosts().virsh(host, ...args)).stdout;
}

/**
 * shoal as the control namespace runs it, with the test's state directory, in the mount namespace
 * where the local libvirtd's directories are libvirt's.
 */
async function run(args: readonly string[]): Promise<CliResult> {
  return shoal(["--state-dir", state, ...args], {
    namespace: theHosts().control,
    mount: await theHosts().localMount(),
  });
}

async function ok(args: readonly string[]): Promise<string> {
  const result = await run(args);
  expect(result.code, `shoal ${args.join(" ")}\n${result.stderr}\n${result.stdout}`).toBe(0);
  return result.stdout;
}

const lines = (text: string) => text.split("\n").filter(Boolean);

beforeAll(async () => {
  state = stateDir();
  await chmod(state, 0o755);
  image = await sharedImage(state, "tiny", { from: "busybox" });
  baseSum = await sha256(imageBoot(stateLayout(state), image).base);
  hosts = new LibvirtHosts({
    dir: hostsDir(),
    tag: String(process.pid),
    count: 2,
    subnet: "10.253.0",
  });
  await hosts.start();
  file = join(state, "lab.yaml");
  await writeFleetFile();
});

/**
 * The fleet file: `count` VMs over the two hosts but `without`, with `hosts` more (`local`: this
 * machine's own libvirtd, room for one) and `pins`.
 */
async function writeFleetFile(
  count = 6,
  { hosts = [], pins = [], without }: { hosts?: string[]; pins?: string[]; without?: string } = {},
): Promise<void> {
  const pinned = pins;
  await writeFile(
    file,
    [
      "name: lab",
      "backend: libvirt",
      `count: ${count}`,
      "vm: { layer: { type: disk, size: 64M } }",
      "hosts:",
      ...theHosts()
        .hosts.filter((host) => host.name !== without)
        .map((host) => `  - { name: ${host.name}, uri: "${host.uri}" }`),
      ...hosts,
      ...(pinned.length > 0 ? [`placement: { pin: [ ${pinned.join(", ")} ] }`] : []),
      // spread puts vm-1, vm-3, vm-5 on h1 and vm-2, vm-4, vm-6 on h2: each group on both.
      "groups: { a: [vm-1, vm-2], b: [vm-3, vm-4] }",
      "",
    ].join("\n"),
  );
}

type PsRow = { name: string; host: string; state: string };

async function ps(): Promise<string[][]> {
  const rows = JSON.parse(await ok(["ps", "-f", file, "--json"])) as PsRow[];
  return rows.map((row) => [row.name, row.host, row.state]);
}

/** `from` answers pings from `to`, by name. */
async function pings(from: string, to: string): Promise<void> {
  const answer = await run(["exec", "-f", file, from, "--", "ping", "-c", "3", "-W", "5", to]);
  expect(answer.code, `${from} -> ${to}: ${answer.stderr}${answer.stdout}`).toBe(0);
}

/** Whether `from` gets an answer from `to` (by address: DNS is not what is tested). */
async function reaches(from: string, to: string): Promise<boolean> {
  const answer = await run([
    "exec",
    "-f",
    file,
    from,
    "--",
    "ping",
    "-c",
    "2",
    "-W",
    "2",
    ips[to] ?? "",
  ]);
  return answer.code === 0;
}

/** Each VM's planned address. */
const ips: Record<string, string> = {};

/** This machine's own libvirtd as a host of the fleet. */
const LOCAL_HOST = '  - { name: local, uri: "qemu:///system", capacity: { vms: 1 } }';

/** h1, h2 and this machine's own libvirtd. */
function allHosts(): LibvirtHost[] {
  return [...theHosts().hosts, theHosts().local];
}

/** The domains a host has defined, running or not. */
async function domains(host: LibvirtHost): Promise<string[]> {
  return lines(await virsh(host, "list", "--all", "--name")).sort();
}

afterAll(async () => {
  await run(["destroy", "-f", file, "--yes"]).catch(() => undefined);
  await hosts?.stop();
});

describe("a fleet over two libvirt hosts and this machine's own libvirtd", () => {
  it("refuses a host that cannot be reached before anything is made on any host", async () => {
    // The control namespace's own address, where no sshd listens.
    const nowhere = theHosts().hosts[0]?.uri.replace(/@[\d.]+\//, "@10.253.0.1/") ?? "";
    await writeFleetFile(6, { hosts: [`  - { name: h3, uri: "${nowhere}" }`] });
    const refused = await run(["up", "-f", file]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain("host h3 cannot be reached");
    expect(refused.stderr).toContain("nothing was made on any host");
    for (const host of allHosts()) {
      expect(await domains(host)).toEqual([]);
      expect(await virsh(host, "pool-list", "--all", "--name")).toBe("");
    }
    await writeFleetFile();
  });

  it("comes up 3 and 3 with `shoal up`, the base sent once to each host and checked there", async () => {
    await ok(["up", "-f", file]);
    for (const host of theHosts().hosts) {
      expect(lines(await virsh(host, "list", "--name"))).toHaveLength(3);
      const volumes = lines(await virsh(host, "vol-list", "--pool", poolName(state))).map(
        (line) => line.trim().split(/\s+/)[0],
      );
      expect(volumes).toEqual(expect.arrayContaining(Object.values(imageVolumes(image.id))));
    }
    const again = await run(["--debug", "up", "-f", file]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).not.toContain("vol-upload");
  });

  it("`doctor -f` checks each host: libvirt and its version, the driver, the pool, SSH with a bridge and VXLAN, and what the host's kernel can do to the VMs' links", async () => {
    const checked = await run(["doctor", "-f", file]);
    expect(checked.code, checked.stderr + checked.stdout).toBe(0);
    for (const host of theHosts().hosts) {
      const uri = host.uri.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      const lines = [
        `host ${host.name}\\s+ok\\s+libvirt [\\d.]+, qemu driver \\(QEMU [\\d.]+\\) at ${uri}`,
        `host ${host.name} pool\\s+ok\\s+storage pool ${poolName(state)} is there`,
        `host ${host.name} network\\s+ok\\s+SSH as root works; bridges and VXLAN work`,
        // WARN where the kernel lacks netem (as here), naming delay and the rest as missing.
        `host ${host.name} impairments\\s+(ok|WARN)\\s+rate, loss, partitions`,
      ];
      for (const line of lines) expect(checked.stdout).toMatch(new RegExp(`^${line}`, "m"));
    }
    // A host that does not answer fails the check, named.
    const elsewhere = join(state, "elsewhere.yaml");
    const nowhere = theHosts().hosts[0]?.uri.replace(/@[\d.]+\//, "@10.253.0.1/") ?? "";
    await writeFile(
      elsewhere,
      `name: elsewhere\nbackend: libvirt\nhosts:\n  - { name: h3, uri: "${nowhere}" }\n`,
    );
    const failed = await run(["doctor", "-f", elsewhere]);
    expect(failed.code).toBe(1);
    expect(failed.stdout).toMatch(/^host h3\s+FAIL\s+libvirt at .* does not answer/m);
    expect(failed.stderr).toContain("backend libvirt cannot run VMs on this host: host h3");
  });

  it("lets VMs on different hosts reach each other by name, and `exec --all` reach all 6", async () => {
    // spread: vm-1 on h1, vm-2 on h2.
    await pings("vm-1", "vm-2");
    const all = await ok(["exec", "-f", file, "--all", "--", "hostname"]);
    for (let n = 1; n <= 6; n++) expect(all).toContain(`vm-${n}: vm-${n}`);
  });

  it("cuts groups apart across hosts, holds each VM to its own MAC while groups are cut, and shapes a VM's link on its host", async () => {
    for (const vm of JSON.parse(await ok(["plan", "-f", file, "--json"])) as {
      name: string;
      ip: string;
    }[]) {
      ips[vm.name] = vm.ip;
    }
    try {
      await cutAndShape();
    } finally {
      // A failure here leaves no impairment to the tests after it.
      await run(["net", "heal", "-f", file]);
      await run(["net", "reset", "-f", file]);
    }
    // Nothing of the fleet's impairments stays on the hosts once reset.
    for (const host of theHosts().hosts) {
      const { stdout } = await exec("tc", ["-n", host.namespace, "qdisc", "show"]);
      expect(stdout).not.toContain("htb");
      const ifbs = await exec("ip", ["-n", host.namespace, "link", "show", "type", "ifb"]);
      expect(ifbs.stdout).toBe("");
      const tables = await exec("ip", ["netns", "exec", host.namespace, "nft", "list", "tables"]);
      expect(tables.stdout).not.toContain("shoal_impair");
    }
  });

  async function cutAndShape(): Promise<void> {
    await ok(["net", "partition", "-f", file, "a", "b"]);
    // h1 to h2, on h1, h2 to h1, its group on h2, a VM in no group.
    const pairs = [
      ["vm-1", "vm-4"],
      ["vm-1", "vm-3"],
      ["vm-4", "vm-1"],
      ["vm-1", "vm-2"],
      ["vm-5", "vm-4"],
    ] as const;
    const answers = await Promise.all(pairs.map(([from, to]) => reaches(from, to)));
    expect(answers).toEqual([false, false, false, true, true]);
    // vm-1 sends from another MAC, tells the others (gratuitous ARP), pings vm-2, and takes its
    // own MAC back: cut off while groups are cut (its frames dropped at its tap), not otherwise.
    const spoofedPing = async () => {
      const script = [
        "m=$(cat /sys/class/net/eth0/address)",
        "ip link set dev eth0 address 52:54:00:ee:ee:01",
        `arping -U -c 1 -I eth0 ${ips["vm-1"]} >/dev/null 2>&1`,
        `ping -c 2 -W 2 ${ips["vm-2"]} >/dev/null 2>&1; r=$?`,
        "ip link set dev eth0 address $m",
        `arping -U -c 1 -I eth0 ${ips["vm-1"]} >/dev/null 2>&1`,
        "echo ping=$r",
      ].join("; ");
      return (await ok(["exec", "-f", file, "vm-1", "--", script])).trim();
    };
    expect(await spoofedPing()).toBe("vm-1: ping=1");
    await ok(["net", "heal", "-f", file]);
    expect(await reaches("vm-1", "vm-4")).toBe(true);
    expect(await spoofedPing()).toBe("vm-1: ping=0");
    // A rate on vm-2's link (h2's tap and ifb there): a transfer from it runs at about 1 Mbit/s.
    await ok(["net", "set", "-f", file, "vm-2", "--rate", "1mbit"]);
    const bytes = 262_144;
    await ok([
      "exec",
      "-f",
      file,
      "vm-2",
      "--",
      `mkdir -p /tmp/www && head -c ${bytes} /dev/zero > /tmp/www/f && httpd -p 8080 -h /tmp/www`,
    ]);
    const timed = await ok([
      "exec",
      "-f",
      file,
      "vm-1",
      "--",
      `time wget -q -O /dev/null http://${ips["vm-2"]}:8080/f 2>&1`,
    ]);
    const [, minutes, seconds] = /real\s+(\d+)m\s*([\d.]+)s/.exec(timed) ?? [];
    const mbits = (bytes * 8) / (Number(minutes) * 60 + Number(seconds)) / 1e6;
    expect(mbits, timed).toBeGreaterThan(0.7);
    expect(mbits, timed).toBeLessThan(1.3);
  }

  it("`df` counts the base once on each host and each VM's layer on its host", async () => {
    const usage = JSON.parse(await ok(["df", "-f", file, "--json"])) as {
      images: { id: string; host: string; vms: number; bytes: number }[];
      vms: { name: string; host: string; layerBytes: number }[];
    };
    expect(usage.images.map((copy) => [copy.host, copy.id, copy.vms])).toEqual([
      ["h1", image.id, 3],
      ["h2", image.id, 3],
    ]);
    for (const copy of usage.images) expect(copy.bytes).toBeGreaterThan(0);
    // Each guest formatted its layer at its first boot: blocks on its host, not here.
    for (const vm of usage.vms) expect(vm.layerBytes, vm.name).toBeGreaterThan(0);
    expect(usage.vms.map((vm) => vm.host)).toEqual(["h1", "h2", "h1", "h2", "h1", "h2"]);
    expect(await ok(["df", "-f", file])).toMatch(/^IMAGE\s+ID\s+HOST\s+BASE\s+VMS$/m);
  });

  it("`console` reaches a VM's serial console on its host over SSH; `logs` shows its boot, brought from there", async () => {
    const console = spawn(
      "nsenter",
      [
        `--net=/run/netns/${theHosts().control}`,
        `--mount=${await theHosts().localMount()}`,
        "--",
        process.execPath,
        SHOAL,
        "--state-dir",
        state,
        "console",
        "vm-4",
        "-f",
        file,
      ],
      { stdio: ["pipe", "pipe", "pipe"] },
    );
    let seen = "";
    const answered = new Promise<void>((resolve) => {
      console.stdout.on("data", (chunk) => {
        seen += chunk;
        if (seen.includes("answer-42")) resolve();
      });
    });
    let errors = "";
    console.stderr.on("data", (chunk) => {
      errors += chunk;
    });
    console.stdin.write("echo answer-$((6 * 7))\n");
    await answered;
    console.stdin.end();
    expect(await new Promise((resolve) => console.on("close", resolve)), errors).toBe(0);
    // The log libvirt has QEMU write on the host, brought here.
    const logs = await ok(["logs", "vm-4", "--file", file]);
    expect(logs).toContain("shoal-identity: hostname=vm-4");
  });

  it("shows the VMs of a host whose libvirtd stopped as unreachable; `up` leaves them and says so, the others keep working; all are back with the daemon", async () => {
    const [h1] = theHosts().hosts as [LibvirtHost];
    const states = ps;
    await theHosts().stopDaemon(h1);
    try {
      expect(await states()).toEqual([
        ["vm-1", "h1", "unreachable"],
        ["vm-2", "h2", "running"],
        ["vm-3", "h1", "unreachable"],
        ["vm-4", "h2", "running"],
        ["vm-5", "h1", "unreachable"],
        ["vm-6", "h2", "running"],
      ]);
      const up = await run(["up", "-f", file]);
      expect(up.code, up.stderr).toBe(0);
      expect(up.stderr).toContain(
        "host h1 cannot be reached: its VMs vm-1, vm-3, vm-5 are left alone until it is back (`shoal up --reschedule` makes them again on the other hosts)",
      );
      const others = await ok(["exec", "-f", file, "vm-2", "vm-4", "vm-6", "--", "hostname"]);
      for (const vm of ["vm-2", "vm-4", "vm-6"]) expect(others).toContain(`${vm}: ${vm}`);
    } finally {
      await theHosts().startDaemon(h1);
    }
    expect((await states()).map(([, , state]) => state)).toEqual(Array(6).fill("running"));
  });

  it("shows a VM whose QEMU died as crashed; `up` of a smaller fleet deletes it and another", async () => {
    const [h1, h2] = theHosts().hosts as [LibvirtHost, LibvirtHost];
    const pids = lines((await exec("ip", ["netns", "pids", h2.namespace])).stdout);
    let killed = false;
    for (const pid of pids) {
      const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
      if (cmdline.includes("guest=lab.vm-6,")) {
        process.kill(Number(pid), "SIGKILL");
        killed = true;
      }
    }
    expect(killed).toBe(true);
    await expect
      .poll(async () => (await ps())[5], { timeout: 15_000 })
      .toEqual(["vm-6", "h2", "crashed"]);
    await writeFleetFile(4);
    await ok(["up", "-f", file]);
    expect(await domains(h1)).toEqual(["lab.vm-1", "lab.vm-3"]);
    expect(await domains(h2)).toEqual(["lab.vm-2", "lab.vm-4"]);
  });

  it("moves a VM with its layer when its pin sends it to another host; `diff` and `reset` read and replace its layer there", async () => {
    const [h1, h2] = theHosts().hosts as [LibvirtHost, LibvirtHost];
    await ok(["exec", "-f", file, "vm-1", "--", "sh", "-c", "echo kept > /root/marker && sync"]);
    await ok(["stop", "-f", file, "vm-1"]);
    await writeFleetFile(4, { pins: ['{ vms: "vm-1", host: h2 }'] });
    // `create` moves it and leaves it stopped, as it was.
    await ok(["create", "-f", file]);
    expect((await ps())[0]).toEqual(["vm-1", "h2", "stopped"]);
    expect(await domains(h1)).toEqual(["lab.vm-3"]);
    expect(await domains(h2)).toEqual(["lab.vm-1", "lab.vm-2", "lab.vm-4"]);
    expect(await virsh(h1, "vol-list", "--pool", poolName(state))).not.toContain("lab.vm-1.");
    // Read from its layer's volume on h2: what it wrote on h1 came along.
    const changed = JSON.parse(await ok(["diff", "vm-1", "-f", file, "--json"])) as {
      path: string;
      size: number;
    }[];
    expect(changed).toContainEqual(expect.objectContaining({ path: "/root/marker", size: 5 }));
    await ok(["reset", "vm-1", "-f", file, "--yes"]);
    expect(await ok(["diff", "vm-1", "-f", file])).toBe("VM vm-1 has no changes of its own\n");
  });

  it("`up --reschedule` makes a dead host's VMs again on the others (here this machine's own libvirtd, added as a host); once it is back, their old copies there are removed", async () => {
    const [h1, h2] = theHosts().hosts as [LibvirtHost, LibvirtHost];
    await writeFleetFile(4, { hosts: [LOCAL_HOST] });
    await theHosts().powerOff(h1);
    let poweredOn = false;
    try {
      const moved = await run(["up", "-f", file, "--reschedule"]);
      expect(moved.code, moved.stderr + moved.stdout).toBe(0);
      expect(moved.stderr).toContain(
        "host h1 cannot be reached: its VM vm-3 is made again on the other hosts with blank layers",
      );
      // spread: this machine's libvirtd had room for one, joined to the others by a veth.
      expect(await ps()).toEqual([
        ["vm-1", "h2", "running"],
        ["vm-2", "h2", "running"],
        ["vm-3", "local", "running"],
        ["vm-4", "h2", "running"],
      ]);
      const all = await ok(["exec", "-f", file, "--all", "--", "hostname"]);
      for (let n = 1; n <= 4; n++) expect(all).toContain(`vm-${n}: vm-${n}`);
      await pings("vm-3", "vm-2");

      await theHosts().powerOn(h1);
      poweredOn = true;
      // Its domain is back, shut off; the next command that changes the fleet removes it. h1
      // leaves the fleet file: once nothing of the fleet is there, its bridge and VXLAN go too.
      expect(await domains(h1)).toEqual(["lab.vm-3"]);
      await writeFleetFile(4, { hosts: [LOCAL_HOST], without: "h1" });
      const back = await run(["up", "-f", file]);
      expect(back.code, back.stderr).toBe(0);
      expect(back.stderr).toContain("host h1 answers again: the old copy of vm-3 there is removed");
      expect(back.stderr).toContain("host h1 is no host of fleet lab any more");
      expect(await domains(h1)).toEqual([]);
      const links = (await exec("ip", ["-n", h1.namespace, "-o", "link", "show"])).stdout;
      expect(links).not.toMatch(/-br|-vx/);
      // No VM of the state directory is on h1 any more: its pool went with the last image.
      expect(await virsh(h1, "pool-list", "--all", "--name")).toBe("");
      expect(await domains(h2)).toEqual(["lab.vm-1", "lab.vm-2", "lab.vm-4"]);
      expect(await domains(theHosts().local)).toEqual(["lab.vm-3"]);
    } finally {
      if (!poweredOn) await theHosts().powerOn(h1);
    }
  });

  it("`upgrade` moves every VM to a new base sent once to each host, with its layer kept; the old base leaves the hosts", async () => {
    const [, h2] = theHosts().hosts as [LibvirtHost, LibvirtHost];
    const next = await sharedImage(state, "tiny-next", { from: "busybox", copy: 2 });
    await ok([
      "exec",
      "-f",
      file,
      "--all",
      "--",
      "sh",
      "-c",
      "echo own-$(hostname) > /root/own && sync",
    ]);
    const upgraded = JSON.parse(
      await ok(["upgrade", "-f", file, "--image", "tiny-next", "--max-unavailable", "4", "--json"]),
    ) as { name: string; outcome: string }[];
    expect(upgraded.map((report) => [report.name, report.outcome])).toEqual(
      ["vm-1", "vm-2", "vm-3", "vm-4"].map((name) => [name, "upgraded"]),
    );
    const own = await ok(["exec", "-f", file, "--all", "--", "cat", "/root/own"]);
    for (let n = 1; n <= 4; n++) expect(own).toContain(`vm-${n}: own-vm-${n}`);
    // Each host that runs VMs has the new base, checked, and no longer the old one.
    for (const host of [h2, theHosts().local]) {
      const volumes = await virsh(host, "vol-list", "--pool", poolName(state));
      expect(volumes).toContain(imageVolumes(next.id).verified);
      expect(volumes).not.toContain(imageVolumes(image.id).base);
    }
  });

  it("`destroy` leaves nothing on any host; the base is unchanged", async () => {
    await ok(["destroy", "-f", file, "--yes"]);
    for (const host of allHosts()) {
      expect(await virsh(host, "list", "--all", "--name")).toBe("");
      expect(await virsh(host, "pool-list", "--all", "--name")).toBe("");
      const links = (await exec("ip", ["-n", host.namespace, "-o", "link", "show"])).stdout;
      expect(links).not.toMatch(/-br|-vx|-lh/);
    }
    expect(await sha256(imageBoot(stateLayout(state), image).base)).toBe(baseSum);
  });
});

import { execFile, spawn } from "node:child_process";
import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { VmSpec } from "../../src/core/fleet.js";
import { ProcessRunner } from "../../src/host/runner.js";
import { Ext4Image, S_IFLNK, S_IFMT } from "../../src/image/ext4.js";
import { type ImageMeta, imageBoot } from "../../src/image/store.js";
import { createLayer, readLayerFile } from "../../src/layer/layer.js";
import { stateLayout } from "../../src/state/layout.js";
import { destroyAllFleets, SHOAL, shoal } from "../helpers/cli.js";
import { fleetOf } from "../helpers/fleet.js";
import { fingerprints, reportedIdentity, waitForIdentity } from "../helpers/identity.js";
import { sharedImage } from "../helpers/images.js";
import { useFileTempDir, useTempDirs } from "../helpers/tmp.js";
import {
  isRunning,
  killAllVms,
  killQemusMentioning,
  qemuPidsMentioning,
  sha256,
  TestVm,
} from "../helpers/vm.js";

/**
 * Real Debian images, built with mmdebstrap, booted (QEMU, software emulation) through shoal's
 * initramfs and, with --hook initramfs-tools, through the image's own initramfs.
 */

const exec = promisify(execFile);
const tempDir = useTempDirs("file");
const stateDir = useFileTempDir("shoal-debian-");
const fleetFiles = useFileTempDir("shoal-fleets-");
const runner = new ProcessRunner();
let state: string;
const images: Record<string, ImageMeta> = {};

beforeAll(async () => {
  state = stateDir();
  // As a host's state directory is: dnsmasq reads the fleet's files as user nobody.
  await chmod(state, 0o755);
  // Side by side: most of a build is dpkg in one process, so two builds take little more than one.
  await Promise.all(
    (
      [
        ["debian", { from: "debian:bookworm" }],
        ["debian-hook", { from: "debian:bookworm", hook: "initramfs-tools" }],
        ["tiny", { from: "busybox" }],
      ] as const
    ).map(async ([name, build]) => {
      images[name] = await sharedImage(state, name, build);
    }),
  );
});

afterAll(async () => {
  // Whatever a failed test left goes (VMs, networks); the state directory itself is removed after.
  await killAllVms();
  await destroyAllFleets(state);
  await killQemusMentioning(state);
});

function spec(layer: string): VmSpec {
  const vm = fleetOf(`name: test\nvms: [{ name: agent-1, memory: 512M, layer: ${layer} }]\n`)
    .vms[0];
  if (!vm) throw new Error("no VM");
  return vm;
}

/** Boots one VM of the image on a disk layer, outside any fleet. */
async function boot(imageName: string, layer: string): Promise<TestVm> {
  const image = images[imageName];
  if (!image) throw new Error(`no image ${imageName}`);
  const dir = join(await tempDir(), "vm");
  await mkdir(dir);
  return TestVm.boot({
    boot: imageBoot(stateLayout(state), image),
    vm: spec("{ type: disk }"),
    dir,
    layer,
  });
}

async function newLayer(): Promise<string> {
  const layer = join(await tempDir(), "layer.img");
  await createLayer(layer, 1024 ** 3);
  return layer;
}

/**
 * Boots to the login prompt, which shows the VM's own hostname, checks the identity the booted
 * system reports (its host key derived from the private key sshd uses), then shuts down by ACPI.
 */
async function bootToLogin(vm: TestVm, layerDescription: RegExp): Promise<void> {
  await vm.waitFor(layerDescription);
  await vm.waitFor(/agent-1 login:/, 300_000);
  const identity = await waitForIdentity(vm.log);
  const seeded = (await readFile(join(dirname(vm.log), "ssh/ssh_host_ed25519_key.pub"), "utf8"))
    .split(" ")
    .slice(0, 2)
    .join(" ");
  expect(identity).toEqual({
    hostname: "agent-1",
    machineId: spec("{}").machineId,
    hostKey: seeded,
  });
  await vm.powerOffByButton();
}

// Its two VMs boot side by side, each on one vCPU of the host.
describe.concurrent("a Debian image", () => {
  it("is sealed, with a kernel, systemd and sshd", async () => {
    const image = images.debian;
    if (!image) throw new Error("no image");
    expect(
      image.sealed.removed.filter((path) => path.startsWith("/etc/ssh/ssh_host_")).length,
    ).toBeGreaterThan(0);
    const base = new Ext4Image(runner, stateLayout(state).image(image.id).base);
    expect(await base.readFile("/etc/machine-id")).toBe("");
    expect((await base.list("/etc/ssh"))?.some((entry) => entry.name.startsWith("ssh_host_"))).toBe(
      false,
    );
    expect(await base.readFile("/etc/systemd/network/80-shoal.network")).toContain(
      "ClientIdentifier=mac",
    );
    // Masked (linked to /dev/null): nothing for them to do on a union root, only boot time to take.
    const units = (await base.list("/etc/systemd/system"))
      ?.filter((entry) => (entry.mode & S_IFMT) === S_IFLNK)
      .map((entry) => entry.name);
    expect(units).toEqual(expect.arrayContaining(["e2scrub_reap.service", "e2scrub_all.timer"]));
    expect(
      (await base.list("/boot"))?.some((entry) => entry.name === `vmlinuz-${image.kernelVersion}`),
    ).toBe(true);
    expect(image.boot).toBe("shoal-initramfs");
    expect(images["debian-hook"]?.boot).toBe("image-initramfs");
  });

  it("boots through shoal's initramfs with a disk layer, which takes the system's writes", async () => {
    const image = images.debian;
    if (!image) throw new Error("no image");
    const layer = await newLayer();
    await bootToLogin(
      await boot("debian", layer),
      /root is the union of base \/dev\/pmem0 \(read-only\) and layer \/dev\/vdb/,
    );
    // systemd wrote the machine-id it was given into the union, so into the layer.
    expect(await readLayerFile(runner, layer, "/etc/machine-id")).toBe(`${spec("{}").machineId}\n`);
    expect(await sha256(stateLayout(state).image(image.id).base)).toBe(image.id);
  });

  it("boots through its own initramfs with shoal's initramfs-tools hook", async () => {
    const image = images["debian-hook"];
    if (!image) throw new Error("no image");
    const layer = await newLayer();
    const vm = await boot("debian-hook", layer);
    await bootToLogin(
      vm,
      /root is the union of base \/dev\/pmem0 \(read-only\) and layer \/dev\/vdb/,
    );
    expect(await vm.output()).toContain("Loading, please wait...");
    expect(await readLayerFile(runner, layer, "/etc/machine-id")).toBe(`${spec("{}").machineId}\n`);
    expect(await sha256(stateLayout(state).image(image.id).base)).toBe(image.id);
  });
});

/**
 * A fleet of busybox and Debian VMs on its own network, reached with `shoal ssh`, `exec`, `cp` and
 * `wait`, beside a second fleet on another subnet.
 */
describe("a mixed fleet on its network", () => {
  const TINY = ["vm-1", "vm-2", "vm-3", "vm-4"];
  const DEBIAN = ["deb-1", "deb-2"];
  const ALL = [...TINY, ...DEBIAN];
  let mixed: string;
  let other: string;
  const run = (args: readonly string[]) => shoal(["--state-dir", state, ...args]);
  let plan: { name: string; ip: string }[];

  beforeAll(async () => {
    mixed = join(fleetFiles(), "mix.yaml");
    await writeFile(
      mixed,
      `name: mix\nvms:\n${TINY.map((name) => `  - { name: ${name} }\n`).join("")}${DEBIAN.map((name) => `  - { name: ${name}, image: debian, memory: 512M${name === "deb-1" ? ", layer: { type: tmpfs }" : ""} }\n`).join("")}`,
    );
    other = join(fleetFiles(), "other.yaml");
    await writeFile(other, "name: other\ncount: 2\nnetwork: { subnet: 10.78.0.0/24 }\n");
    plan = JSON.parse((await run(["plan", "-f", mixed, "--json"])).stdout) as typeof plan;
  });

  it("comes up; `shoal wait` returns once every VM, busybox (dropbear) or Debian (OpenSSH), accepts SSH logins", async () => {
    const up = await run(["up", "-f", mixed, "--timeout", "600"]);
    expect(up.code, up.stderr).toBe(0);
    // shoal's images say when they are booted: `up` returns only once each one has.
    const fleet = stateLayout(state).fleet("mix");
    for (const name of ALL) {
      expect(await reportedIdentity(fleet.vm(name).serialLog), name).toBeDefined();
    }
    const waited = await run(["wait", "-f", mixed, "--timeout", "600"]);
    expect(waited.code, waited.stderr).toBe(0);
    for (const name of ALL) expect(waited.stdout).toMatch(new RegExp(`^${name}\\s+answers`, "m"));
    // Each VM reports its own identity; the host keys its SSH server uses are distinct, as listed.
    const knownHosts = await readFile(fleet.knownHosts, "utf8");
    const keys: string[] = [];
    for (const vm of plan as { name: string; ip: string; machineId: string }[]) {
      const identity = await waitForIdentity(fleet.vm(vm.name).serialLog);
      expect(identity.hostname).toBe(vm.name);
      expect(identity.machineId).toBe(vm.machineId);
      expect(knownHosts).toContain(`${vm.name},${vm.name}.mix,${vm.ip} ${identity.hostKey}\n`);
      keys.push(identity.hostKey);
    }
    expect(new Set(await fingerprints(keys)).size).toBe(6);
    // deb-1 boots Debian through shoal's initramfs on a tmpfs layer, deb-2 on a disk layer.
    expect(await readFile(fleet.vm("deb-1").serialLog, "utf8")).toMatch(
      /root is the union of base \/dev\/pmem0 \(read-only\) and layer tmpfs/,
    );
    expect(await readFile(fleet.vm("deb-2").serialLog, "utf8")).toMatch(
      /root is the union of base \/dev\/pmem0 \(read-only\) and layer \/dev\/vdb/,
    );
  });

  it("`exec --all -- hostname` prints each VM's own name once, and each VM has its planned address from DHCP", async () => {
    const names = await run(["exec", "-f", mixed, "--all", "--", "hostname"]);
    expect(names.code, names.stderr).toBe(0);
    expect(names.stdout.trim().split("\n").sort()).toEqual(
      ALL.map((name) => `${name}: ${name}`).sort(),
    );
    const addresses = await run(["exec", "-f", mixed, "--all", "--json", "--", "ip -4 addr"]);
    expect(addresses.code, addresses.stderr).toBe(0);
    const outcomes = JSON.parse(addresses.stdout) as { name: string; stdout: string }[];
    expect(outcomes.map((outcome) => outcome.name).sort()).toEqual([...ALL].sort());
    for (const vm of plan) {
      expect(outcomes.find((outcome) => outcome.name === vm.name)?.stdout).toContain(
        `inet ${vm.ip}/16 `,
      );
    }
  });

  it("every VM resolves and pings every other by name", async () => {
    // Debian resolves through systemd-resolved with the fleet's domain from DHCP; busybox directly.
    const script = `for h in ${ALL.join(" ")}; do ping -c 1 -W 5 $h >/dev/null 2>&1 && echo "ok $h" || echo "FAILED $h"; done`;
    const pinged = await run(["exec", "-f", mixed, "--all", "--", script]);
    expect(pinged.code, pinged.stderr).toBe(0);
    expect(pinged.stdout).not.toContain("FAILED");
    for (const from of ALL) {
      for (const to of ALL) expect(pinged.stdout).toContain(`${from}: ok ${to}\n`);
    }
    const resolved = await run(["ssh", "-f", mixed, "deb-1", "--", "getent hosts vm-3.mix"]);
    expect(resolved.stdout).toContain(plan.find((vm) => vm.name === "vm-3")?.ip);
  });

  it("Debian guests read the base from the host's page cache, which holds it once for both of them", async () => {
    // Cached less Shmem: the guest's page cache of files, tmpfs left out.
    const cache = await run([
      "exec",
      "-f",
      mixed,
      "deb-*",
      "--",
      "grep ' /run/shoal/base ' /proc/mounts; awk '/^Cached:/ { c = $2 } /^Shmem:/ { s = $2 } END { print \"files\", c - s }' /proc/meminfo",
    ]);
    expect(cache.code, cache.stderr).toBe(0);
    for (const name of DEBIAN) {
      expect(cache.stdout).toMatch(
        new RegExp(`^${name}: /dev/pmem0 /run/shoal/base ext4 ro,.*dax=always`, "m"),
      );
      const files = Number(new RegExp(`^${name}: files (-?\\d+)$`, "m").exec(cache.stdout)?.[1]);
      // Booted through the page cache, a Debian guest keeps about 70 MiB of the base there.
      expect(files, cache.stdout).toBeLessThan(16 * 1024);
    }
    // Each QEMU maps the base privately and read-only: its pages are the host's page cache, the
    // same for both, and none is a private copy.
    const base = stateLayout(state).image(images.debian?.id ?? "").base;
    for (const name of DEBIAN) {
      const pid = (await readFile(stateLayout(state).fleet("mix").vm(name).pidFile, "utf8")).trim();
      const smaps = await readFile(`/proc/${pid}/smaps`, "utf8");
      const mapping = smaps
        .split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)
        .find((entry) => entry.includes(base));
      expect(mapping, name).toBeDefined();
      expect(mapping).toMatch(/^[0-9a-f]+-[0-9a-f]+ r--p /);
      expect(mapping).toMatch(/^Anonymous: +0 kB$/m);
      expect(Number(/^Shared_Clean: +(\d+) kB$/m.exec(mapping ?? "")?.[1])).toBeGreaterThan(1024);
    }
  });

  it("a command failing on one VM makes `exec` exit non-zero and name that VM only", async () => {
    const result = await run(["exec", "-f", mixed, "--all", "--", "test $(hostname) != vm-3"]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("exec failed on 1 of 6 VMs: vm-3 (exit 1)");
    const some = await run(["exec", "-f", mixed, "deb-*", "vm-1", "--", "hostname"]);
    expect(some.stdout.trim().split("\n").sort()).toEqual([
      "deb-1: deb-1",
      "deb-2: deb-2",
      "vm-1: vm-1",
    ]);
  });

  it("`shoal ssh` logs in with strict host key checking, passes on the exit code, and fails loudly once a VM's host key changed", async () => {
    const hostname = await run(["ssh", "-f", mixed, "vm-2", "--", "hostname"]);
    expect(hostname.code, hostname.stderr).toBe(0);
    expect(hostname.stdout).toBe("vm-2\n");
    expect((await run(["ssh", "-f", mixed, "deb-2", "--", "exit 7"])).code).toBe(7);
    // deb-2 gets a new host key, as a VM replaced by an impostor would show.
    const rekeyed = await run([
      "ssh",
      "-f",
      mixed,
      "deb-2",
      "--",
      "rm /etc/ssh/ssh_host_ed25519_key* && ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key && systemctl restart ssh",
    ]);
    expect(rekeyed.code, rekeyed.stderr).toBe(0);
    const refused = await run(["ssh", "-f", mixed, "deb-2", "--", "hostname"]);
    expect(refused.code).toBe(255);
    expect(refused.stdout).toBe("");
    expect(refused.stderr).toContain("REMOTE HOST IDENTIFICATION HAS CHANGED");
    expect(refused.stderr).toContain("VM deb-2 did not show the SSH host key shoal made for it");
    const all = await run(["exec", "-f", mixed, "--all", "--", "true"]);
    expect(all.code).toBe(1);
    expect(all.stderr).toMatch(
      /exec failed on 1 of 6 VMs: deb-2 \(exit 255, ssh: Host key verification failed\.\)/,
    );
    // Its identity comes back from shoal's seed at the next boot.
    expect((await run(["restart", "-f", mixed, "deb-2", "--timeout", "600"])).code).toBe(0);
    expect((await run(["wait", "-f", mixed, "deb-2", "--timeout", "600"])).code).toBe(0);
  });

  it("`shoal cp` copies a directory to every VM and a file back from each into its own directory", async () => {
    const source = join(await tempDir(), "app");
    await mkdir(join(source, "conf"), { recursive: true });
    await writeFile(join(source, "conf", "agent.ini"), "peers=6\n");
    const sent = await run(["cp", "-f", mixed, source, "*:/tmp/"]);
    expect(sent.code, sent.stderr).toBe(0);
    const read = await run(["exec", "-f", mixed, "--all", "--", "cat /tmp/app/conf/agent.ini"]);
    expect(read.stdout.trim().split("\n").sort()).toEqual(
      ALL.map((name) => `${name}: peers=6`).sort(),
    );
    const back = join(await tempDir(), "back");
    const fetched = await run(["cp", "-f", mixed, "*:/etc/hostname", back]);
    expect(fetched.code, fetched.stderr).toBe(0);
    for (const name of ALL)
      expect(await readFile(join(back, name, "hostname"), "utf8")).toBe(`${name}\n`);
    const missing = await run(["cp", "-f", mixed, "vm-1:/no/such/file", back]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("vm-1");
  });

  it("`shoal forward` brings a VM's port to this host's loopback until it is stopped", async () => {
    const served = await run([
      "ssh",
      "-f",
      mixed,
      "vm-1",
      "--",
      "mkdir -p /tmp/www && echo hello from vm-1 > /tmp/www/index.html && httpd -p 8080 -h /tmp/www",
    ]);
    expect(served.code, served.stderr).toBe(0);
    const port = 20_000 + (process.pid % 20_000);
    const url = `http://127.0.0.1:${port}/`;
    const forward = spawn(
      process.execPath,
      [SHOAL, "--state-dir", state, "forward", "-f", mixed, "vm-1", `${port}:8080`],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    let stderr = "";
    forward.stderr.on("data", (chunk) => {
      stderr += chunk;
    });
    const exited = new Promise<number | null>((resolve) => forward.on("close", resolve));
    try {
      let body = "";
      const deadline = Date.now() + 60_000;
      while (!body.includes("hello from vm-1") && Date.now() < deadline) {
        body = await fetch(url).then(
          (response) => response.text(),
          () => "",
        );
        if (!body) await new Promise((resolve) => setTimeout(resolve, 500));
      }
      expect(body, stderr).toBe("hello from vm-1\n");
    } finally {
      forward.kill("SIGTERM");
    }
    expect(await exited).toBe(0);
    await expect(fetch(url)).rejects.toThrow();
  });

  it("runs beside a second fleet on another subnet; neither reaches the other's network", async () => {
    const up = await run(["up", "-f", other, "--timeout", "600"]);
    expect(up.code, up.stderr).toBe(0);
    expect((await run(["wait", "-f", other, "--timeout", "300"])).code).toBe(0);
    const names = await run(["exec", "-f", other, "--all", "--", "ip -4 addr; hostname"]);
    expect(names.code, names.stderr).toBe(0);
    expect(names.stdout).toMatch(/^vm-1: +inet 10\.78\.0\.2\/24 /m);
    expect(names.stdout).toMatch(/^vm-2: +inet 10\.78\.0\.3\/24 /m);
    // Same VM names in both fleets, each fleet answering for its own.
    const vm1 = plan.find((vm) => vm.name === "vm-1")?.ip;
    const isolated = await run(["ssh", "-f", other, "vm-1", "--", `ping -c 1 -W 3 ${vm1}`]);
    expect(isolated.code).not.toBe(0);
    expect((await run(["exec", "-f", mixed, "--all", "--", "true"])).code).toBe(0);
  });

  it("`wait` gives up on a stopped VM at once and says so", async () => {
    expect((await run(["stop", "-f", mixed, "vm-4"])).code).toBe(0);
    const started = Date.now();
    const waited = await run(["wait", "-f", mixed, "vm-4", "--timeout", "300"]);
    expect(waited.code).toBe(1);
    expect(waited.stdout).toMatch(/^vm-4\s+it is stopped$/m);
    expect(Date.now() - started).toBeLessThan(60_000);
  });

  it("`down` shuts busybox and Debian VMs down cleanly and keeps the network; `destroy` leaves no bridge, tap, dnsmasq or namespace of either fleet", async () => {
    const down = await run(["down", "-f", mixed, "--timeout", "300"]);
    expect(down.code, down.stderr).toBe(0);
    expect(down.stdout).not.toContain("forced");
    expect((await exec("ip", ["netns", "list"])).stdout).toMatch(/shoal-mix\b/);
    const dnsmasqPids = await Promise.all(
      ["mix", "other"].map(async (fleet) =>
        Number(await readFile(stateLayout(state).fleet(fleet).net.pid, "utf8")),
      ),
    );
    for (const file of [mixed, other]) {
      const destroyed = await run(["destroy", "-f", file, "--yes"]);
      expect(destroyed.code, destroyed.stderr).toBe(0);
    }
    const namespaces = (await exec("ip", ["netns", "list"])).stdout;
    expect(namespaces).not.toMatch(/shoal-(mix|other)\b/);
    for (const pid of dnsmasqPids) expect(await isRunning(pid)).toBe(false);
    await expect(exec("ip", ["link", "show", "shoal0"])).rejects.toThrow();
    expect((await exec("ip", ["-o", "link", "show"])).stdout).not.toMatch(/ tap\d+[:@]/);
    expect(await qemuPidsMentioning(state)).toEqual([]);
    for (const name of ["debian", "tiny"]) {
      const image = images[name];
      expect(await sha256(stateLayout(state).image(image?.id ?? "").base)).toBe(image?.id);
    }
  });
});

import { execFile, spawn } from "node:child_process";
import { watch } from "node:fs";
import { chmod, mkdir, readdir, readFile, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { namespaceName } from "../../src/core/net.js";
import { ProcessRunner } from "../../src/host/runner.js";
import type { ImageMeta } from "../../src/image/store.js";
import { hasNetem } from "../../src/net/impairments.js";
import { stateLayout } from "../../src/state/layout.js";
import { destroyAllFleets, SHOAL, shoal, shoalOk } from "../helpers/cli.js";
import { fingerprints, waitForIdentity } from "../helpers/identity.js";
import { sharedImage } from "../helpers/images.js";
import { useFileTempDir } from "../helpers/tmp.js";
import { GuestConsole, killQemusMentioning, qemuPidsMentioning, sha256 } from "../helpers/vm.js";

/**
 * The fleet lifecycle as a user runs it: the shoal binary bringing fleets of tiny-image VMs up and
 * down in real QEMU (software emulation). The tests of one fleet build on each other, in order.
 */

const exec = promisify(execFile);
const stateDir = useFileTempDir("shoal-life-");
const fleetDir = useFileTempDir("shoal-life-fleets-");
let state: string;
const images: Record<string, ImageMeta> = {};
const baseSums: Record<string, string> = {};

async function run(args: readonly string[]) {
  return shoal(["--state-dir", state, ...args]);
}

async function buildImage(name: string, copy: number) {
  images[name] = await sharedImage(state, name, { from: "busybox", copy });
  baseSums[name] = await sha256(stateLayout(state).image(images[name]?.id ?? "").base);
}

beforeAll(async () => {
  state = stateDir();
  // As a host's state directory is: dnsmasq (user nobody) and QEMU (shoal-qemu) get through it.
  await chmod(state, 0o755);
  await buildImage("tiny", 1);
  await buildImage("tiny-next", 2);
});

afterAll(async () => {
  // Whatever a failed test left goes (VMs, networks); the state directory itself is removed after.
  await destroyAllFleets(state);
  await killQemusMentioning(state);
});

const listHostIfbs = async () => (await exec("ip", ["-br", "link", "show", "type", "ifb"])).stdout;
/** The host's ifb devices before any fleet: a fleet's own are in its namespace. */
let hostIfbs: string;
/** The size of the file sent through the groups' path: about 3 s at 10 Mbit/s. */
const FILE_BYTES = 4_000_000;
/** Each VM's address, once the fleet is up. */
const ips: Record<string, string> = {};

async function fleetFile(name: string, text: string): Promise<string> {
  const path = join(fleetDir(), `${name}.yaml`);
  await writeFile(path, text);
  return path;
}

interface UpRow {
  name: string;
  ip: string;
  state: string;
  done: string[];
  changes: string[];
  ok: boolean;
  error?: string;
}

function ok(...args: string[]): Promise<string> {
  return shoalOk(state, args);
}

async function up(file: string, ...extra: string[]): Promise<UpRow[]> {
  const result = await run(["up", "-f", file, "--json", ...extra]);
  expect(result.code, result.stderr).toBe(0);
  return JSON.parse(result.stdout) as UpRow[];
}

interface PsRow {
  name: string;
  state: string;
  layerBytes: number | null;
  uptimeSeconds: number | null;
}

async function ps(file: string): Promise<PsRow[]> {
  const result = await run(["ps", "-f", file, "--json"]);
  expect(result.code, result.stderr).toBe(0);
  return JSON.parse(result.stdout) as PsRow[];
}

function vmPaths(fleet: string, vm: string) {
  return stateLayout(state).fleet(fleet).vm(vm);
}

async function pidOf(fleet: string, vm: string): Promise<number> {
  return Number((await readFile(vmPaths(fleet, vm).pidFile, "utf8")).trim());
}

async function attach(fleet: string, vm: string): Promise<GuestConsole> {
  const paths = vmPaths(fleet, vm);
  return GuestConsole.attach(await pidOf(fleet, vm), paths.serialLog, paths.consoleSocket);
}

// It runs beside the three fleets of their own below (a concurrent group of four describes, two
// tests at a time: maxConcurrency in vitest.config.ts), its own tests one after another: its many
// short checks leave a core idle that their boots use.
describe.concurrent("a fleet of 5 tiny VMs", () => {
  const fleet = "five";
  // The last one is on a tmpfs layer.
  const COUNT = 5;
  const TMPFS_VM = `vm-${COUNT}`;
  let file: string;

  beforeAll(async () => {
    hostIfbs = await listHostIfbs();
    file = await fleetFile(
      fleet,
      [
        "name: five",
        `count: ${COUNT}`,
        "vm: { layer: { type: disk, size: 64M } }",
        `vms: [ { name: ${TMPFS_VM}, layer: { type: tmpfs } } ]`,
        // Two groups of two (the tmpfs VM in neither), a 10 Mbit/s path between them.
        'groups: { east: "vm-{1,2}", west: "vm-{3,4}" }',
        "impairments: [ { group: east, to: west, rate: 10mbit } ]",
        "",
      ].join("\n"),
    );
  });

  /** A command on one VM through `shoal exec` (SSH); its output, stdout and stderr together. */
  async function onVm(vm: string, command: string) {
    const result = await run(["exec", "-f", file, vm, "--", "sh", "-c", command]);
    return { code: result.code, out: `${result.stdout}\n${result.stderr}` };
  }

  /** Serves a file of FILE_BYTES over HTTP from `vm` (busybox httpd), anew after a restart. */
  async function serve(vm: string) {
    const served = await onVm(
      vm,
      `mkdir -p /tmp/www && head -c ${FILE_BYTES} /dev/zero > /tmp/www/f && { killall httpd 2>/dev/null; httpd -p 8080 -h /tmp/www; }`,
    );
    expect(served.code, served.out).toBe(0);
  }

  /** Mbit/s of a transfer of the served file from `server` to `client` (HTTP, busybox wget). */
  async function transfer(client: string, server: string): Promise<number> {
    const { code, out } = await onVm(
      client,
      `time wget -q -O /dev/null http://${ips[server]}:8080/f 2>&1`,
    );
    expect(code, out).toBe(0);
    const [, minutes, seconds] = /real\s+(\d+)m\s*([\d.]+)s/.exec(out) ?? [];
    const elapsed = Number(minutes) * 60 + Number(seconds);
    expect(elapsed, out).toBeGreaterThan(0);
    return (FILE_BYTES * 8) / elapsed / 1e6;
  }

  /** The share of `count` pings from `from` to `to` that got no answer. */
  async function pingLoss(from: string, to: string, count: number): Promise<number> {
    const { out } = await onVm(from, `ping -q -c ${count} -i 0.05 -W 1 ${ips[to]}`);
    const [, sent, received] = /(\d+) packets transmitted, (\d+) packets received/.exec(out) ?? [];
    expect(Number(sent), out).toBe(count);
    return 1 - Number(received) / count;
  }

  const reaches = async (from: string, to: string) => (await pingLoss(from, to, 3)) < 1;

  describe.sequential("in order", () => {
    it("comes up with `shoal up`, each VM with its own hostname, machine-id and SSH host key, as known_hosts lists them", async () => {
      const rows = await up(file, "--workers", "4");
      for (const row of rows) ips[row.name] = row.ip;
      expect(rows.map((row) => [row.name, row.state, row.done, row.ok])).toEqual(
        Array.from({ length: COUNT }, (_, i) => [
          `vm-${i + 1}`,
          "running",
          ["create", "start"],
          true,
        ]),
      );
      const plan = JSON.parse((await run(["plan", "-f", file, "--json"])).stdout) as {
        name: string;
        machineId: string;
      }[];
      const knownHosts = (await readFile(stateLayout(state).fleet(fleet).knownHosts, "utf8"))
        .trim()
        .split("\n");
      const reported = [];
      for (const vm of plan) {
        const identity = await waitForIdentity(vmPaths(fleet, vm.name).serialLog);
        expect(identity.hostname).toBe(vm.name);
        expect(identity.machineId).toBe(vm.machineId);
        const line = knownHosts.find((entry) => entry.startsWith(`${vm.name},`));
        expect(line).toBe(
          `${vm.name},${vm.name}.${fleet},${rows.find((row) => row.name === vm.name)?.ip} ${identity.hostKey}`,
        );
        reported.push(identity.hostKey);
      }
      const prints = await fingerprints(reported);
      expect(new Set(prints).size).toBe(COUNT);
      expect(prints.every((print) => print.startsWith("SHA256:"))).toBe(true);
      expect(new Set(plan.map((vm) => vm.machineId)).size).toBe(COUNT);
      // Private keys are root's only; identity seeds (they hold the host key) also QEMU's group's.
      const qemuGid = Number((await exec("id", ["-g", "shoal-qemu"])).stdout);
      for (const vm of plan) {
        const paths = vmPaths(fleet, vm.name);
        const owner = async (path: string) => {
          const info = await stat(path);
          return [(info.mode & 0o777).toString(8), info.uid, info.gid];
        };
        expect(await owner(join(paths.hostKeys, "ssh_host_ed25519_key"))).toEqual(["600", 0, 0]);
        expect(await owner(paths.hostKeys)).toEqual(["700", 0, 0]);
        expect(await owner(paths.seed)).toEqual(["640", 0, qemuGid]);
        expect(await owner(paths.dir)).toEqual(["710", 0, qemuGid]);
      }
    });

    it("runs each QEMU as user shoal-qemu with no capabilities, under its seccomp sandbox, in the fleet's namespace; a guest's reboot stays in it", async () => {
      const id = async (...args: string[]) =>
        (await exec("id", [...args, "shoal-qemu"])).stdout.trim();
      const [uid, gid, groups] = [await id("-u"), await id("-g"), await id("-G")];
      const namespace = (await stat(`/run/netns/${namespaceName({ root: state, fleet })}`)).ino;
      for (let i = 1; i <= COUNT; i++) {
        const pid = await pidOf(fleet, `vm-${i}`);
        const status = Object.fromEntries(
          (await readFile(`/proc/${pid}/status`, "utf8"))
            .trim()
            .split("\n")
            .map((line) => line.split(/:\s*/, 2)),
        );
        expect({
          Uid: status.Uid,
          Gid: status.Gid,
          Groups: status.Groups?.trim().split(" ").sort(),
          CapInh: status.CapInh,
          CapPrm: status.CapPrm,
          CapEff: status.CapEff,
          CapBnd: status.CapBnd,
          CapAmb: status.CapAmb,
          NoNewPrivs: status.NoNewPrivs,
          Seccomp: status.Seccomp,
        }).toEqual({
          Uid: Array(4).fill(uid).join("\t"),
          Gid: Array(4).fill(gid).join("\t"),
          Groups: groups.split(" ").sort(),
          CapInh: "0000000000000000",
          CapPrm: "0000000000000000",
          CapEff: "0000000000000000",
          CapBnd: "0000000000000000",
          CapAmb: "0000000000000000",
          NoNewPrivs: "1",
          // 2: a seccomp filter (QEMU's -sandbox) is in force.
          Seccomp: "2",
        });
        expect((await stat(`/proc/${pid}/ns/net`)).ino).toBe(namespace);
      }
      // A reboot is QEMU resetting the machine in the same process: the kernel and initramfs were
      // read at start, so the unprivileged, sandboxed QEMU boots the guest again.
      const pid = await pidOf(fleet, "vm-2");
      const guest = await attach(fleet, "vm-2");
      guest.type("reboot\n");
      await guest.waitFor(/reboot: Restarting system/);
      await guest.waitFor(/shoal: root is the union of base/);
      await guest.waitFor(/shoal-tiny: vm-2 is up/);
      expect((await guest.sh("hostname")).out.trim()).toBe("vm-2");
      guest.detach();
      expect(await pidOf(fleet, "vm-2")).toBe(pid);
      expect((await ps(file)).find((row) => row.name === "vm-2")?.state).toBe("running");
    });

    it("does nothing on a second `up`, and `ps` shows every VM running with its layer's disk use", async () => {
      const pids = await Promise.all(
        Array.from({ length: COUNT }, (_, i) => pidOf(fleet, `vm-${i + 1}`)),
      );
      const rows = await up(file);
      expect(rows.every((row) => row.done.length === 0 && row.state === "running")).toBe(true);
      expect(
        await Promise.all(Array.from({ length: COUNT }, (_, i) => pidOf(fleet, `vm-${i + 1}`))),
      ).toEqual(pids);
      const listed = await ps(file);
      expect(listed.map((row) => row.state)).toEqual(Array(COUNT).fill("running"));
      expect(listed.every((row) => row.uptimeSeconds !== null)).toBe(true);
      // The guest formatted its 64M layer: some KiB to MiB used, far below the size.
      for (const row of listed.slice(0, -1)) {
        expect(row.layerBytes).toBeGreaterThan(0);
        expect(row.layerBytes).toBeLessThan(16 * 1024 ** 2);
      }
      expect(listed[COUNT - 1]?.layerBytes).toBeNull();
      expect((await qemuPidsMentioning(`${stateLayout(state).fleet(fleet).dir}/`)).length).toBe(
        COUNT,
      );
    });

    it("`df` counts the base once and each disk layer by what it really takes", async () => {
      const usage = JSON.parse(await ok("df", "-f", file, "--json")) as {
        images: { name: string; id: string; bytes: number; vms: number }[];
        vms: { name: string; layerType: string; layerBytes: number; otherBytes: number }[];
        basesBytes: number;
        totalBytes: number;
        fullCopiesBytes: number;
        ratio: number;
      };
      const tiny = images.tiny?.id ?? "";
      const base = (await stat(stateLayout(state).image(tiny).base)).blocks * 512;
      expect(usage.images).toEqual([{ name: "tiny", id: tiny, bytes: base, vms: COUNT }]);
      expect(usage.basesBytes).toBe(base);
      expect(usage.vms.map((vm) => [vm.name, vm.layerType])).toEqual(
        Array.from({ length: COUNT }, (_, i) => [`vm-${i + 1}`, i < COUNT - 1 ? "disk" : "tmpfs"]),
      );
      let layers = 0;
      for (const vm of usage.vms.slice(0, -1)) {
        const layer = await stat(vmPaths(fleet, vm.name).layer);
        // Booted: the guest formatted its layer and wrote to it, a little, not a copy of the base.
        expect(vm.layerBytes).toBe(layer.blocks * 512);
        expect(vm.layerBytes).toBeGreaterThan(0);
        expect(vm.layerBytes).toBeLessThan(base / 2);
        expect(layer.size).toBe(64 * 1024 ** 2);
        layers += vm.layerBytes;
      }
      expect(usage.vms[COUNT - 1]?.layerBytes).toBe(0);
      const others = usage.vms.reduce((sum, vm) => sum + vm.otherBytes, 0);
      expect(usage.totalBytes).toBe(base + layers + others);
      expect(usage.fullCopiesBytes).toBe(COUNT * base + others);
      expect(usage.ratio).toBeGreaterThan(2);
      const text = await ok("df", "-f", file);
      expect(text).toMatch(new RegExp(`^tiny\\s+${tiny.slice(0, 12)}\\s+\\S+\\s+${COUNT}$`, "m"));
      expect(text).toMatch(new RegExp(`^${TMPFS_VM}\\s+tiny\\s+tmpfs\\s+\\S+$`, "m"));
      expect(text).toMatch(
        new RegExp(`^total \\S+: bases \\S+ \\(each once\\) \\+ ${COUNT} VMs \\S+$`, "m"),
      );
    });

    it("gives each VM its planned address by DHCP, in a network namespace of the fleet's own, where VMs reach each other", async () => {
      const plan = JSON.parse((await run(["plan", "-f", file, "--json"])).stdout) as {
        name: string;
        ip: string;
      }[];
      const guest = await attach(fleet, "vm-1");
      for (const vm of plan.slice(0, 3)) {
        const other = vm.name === "vm-1" ? guest : await attach(fleet, vm.name);
        // udhcpc runs in the background from boot: wait for its lease.
        const address = await other.sh(
          "for i in $(seq 60); do ip -4 -o addr show eth0 | grep -q inet && break; sleep 1; done; ip -4 -o addr show eth0",
        );
        expect(address.out).toContain(`inet ${vm.ip}/16`);
        if (other !== guest) other.detach();
      }
      const lookup = await guest.sh("nslookup vm-2 10.77.0.1");
      expect(lookup.out).toContain(plan[1]?.ip);
      expect((await guest.sh(`ping -c 1 -W 5 ${plan[1]?.ip}`)).code).toBe(0);
      guest.detach();
      // The fleet's bridge and dnsmasq are in its own namespace; the host's has no trace of them.
      expect((await exec("ip", ["netns", "list"])).stdout).toContain(
        namespaceName({ root: state, fleet }),
      );
      await expect(exec("ip", ["link", "show", "shoal0"])).rejects.toThrow();
    });

    it("shapes the path between its groups from the fleet file: a transfer between them runs at 10 Mbit/s, one inside a group faster", async () => {
      await serve("vm-1");
      const between = await transfer("vm-3", "vm-1");
      expect(between).toBeGreaterThan(8.5);
      expect(between).toBeLessThan(11.5);
      expect(await transfer("vm-2", "vm-1")).toBeGreaterThan(15);
      const shown = JSON.parse(await ok("net", "show", "-f", file, "--json"));
      expect(shown.paths).toEqual([
        { from: "east", to: "west", rate: "10mbit" },
        { from: "west", to: "east", rate: "10mbit" },
      ]);
    });

    it("loses 5-15% of 200 pings with 10% loss set live on what one VM receives, and none once reset", async () => {
      expect(await ok("net", "set", "-f", file, "vm-4", "--direction", "in", "--loss", "10%")).toBe(
        "vm-4 (in): loss 10%\n",
      );
      const lost = await pingLoss("vm-2", "vm-4", 200);
      expect(lost).toBeGreaterThanOrEqual(0.05);
      expect(lost).toBeLessThanOrEqual(0.15);
      await ok("net", "reset", "-f", file, "vm-4");
      expect(await pingLoss("vm-2", "vm-4", 20)).toBe(0);
    });

    it("cuts the named groups apart in a partition, each still reaching itself, and heal restores both", async () => {
      await ok("net", "partition", "-f", file, "east", "west");
      expect(await reaches("vm-1", "vm-3")).toBe(false);
      expect(await reaches("vm-4", "vm-2")).toBe(false);
      expect(await reaches("vm-1", "vm-2")).toBe(true);
      expect(await reaches("vm-3", "vm-4")).toBe(true);
      // A VM in no group is cut from neither.
      expect(await reaches(TMPFS_VM, "vm-3")).toBe(true);
      expect(JSON.parse(await ok("net", "show", "-f", file, "--json")).partition).toEqual([
        "east",
        "west",
      ]);
      await ok("net", "heal", "-f", file);
      expect(await reaches("vm-1", "vm-3")).toBe(true);
      expect(await reaches("vm-4", "vm-2")).toBe(true);
    });

    it("takes a delay only where the kernel has netem, and refuses it elsewhere before anything changes", async () => {
      const before = await ok("net", "show", "-f", file, "--json");
      const args = ["net", "set", "-f", file, "--group", "east", "--to", "west", "--delay", "40ms"];
      const result = await run(args);
      if (await hasNetem(new ProcessRunner())) {
        // Proven on the Xen lab's dom0 (Debian's kernel) as well; here when this kernel has it.
        expect(result.code, result.stderr).toBe(0);
        const { out } = await onVm("vm-1", `ping -q -c 10 -i 0.2 ${ips["vm-3"]}`);
        const [, avg] = /min\/avg\/max = [\d.]+\/([\d.]+)\//.exec(out) ?? [];
        expect(Math.abs(Number(avg) - 80)).toBeLessThan(8);
        await ok("net", "reset", "-f", file);
        return;
      }
      console.warn("this kernel has no sch_netem: delay is refused here (the Xen lab measures it)");
      expect(result.code).toBe(2);
      expect(result.stderr).toContain("sch_netem");
      expect(await ok("net", "show", "-f", file, "--json")).toBe(before);
    });

    it("`cp` from a guest lands no setuid bit, FIFO, device or link, and writes nothing outside the destination", async () => {
      expect((await run(["wait", "-f", file, "vm-1", "vm-2"])).code).toBe(0);
      const planted = await run([
        "exec",
        "-f",
        file,
        "vm-1",
        "vm-2",
        "--",
        [
          "set -e; rm -rf /root/hostile; mkdir -p /root/hostile/inside; cd /root/hostile",
          "echo run-me > suid; chmod 4755 suid; chmod 2775 inside",
          "echo x > inside/sgid; chmod 2755 inside/sgid; chmod 1777 inside",
          "mkfifo fifo; mknod null c 1 3; ln -s /etc link",
          "echo from-the-guest > /etc/shoal-e2e-canary",
        ].join("; "),
      ]);
      expect(planted.code, planted.stderr).toBe(0);
      const dest = join(fleetDir(), "fetched");
      await mkdir(dest);
      const fetched = await run(["cp", "-f", file, "vm-1:/root/hostile", dest]);
      // The guest's scp itself skips what is not a file or a directory (the FIFO, the device), and
      // fails for them; what it did send has landed.
      expect(fetched.code).toBe(1);
      expect(fetched.stderr).toContain("copy on vm-1 failed: scp: /root/hostile/");
      const landed = (
        await exec("find", [dest, "-mindepth", "1", "-printf", "%P %y %#m\\n"])
      ).stdout
        .trim()
        .split("\n")
        .sort();
      expect(landed.filter((line) => !line.startsWith("hostile/link"))).toEqual([
        "hostile d 0755",
        "hostile/inside d 0777",
        "hostile/inside/sgid f 0755",
        "hostile/suid f 0755",
      ]);
      // The link was followed in the guest: the guest's /etc arrived as a plain directory.
      expect(landed).toContainEqual(expect.stringMatching(/^hostile\/link d /));
      expect(landed.every((line) => / [fd] 0[0-7]{3}$/.test(line))).toBe(true);
      expect(await readFile(join(dest, "hostile", "link", "shoal-e2e-canary"), "utf8")).toBe(
        "from-the-guest\n",
      );
      await expect(stat("/etc/shoal-e2e-canary")).rejects.toThrow();

      // A link in the destination is not followed: not for a copy from one VM, nor for each VM's own
      // directory of a copy from several.
      const outside = join(fleetDir(), "outside");
      await mkdir(outside);
      const again = join(fleetDir(), "again");
      await mkdir(join(again, "hostile"), { recursive: true });
      await symlink(outside, join(again, "hostile", "inside"));
      const refused = await run(["cp", "-f", file, "vm-1:/root/hostile", again]);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toContain("hostile/inside is a symbolic link");
      const many = join(fleetDir(), "many");
      await mkdir(many);
      await symlink(outside, join(many, "vm-2"));
      const fromBoth = await run(["cp", "-f", file, "vm-[12]:/root/hostile", many]);
      expect(fromBoth.code).toBe(1);
      expect(fromBoth.stderr).toContain("vm-2 is a symbolic link");
      expect((await stat(join(many, "vm-1", "hostile", "suid"))).mode & 0o7777).toBe(0o755);
      expect(await readdir(outside)).toEqual([]);
    });

    it("`console` types into a VM's serial console and shows its answer; `logs` has it afterwards", async () => {
      const console = spawn(
        process.execPath,
        [SHOAL, "--state-dir", state, "console", "vm-2", "-f", file],
        {
          stdio: ["pipe", "pipe", "pipe"],
        },
      );
      let seen = "";
      const answered = new Promise<void>((resolve) => {
        console.stdout.on("data", (chunk) => {
          seen += chunk;
          if (seen.includes("answer-42")) resolve();
        });
      });
      console.stdin.write("echo answer-$((6 * 7))\n");
      await answered;
      console.stdin.end();
      const code = await new Promise((resolve) => console.on("close", resolve));
      expect(code).toBe(0);
      const logs = await run(["logs", "vm-2", "--file", file]);
      expect(logs.code, logs.stderr).toBe(0);
      expect(logs.stdout).toContain("answer-42");
      expect(logs.stdout).toContain("shoal-identity: hostname=vm-2");
    });

    it("`diff` lists exactly what a VM wrote and deleted; `reset` takes it away and keeps the identity", async () => {
      const vm = "vm-3";
      const onVm = async (line: string) => {
        await ok("start", vm, "-f", file);
        await ok("wait", vm, "-f", file);
        return ok("exec", vm, "-f", file, "--", line);
      };
      const changes = async () =>
        JSON.parse(await ok("diff", vm, "-f", file, "--json")) as {
          path: string;
          change: string;
          type: string;
          size: number;
        }[];
      await ok("stop", vm, "-f", file);
      // What booting and stopping alone leave (DHCP's resolv.conf, the power button's log): not
      // the test's doing, though those files may grow by the next stop.
      const seen = new Set((await changes()).map((change) => change.path));
      await onVm(
        "echo hello > /root/greeting && mkdir -p /srv/app && head -c 3000 /dev/zero > /srv/app/blob && rm /etc/os-release && sync",
      );
      await ok("stop", vm, "-f", file);
      expect((await changes()).filter((change) => !seen.has(change.path))).toEqual([
        { path: "/etc/os-release", change: "deleted", type: "file", size: expect.any(Number) },
        { path: "/root/greeting", change: "added", type: "file", size: 6 },
        { path: "/srv", change: "added", type: "dir", size: 0 },
        { path: "/srv/app", change: "added", type: "dir", size: 0 },
        { path: "/srv/app/blob", change: "added", type: "file", size: 3000 },
      ]);
      expect(await ok("diff", vm, "-f", file)).toMatch(
        /^deleted\s+file\s+\S+\s+\/etc\/os-release$/m,
      );

      const running = await run(["reset", "vm-4", "-f", file, "--yes"]);
      expect(running.code).toBe(2);
      expect(running.stderr).toContain("VM vm-4 is running: its layer is in use");

      await ok("reset", vm, "-f", file, "--yes");
      expect(await ok("diff", vm, "-f", file)).toBe(`VM ${vm} has no changes of its own\n`);
      // Its own hostname, and the host key known_hosts holds (ssh checks it strictly).
      expect(
        await onVm(
          "hostname; ls /root/greeting /srv 2>&1; test -f /etc/os-release && echo os-release back",
        ),
      ).toMatch(
        /^vm-3: vm-3\nvm-3: .*No such file.*\nvm-3: .*No such file.*\nvm-3: os-release back\n$/,
      );
    });

    it("keeps a file written in a disk-layer VM across `down` and `up`; a tmpfs VM loses it", async () => {
      for (const vm of ["vm-1", TMPFS_VM]) {
        const guest = await attach(fleet, vm);
        expect((await guest.sh("echo kept-by-$(hostname) > /root/note; sync")).code).toBe(0);
        guest.detach();
      }
      const down = await run(["down", "-f", file]);
      expect(down.code, down.stderr).toBe(0);
      // busybox acpid answers the power button: every VM shuts down cleanly, none is forced.
      expect(
        down.stdout
          .trim()
          .split("\n")
          .slice(1)
          .map((line) => line.split(/\s+/)[1]),
      ).toEqual(Array(COUNT).fill("clean"));
      expect((await ps(file)).map((row) => row.state)).toEqual(Array(COUNT).fill("stopped"));
      expect(await qemuPidsMentioning(`${stateLayout(state).fleet(fleet).dir}/`)).toEqual([]);

      const rows = await up(file);
      expect(rows.every((row) => row.ok && row.done.join() === "start")).toBe(true);
      const disk = await attach(fleet, "vm-1");
      expect((await disk.sh("cat /root/note")).out.trim()).toBe("kept-by-vm-1");
      disk.detach();
      const tmpfs = await attach(fleet, TMPFS_VM);
      const lost = await tmpfs.sh("cat /root/note");
      expect(lost.code).not.toBe(0);
      // The tmpfs VM got its identity again at this boot.
      expect((await tmpfs.sh("hostname; cat /etc/machine-id")).out.trim().split("\n")[0]).toBe(
        TMPFS_VM,
      );
      tmpfs.detach();
    });

    it("shows a VM whose QEMU died as crashed, and `up` starts that one again, with its impairments on a new tap", async () => {
      const victim = await pidOf(fleet, "vm-3");
      const others = await pidOf(fleet, "vm-4");
      process.kill(victim, "SIGKILL");
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect((await ps(file)).find((row) => row.name === "vm-3")?.state).toBe("crashed");
      // QEMU's taps outlive their VMs; a host reboot takes them, and what tc held with them.
      await exec("ip", ["-n", namespaceName({ root: state, fleet }), "link", "del", "tap3"]);
      const rows = await up(file);
      expect(rows.filter((row) => row.done.length > 0).map((row) => [row.name, row.done])).toEqual([
        ["vm-3", ["start"]],
      ]);
      expect(await pidOf(fleet, "vm-4")).toBe(others);
      await serve("vm-1");
      const between = await transfer("vm-3", "vm-1");
      expect(between).toBeGreaterThan(8.5);
      expect(between).toBeLessThan(11.5);
    });

    it("`destroy` leaves no QEMU process, layer, socket or state entry behind", async () => {
      const result = await run(["destroy", "-f", file, "--yes"]);
      expect(result.code, result.stderr).toBe(0);
      expect(await qemuPidsMentioning(`${stateLayout(state).fleet(fleet).dir}/`)).toEqual([]);
      expect(await readdir(stateLayout(state).fleets)).not.toContain(fleet);
      expect((await exec("ip", ["netns", "list"])).stdout).not.toContain(
        namespaceName({ root: state, fleet }),
      );
      const gone = await run(["ps", "--fleet", fleet]);
      expect(gone.code).toBe(2);
      // ifb devices went with the namespace; none was made in the host's.
      expect(await listHostIfbs()).toBe(hostIfbs);
    });
  });
});

// The next three use fleets of their own, mostly one VM booting at a time.
describe.concurrent("changing the fleet file", () => {
  it("adds VMs, deletes removed ones with their layer, restarts only changed VMs, and moves VMs to a new image keeping their layers", async () => {
    const fleet = "change";
    const file = await fleetFile(fleet, "name: change\ncount: 3\nvm: { layer: { size: 64M } }\n");
    await up(file);
    const keep = await attach(fleet, "vm-1");
    expect((await keep.sh("echo before-upgrade > /root/mine; sync")).code).toBe(0);
    keep.detach();
    const untouched = await pidOf(fleet, "vm-1");

    await writeFile(
      file,
      "name: change\ncount: 4\nvm: { layer: { size: 64M } }\nvms:\n  - { name: vm-2, memory: 192M }\n",
    );
    const changed = await up(file);
    expect(changed.map((row) => [row.name, row.done, row.changes])).toEqual([
      ["vm-1", [], []],
      ["vm-2", ["recreate", "start"], ["memory"]],
      ["vm-3", [], []],
      ["vm-4", ["create", "start"], []],
    ]);
    expect(await pidOf(fleet, "vm-1")).toBe(untouched);
    const argv = JSON.parse(await readFile(vmPaths(fleet, "vm-2").qemuArgv, "utf8")) as string[];
    // With the base mapped for DAX beside the VM's memory: maxmem adds the base's size.
    expect(argv[argv.indexOf("-m") + 1]).toMatch(/^192M,maxmem=\d+M$/);

    await writeFile(
      file,
      "name: change\ncount: 2\nimage: tiny-next\nvm: { layer: { size: 64M } }\nvms:\n  - { name: vm-2, memory: 192M }\n",
    );
    const moved = await up(file);
    expect(moved.map((row) => [row.name, row.done, row.changes])).toEqual([
      ["vm-1", ["upgrade"], ["image"]],
      ["vm-2", ["upgrade"], ["image"]],
      ["vm-3", ["stop", "delete"], []],
      ["vm-4", ["stop", "delete"], []],
    ]);
    await expect(stat(stateLayout(state).fleet(fleet).vm("vm-3").dir)).rejects.toThrow();
    expect((await ps(file)).map((row) => [row.name, row.state])).toEqual([
      ["vm-1", "running"],
      ["vm-2", "running"],
    ]);
    const record = JSON.parse(await readFile(stateLayout(state).fleet(fleet).state, "utf8")) as {
      vms: Record<string, { baseId: string }>;
    };
    expect(Object.values(record.vms).map((vm) => vm.baseId)).toEqual([
      images["tiny-next"]?.id,
      images["tiny-next"]?.id,
    ]);
    const after = await attach(fleet, "vm-1");
    expect((await after.sh("cat /root/mine")).out.trim()).toBe("before-upgrade");
    after.detach();
    const log = await readFile(vmPaths(fleet, "vm-1").serialLog, "utf8");
    // The base-change policy (warn, the default) saw the layer move to the new base.
    expect(log).toContain(`now boots over ${images["tiny-next"]?.id}`);
    const destroyed = await run(["destroy", "-f", file, "--yes"]);
    expect(destroyed.code, destroyed.stderr).toBe(0);
  });
});

describe.concurrent("an upgrade to a base that does not boot", () => {
  it("stops at the first VM that does not come back, leaves the rest running on the old base, and an upgrade back repairs it", async () => {
    const fleet = "rollout";
    const file = await fleetFile(fleet, "name: rollout\ncount: 2\nvm: { layer: { size: 64M } }\n");
    await up(file);
    const mine = await attach(fleet, "vm-1");
    expect((await mine.sh("echo kept > /root/mine; sync")).code).toBe(0);
    mine.detach();
    // A kernel cut short: QEMU loads it, and it never gets as far as the union root.
    const derived = await run([
      "image",
      "derive",
      "tiny-broken",
      "--from",
      "tiny",
      "--run",
      "for k in /boot/vmlinuz-*; do head -c 1048576 $k > /tmp/k && cat /tmp/k > $k; done",
    ]);
    expect(derived.code, derived.stderr).toBe(0);
    const broken = JSON.parse((await run(["image", "inspect", "tiny-broken"])).stdout) as ImageMeta;
    const untouched = await pidOf(fleet, "vm-2");

    const failed = await run([
      "upgrade",
      "-f",
      file,
      "--image",
      "tiny-broken",
      "--timeout",
      "20",
      "--json",
    ]);
    expect(failed.code).toBe(1);
    expect(failed.stderr).toContain(
      "VM vm-1 did not come back on image tiny-broken: the upgrade stopped there",
    );
    const reports = JSON.parse(failed.stdout) as {
      name: string;
      outcome: string;
      detail?: string;
    }[];
    expect(reports.map((report) => [report.name, report.outcome])).toEqual([
      ["vm-1", "failed"],
      ["vm-2", "pending"],
    ]);
    expect(reports[0]?.detail).toBeTruthy();
    const record = JSON.parse(await readFile(stateLayout(state).fleet(fleet).state, "utf8")) as {
      vms: Record<string, { baseId: string }>;
    };
    expect(Object.values(record.vms).map((vm) => vm.baseId)).toEqual([broken.id, images.tiny?.id]);
    expect(await pidOf(fleet, "vm-2")).toBe(untouched);
    expect((await ps(file))[1]?.state).toBe("running");
    // vm-1 never came back: the start the upgrade owes it stays owed, also once it is gone.
    expect(await upgradingMarks(fleet)).toEqual({ "vm-1": true });
    process.kill(await pidOf(fleet, "vm-1"), "SIGKILL");
    await expect
      .poll(async () => (await ps(file))[0]?.state, { timeout: 20_000 })
      .not.toBe("running");

    const back = await run(["upgrade", "-f", file, "--timeout", "20", "--json"]);
    expect(back.code, back.stderr).toBe(0);
    expect(
      (JSON.parse(back.stdout) as { name: string; outcome: string }[]).map((report) => [
        report.name,
        report.outcome,
      ]),
    ).toEqual([["vm-1", "upgraded"]]);
    const again = await attach(fleet, "vm-1");
    expect((await again.sh("cat /root/mine")).out.trim()).toBe("kept");
    again.detach();

    const destroyed = await run(["destroy", "-f", file, "--yes"]);
    expect(destroyed.code, destroyed.stderr).toBe(0);
  });
});

/** The VMs whose record says an upgrade owes them a start. */
async function upgradingMarks(fleet: string): Promise<Record<string, boolean>> {
  const record = JSON.parse(await readFile(stateLayout(state).fleet(fleet).state, "utf8")) as {
    vms: Record<string, { upgrading?: boolean }>;
  };
  return Object.fromEntries(
    Object.entries(record.vms).flatMap(([name, vm]) => (vm.upgrading ? [[name, true]] : [])),
  );
}

/** Runs `shoal ARGS`, SIGKILLs it as soon as `trigger` fires, and resolves once it is dead. */
function killDuring(
  args: readonly string[],
  trigger: (stderr: string) => boolean,
  before?: () => Promise<void>,
) {
  return new Promise<string>((resolve, reject) => {
    const child = spawn(process.execPath, [SHOAL, "--state-dir", state, ...args], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (chunk) => {
      stderr += chunk;
      if (trigger(stderr)) child.kill("SIGKILL");
    });
    before?.().then(() => child.kill("SIGKILL"), reject);
    child.on("error", reject);
    child.on("close", () => resolve(stderr));
  });
}

/** Resolves when the first entry appears in `dir` (which must exist). */
function firstEntryIn(dir: string): Promise<void> {
  return new Promise((resolve) => {
    const watcher = watch(dir, () => {
      watcher.close();
      resolve();
    });
  });
}

describe.concurrent("crash safety", () => {
  const fleet = "crash";
  let file: string;

  beforeAll(async () => {
    file = await fleetFile(fleet, "name: crash\ncount: 2\nvm: { layer: { size: 64M } }\n");
  });

  afterEach(async () => {
    await run(["destroy", "-f", file, "--yes"]);
  });

  async function expectConverged(): Promise<void> {
    const rows = await up(file);
    expect(rows.every((row) => row.ok && row.state === "running")).toBe(true);
    // Exactly one QEMU per VM, each the one its pid file names; no stray VM directory or temp file.
    const pids = await qemuPidsMentioning(`${stateLayout(state).fleet(fleet).vms}/`);
    expect(pids.sort()).toEqual(
      (await Promise.all(["vm-1", "vm-2"].map((vm) => pidOf(fleet, vm)))).sort(),
    );
    expect((await readdir(stateLayout(state).fleet(fleet).vms)).sort()).toEqual(["vm-1", "vm-2"]);
    expect(
      (await readdir(stateLayout(state).fleet(fleet).dir)).filter((f) => f.includes("tmp")),
    ).toEqual([]);
    expect((await ps(file)).map((row) => row.state)).toEqual(["running", "running"]);
  }

  // Its own tests share the fleet "crash", one after another.
  // Killed between creating and starting a VM, or before creating the next: the fake backend's
  // tests (test/unit/converge.test.ts); these need real files, processes and boots.
  it.sequential.each([
    ["while it writes the first VM's files", "files"],
    ["while the first VM boots", "vm-\\d: booting"],
    ["once one VM is up", "vm-\\d: ready"],
  ])("a SIGKILLed `up` (%s) is finished by the next `up`", async (_when, point) => {
    const vms = stateLayout(state).fleet(fleet).vms;
    await mkdir(vms, { recursive: true });
    const args = ["up", "-f", file, "--workers", "1"];
    if (point === "files")
      await killDuring(
        args,
        () => false,
        () => firstEntryIn(vms),
      );
    else await killDuring(args, (stderr) => new RegExp(point).test(stderr));
    await expectConverged();
  });

  it.sequential("a SIGKILLed `destroy` is finished by the next `destroy`", async () => {
    await up(file);
    await killDuring(["destroy", "-f", file, "--yes", "--workers", "1"], (stderr) =>
      /deleted/.test(stderr),
    );
    const again = await run(["destroy", "-f", file, "--yes"]);
    expect(again.code, again.stderr).toBe(0);
    expect(await qemuPidsMentioning(`${stateLayout(state).fleet(fleet).dir}/`)).toEqual([]);
    await expect(stat(stateLayout(state).fleet(fleet).dir)).rejects.toThrow();
  });

  it.sequential("refuses a second command on a fleet while one holds its lock", async () => {
    const first = spawn(process.execPath, [SHOAL, "--state-dir", state, "up", "-f", file], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    await new Promise<void>((resolve) => first.stderr.once("data", () => resolve()));
    const second = await run(["down", "-f", file]);
    expect(second.code).toBe(3);
    expect(second.stderr).toMatch(/fleet crash is busy: shoal up \(pid \d+/);
    await new Promise((resolve) => first.on("close", resolve));
  });
});

describe("the base images", () => {
  it("are unchanged after every VM above wrote to its layer", async () => {
    for (const [name, sum] of Object.entries(baseSums)) {
      expect(await sha256(stateLayout(state).image(images[name]?.id ?? "").base)).toBe(sum);
    }
  });
});

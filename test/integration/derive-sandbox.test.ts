import { type ChildProcess, spawn } from "node:child_process";
import { mkdir, readdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ProcessRunner } from "../../src/host/runner.js";
import { committedSource, sandboxIds } from "../../src/image/derive.js";
import { Ext4Image } from "../../src/image/ext4.js";
import type { ImageMeta } from "../../src/image/store.js";
import { stateLayout } from "../../src/state/layout.js";
import { shoal } from "../helpers/cli.js";
import { useFileTempDir, useTempDirs } from "../helpers/tmp.js";
import { isRunning, sha256 } from "../helpers/vm.js";

/**
 * `image derive` runs an image's own programs, and images are untrusted: whatever they do, and
 * whatever links they hold, the host stays as it was. One hostile image (a tiny image with links
 * that lead out of it and a device file for a host disk) serves every test.
 */

const tempDir = useTempDirs();
const sharedDir = useFileTempDir("shoal-derive-");
const runner = new ProcessRunner();
/** Host files and directories the hostile image aims at. */
let host: string;
let state: string;
let loop: { device: string; backing: string; major: number; minor: number } | undefined;
let bystander: ChildProcess | undefined;
const SYSCTLS = ["/proc/sys/kernel/printk_ratelimit", "/proc/sys/net/ipv4/ip_default_ttl"];
const sysctlsBefore = new Map<string, string>();
/** Where a change that saw the host's /dev would leave a file. */
const DEV_FILE = "/dev/shoal-test-derive";

/** A relative link target that climbs out of any root and then names `path` on the host. */
const outOfRoot = (path: string) => `${"../".repeat(24)}${path.slice(1)}`;

async function ok(args: readonly string[], env: Record<string, string> = {}) {
  const result = await shoal(["--state-dir", state, ...args], { env });
  expect(result.code, result.stderr).toBe(0);
  return result;
}

async function inspect(name: string): Promise<ImageMeta> {
  return JSON.parse((await ok(["image", "inspect", name])).stdout) as ImageMeta;
}

beforeAll(async () => {
  const dir = sharedDir();
  state = join(dir, "state");
  host = join(dir, "host");
  await mkdir(join(host, "tmp-target"), { recursive: true });
  await writeFile(join(host, "resolv-target"), "original\n");
  await writeFile(join(host, "marker"), "the host's\n");
  for (const file of SYSCTLS) sysctlsBefore.set(file, await readFile(file, "utf8"));

  await ok(["image", "build", "tiny", "--from", "busybox"]);
  const tree = join(dir, "tree");
  await mkdir(tree);
  await runner.run({
    argv: [
      "debugfs",
      "-R",
      `rdump / ${tree}`,
      stateLayout(state).image((await inspect("tiny")).id).base,
    ],
  });
  // The links: DNS configuration that climbs out through /run, and a /tmp elsewhere.
  await rm(join(tree, "etc/resolv.conf"));
  await symlink(`../run/${outOfRoot(join(host, "resolv-target"))}`, join(tree, "etc/resolv.conf"));
  await rm(join(tree, "tmp"), { recursive: true });
  await symlink(outOfRoot(join(host, "tmp-target")), join(tree, "tmp"));
  // A device file for a disk of the host's: a loop device of this test's.
  const backing = join(dir, "disk");
  await writeFile(backing, Buffer.alloc(1024 * 1024));
  const { stdout } = await runner.run({ argv: ["losetup", "--find", "--show", backing] });
  const device = stdout.trim();
  const { rdev } = await stat(device);
  loop = { device, backing, major: Math.floor(rdev / 256), minor: rdev % 256 };
  await runner.run({
    argv: ["mknod", join(tree, "root/disk"), "b", String(loop.major), String(loop.minor)],
  });
  const raw = join(dir, "hostile.img");
  await runner.run({ argv: ["mkfs.ext4", "-q", "-d", tree, raw, "64M"] });
  await ok(["image", "import", "hostile", raw]);
  bystander = spawn("sleep", ["600"], { stdio: "ignore" });
}, 180_000);

afterAll(async () => {
  if (loop) await runner.run({ argv: ["losetup", "--detach", loop.device] });
  bystander?.kill("SIGKILL");
  // Put back what a derive that escaped (on a shoal without the sandbox) changed.
  await rm(DEV_FILE, { force: true });
  for (const [file, value] of sysctlsBefore) {
    if ((await readFile(file, "utf8")) !== value) await writeFile(file, value);
  }
});

describe("shoal image derive with a hostile image", () => {
  it("follows none of the image's links on the host", async () => {
    const result = await ok(["image", "derive", "hostile-2", "--from", "hostile", "--run", "true"]);
    expect(await readFile(join(host, "resolv-target"), "utf8")).toBe("original\n");
    expect(await readdir(join(host, "tmp-target"))).toEqual([]);
    expect(result.stderr).toContain(
      // The link as the image has it, made absolute.
      `the image's /etc/resolv.conf links to /run/${outOfRoot(join(host, "resolv-target"))}, not to a file in /run: the change runs without the host's DNS servers`,
    );
  });

  it("gives the change no power over the host, and what a package install does lands in the image exactly", async () => {
    if (!loop || !bystander?.pid) throw new Error("the hostile image was not made");
    const diskBefore = await sha256(loop.backing);
    const marker = join(host, "marker");
    const [ratelimit, ttl] = SYSCTLS;
    const script = join(await tempDir(), "attempts.sh");
    // Each attempt prints NAME: done or NAME: refused.
    await writeFile(
      script,
      [
        "#!/bin/sh",
        'try() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "$name: done"; else echo "$name: refused"; fi; }',
        "try write-host-disk sh -c 'echo owned > /root/disk'",
        `try make-host-disk sh -c 'mknod /root/new-disk b ${loop.major} ${loop.minor} && echo owned > /root/new-disk'`,
        `try add-to-dev sh -c 'echo owned > ${DEV_FILE}'`,
        "try mount-tmpfs mount -t tmpfs none /mnt",
        "try mount-proc mount -t proc proc /mnt",
        "try bind-mount mount --bind / /mnt",
        `try read-host-root cat /proc/1/root${marker}`,
        `try write-host-root sh -c 'echo owned > /proc/1/root${marker}'`,
        "try host-cwd ls /proc/1/cwd/",
        `try host-path cat ${marker}`,
        `try host-sysctl sh -c 'echo 17 > ${ratelimit}'`,
        `try host-net-sysctl sh -c 'echo 17 > ${ttl}'`,
        `try kill-host-process kill -9 ${bystander.pid}`,
        "try user-namespace unshare -U -r true",
        "try write-share sh -c 'echo owned > /run/shoal/script'",
        "try see-host-sys sh -c 'test -n \"$(ls -A /sys)\"'",
        "try read-host-env sh -c 'env | grep -q SHOAL_TEST_SECRET'",
        // What package installs do: owners, modes, links, and a deleted file of the base.
        "set -e",
        "echo conf > /etc/pkg.conf && chown 100:101 /etc/pkg.conf",
        "echo tool > /usr/bin/pkg-tool && chmod 4755 /usr/bin/pkg-tool",
        "ln /usr/bin/pkg-tool /usr/bin/pkg-tool2 && ln -s pkg-tool /usr/bin/pkg-link",
        "mkdir -m 1777 /var/pkg && mkfifo /var/pkg/fifo && chown 65534:65534 /var/pkg",
        "rm /etc/shells",
        "cat /proc/self/uid_map /proc/self/gid_map",
        "grep CapEff /proc/self/status",
      ].join("\n"),
    );
    const result = await ok(
      ["image", "derive", "hostile-2b", "--from", "hostile", "--script", script],
      { SHOAL_TEST_SECRET: "a token of shoal's user" },
    );
    const attempts = Object.fromEntries(
      [...result.stderr.matchAll(/^([a-z-]+): (done|refused)$/gm)].map((match) => [
        match[1],
        match[2],
      ]),
    );
    expect(attempts).toEqual(
      Object.fromEntries(
        [
          "write-host-disk",
          "make-host-disk",
          "add-to-dev",
          "mount-tmpfs",
          "mount-proc",
          "bind-mount",
          "read-host-root",
          "write-host-root",
          "host-cwd",
          "host-path",
          "host-sysctl",
          "host-net-sysctl",
          "kill-host-process",
          "user-namespace",
          "write-share",
          "see-host-sys",
          "read-host-env",
        ].map((name) => [name, "refused"]),
      ),
    );
    // Root inside is an unprivileged host user: ids 0.. inside are host ids far above 65535.
    const maps = [...result.stderr.matchAll(/^\s*0\s+(\d+)\s+65536$/gm)].map((match) =>
      Number(match[1]),
    );
    expect(maps).toHaveLength(2);
    for (const start of maps) expect(start).toBeGreaterThanOrEqual(65536);
    // And even inside it holds none of the capabilities over the system: modules (sys_module;
    // this machine's kernel has no module support, so insmod cannot show it), raw I/O, mounts,
    // ptrace, network administration, clock, reboot.
    const capEff = /^CapEff:\s+([0-9a-f]+)$/m.exec(result.stderr)?.[1];
    expect(capEff).toBeDefined();
    const effective = BigInt(`0x${capEff}`);
    for (const cap of [16, 17, 21, 19, 12, 25, 22])
      expect((effective >> BigInt(cap)) & 1n, `capability ${cap}`).toBe(0n);
    // The host is as it was.
    expect(await sha256(loop.backing)).toBe(diskBefore);
    expect(await readFile(marker, "utf8")).toBe("the host's\n");
    for (const [file, value] of sysctlsBefore) expect(await readFile(file, "utf8")).toBe(value);
    expect(await isRunning(bystander.pid)).toBe(true);
    // The new image has the owners and modes the change gave, not the sandbox's host ids.
    const image = new Ext4Image(
      runner,
      stateLayout(state).image((await inspect("hostile-2b")).id).base,
    );
    const entries = async (dir: string) =>
      Object.fromEntries(((await image.list(dir)) ?? []).map((entry) => [entry.name, entry]));
    const etc = await entries("/etc");
    expect(etc["pkg.conf"]).toMatchObject({ owner: "100:101", mode: 0o100644 });
    expect(etc.shells).toBeUndefined();
    expect(etc.passwd).toMatchObject({ owner: "0:0" });
    const bin = await entries("/usr/bin");
    expect(bin["pkg-tool"]).toMatchObject({ owner: "0:0", mode: 0o104755 });
    expect(bin["pkg-tool2"]?.inode).toBe(bin["pkg-tool"]?.inode);
    expect(bin["pkg-link"]?.mode).toBe(0o120777);
    expect((await entries("/var")).pkg).toMatchObject({ owner: "65534:65534", mode: 0o041777 });
    expect((await entries("/var/pkg")).fifo?.mode).toBe(0o010644);
    expect(await image.list("/root/new-disk")).toBeUndefined();
  });
});

describe("the read-only views of image commit", () => {
  it("refuse a layer whose upper directory is a link out of it", async () => {
    const dir = await tempDir();
    const secret = join(dir, "host-secret");
    await mkdir(secret);
    await writeFile(join(secret, "key"), "the host's secret\n");
    const tree = join(dir, "layer");
    await mkdir(join(tree, "work"), { recursive: true });
    await symlink(secret, join(tree, "upper"));
    const layer = join(dir, "layer.img");
    await runner.run({ argv: ["mkfs.ext4", "-q", "-d", tree, layer, "16M"] });
    const staging = join(dir, "staging");
    await mkdir(staging);
    const base = stateLayout(state).image((await inspect("tiny")).id).base;
    const made = await committedSource(runner, staging, base, layer).then(
      (raw) => raw,
      (error: unknown) => error,
    );
    expect(String(made)).toContain(`the layer ${layer} has no upper directory`);
    expect(await readdir(staging)).not.toContain("raw.img");
  });
});

describe("the sandbox's ids", () => {
  it("are root's subordinate ids above the host's users; without them derive says how to set them aside", async () => {
    const file = join(await tempDir(), "subuid");
    await writeFile(file, "alice:100000:65536\nroot:0:65536\n");
    const error = await sandboxIds({ uid: file, gid: "/etc/subgid" }).catch((e: unknown) => e);
    expect(error).toMatchObject({
      message: `image derive runs the image's programs as an unprivileged host user: root needs 65536 subordinate ids above 65535 in ${file} and /etc/subgid`,
      hint: "run scripts/setup, or add a line such as root:1879048192:65536 to both",
    });
  });
});

import { chmod, mkdir, readdir, readFile, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { formatSize } from "../../src/core/size.js";
import { ProcessRunner } from "../../src/host/runner.js";
import { Ext4Image } from "../../src/image/ext4.js";
import type { ImageMeta } from "../../src/image/store.js";
import {
  createLayer,
  listLayerChanges,
  readLayerFile,
  upgradeConflicts,
} from "../../src/layer/layer.js";
import { stateLayout } from "../../src/state/layout.js";
import { emptyRecord, writeFleetRecord } from "../../src/state/store.js";
import { shoal } from "../helpers/cli.js";
import { createdRecord, fleetOf } from "../helpers/fleet.js";
import { useFileTempDir, useTempDirs } from "../helpers/tmp.js";
import { sha256 } from "../helpers/vm.js";

/** Images and layers with the real tools (mkfs.ext4, debugfs, qemu-img, tar, cpio), no VM. */

const tempDir = useTempDirs();
const sharedDir = useFileTempDir("shoal-images-");
const runner = new ProcessRunner();
let sharedState: string;
let tiny: ImageMeta;
let tinyTree: string;

async function freshState(): Promise<string> {
  return join(await tempDir(), "state");
}

async function inspect(state: string, name: string): Promise<ImageMeta> {
  const result = await shoal(["--state-dir", state, "image", "inspect", name]);
  expect(result.code, result.stderr).toBe(0);
  return JSON.parse(result.stdout) as ImageMeta;
}

/** What is under images/ besides named images: nothing may be left by a failed build. */
async function leftovers(state: string): Promise<string[]> {
  const entries = await readdir(join(state, "images")).catch(() => [] as string[]);
  return entries.filter((entry) => entry.startsWith(".staging"));
}

const buildTiny = () =>
  shoal(["--state-dir", sharedState, "image", "build", "tiny", "--from", "busybox"]);

beforeAll(async () => {
  sharedState = sharedDir();
  const built = await buildTiny();
  expect(built.code, built.stderr).toBe(0);
  tiny = await inspect(sharedState, "tiny");
  // The tiny image's tree, for imports in other formats.
  tinyTree = join(sharedState, "tree");
  await mkdir(tinyTree);
  await runner.run({
    argv: ["debugfs", "-R", `rdump / ${tinyTree}`, stateLayout(sharedState).image(tiny.id).base],
  });
}, 120_000);

describe("shoal image build --from busybox", () => {
  it("stores a sealed, read-only image named by its sha256, with the host's kernel and shoal's initramfs", async () => {
    const paths = stateLayout(sharedState).image(tiny.id);
    expect(tiny.id).toBe(await sha256(paths.base));
    expect(tiny).toMatchObject({
      name: "tiny",
      source: "busybox",
      boot: "shoal-initramfs",
      size: (await stat(paths.base)).size,
    });
    const hostKernels = (await readdir("/boot")).filter((name) => name.startsWith("vmlinuz-"));
    expect(hostKernels).toContain(`vmlinuz-${tiny.kernelVersion}`);
    for (const file of [paths.base, paths.kernel, paths.initrd, paths.meta]) {
      expect((await stat(file)).mode & 0o777, file).toBe(0o444);
    }
    // By digest: vitest's diffing comparison of two 8 MB buffers takes minutes on a busy machine.
    expect(await sha256(paths.kernel)).toBe(await sha256(`/boot/vmlinuz-${tiny.kernelVersion}`));
    const { stdout } = await runner.run({
      argv: ["sh", "-c", `zcat ${paths.initrd} | cpio -t --quiet`],
    });
    const files = stdout.split("\n");
    for (const file of [
      "init",
      "lib/shoal/union-root.sh",
      "bin/busybox",
      "lib/shoal/bin/mke2fs",
      "lib/shoal/bin/blkid",
      "dev/console",
    ])
      expect(files, file).toContain(file);
    for (const module of [
      "virtio_blk.ko",
      "xen-blkfront.ko",
      "ext4.ko",
      "overlay.ko",
      "crc32c_generic.ko",
      "virtio_balloon.ko",
      "virtio_pmem.ko",
      "nd_pmem.ko",
    ]) {
      expect(
        files.some((file) => file.endsWith(`/${module}`)),
        module,
      ).toBe(true);
    }
    // The base can be mapped into QEMU guests for DAX: 4 KiB blocks, whole 2 MiB.
    const base = new Ext4Image(runner, paths.base);
    expect(await base.blockSize()).toBe(4096);
    expect(tiny.size % (2 * 1024 * 1024)).toBe(0);
    expect(tiny.dax).toEqual({ capable: true });
    // The host's dropbear and scp, with every library they load, for `shoal ssh`, `exec` and `cp`.
    for (const [dir, name] of [
      ["/usr/sbin", "dropbear"],
      ["/usr/bin", "scp"],
      ["/lib64", "ld-linux-x86-64.so.2"],
      ["/lib/x86_64-linux-gnu", "libtomcrypt.so.1"],
    ]) {
      expect(
        (await base.list(dir ?? "/"))?.map((entry) => entry.name),
        name,
      ).toContain(name);
    }
  });

  it("lists, inspects and refuses a second image of the same name", async () => {
    const list = await shoal(["--state-dir", sharedState, "image", "ls", "--json"]);
    expect((JSON.parse(list.stdout) as ImageMeta[]).map((image) => image.name)).toContain("tiny");
    const table = await shoal(["--state-dir", sharedState, "image", "ls"]);
    expect(table.stdout).toMatch(
      new RegExp(
        `^tiny +${tiny.id.slice(0, 12)} +${formatSize(tiny.size)} +${tiny.kernelVersion} +busybox +\\S+ +dax$`,
        "m",
      ),
    );
    const again = await buildTiny();
    expect(again.code).toBe(2);
    expect(again.stderr).toBe(
      "shoal: an image named tiny exists already; remove it with `shoal image rm tiny` or choose another name\n",
    );
  });
});

describe("shoal image build with bad options", () => {
  it("refuses them with a hint and makes nothing", async () => {
    const state = await freshState();
    const cases: [string[], string][] = [
      [
        ["--from", "centos:9"],
        "shoal: --from centos:9 is not a source shoal knows; use busybox or debian:SUITE with SUITE one of bookworm\n",
      ],
      [
        ["--from", "debian:sid"],
        "shoal: --from debian:sid is not a source shoal knows; use busybox or debian:SUITE with SUITE one of bookworm\n",
      ],
      [
        ["--from", "busybox", "--include", "curl"],
        "shoal: --include and --hook go with --from debian:SUITE only\n",
      ],
      [
        ["--from", "debian:bookworm", "--hook", "dracut"],
        "shoal: --hook dracut is not known; the only hook is initramfs-tools\n",
      ],
      [
        ["--from", "debian:bookworm", "--include", "curl;rm"],
        'shoal: "curl;rm" is not a Debian package name; give names like curl,iperf3\n',
      ],
    ];
    for (const [options, message] of cases) {
      const result = await shoal(["--state-dir", state, "image", "build", "x", ...options]);
      expect(result.code, options.join(" ")).toBe(2);
      expect(result.stderr).toBe(message);
      expect(await leftovers(state)).toEqual([]);
    }
  });
});

describe("shoal image import", () => {
  it("takes a raw ext4 image, a directory, a tarball and a qcow2", async () => {
    const state = await freshState();
    const work = await tempDir();
    const raw = join(work, "raw.img");
    await runner.run({ argv: ["cp", stateLayout(sharedState).image(tiny.id).base, raw] });
    await runner.run({ argv: ["tar", "-C", tinyTree, "-czf", join(work, "tree.tar.gz"), "."] });
    await runner.run({
      argv: ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, join(work, "disk.qcow2")],
    });
    const sources = {
      raw: raw,
      dir: tinyTree,
      tar: join(work, "tree.tar.gz"),
      qcow2: join(work, "disk.qcow2"),
    };
    for (const [name, path] of Object.entries(sources)) {
      const result = await shoal(["--state-dir", state, "image", "import", name, path]);
      expect(result.code, `${name}: ${result.stderr}`).toBe(0);
      const meta = await inspect(state, name);
      expect(meta.kernelVersion).toBe(tiny.kernelVersion);
      expect(
        await new Ext4Image(runner, stateLayout(state).image(meta.id).base).readFile(
          "/etc/os-release",
        ),
      ).toContain("shoal tiny");
    }
    // The same bytes are the same image: raw and qcow2 hold the sealed tiny image unchanged.
    expect((await inspect(state, "raw")).id).toBe(tiny.id);
    expect((await inspect(state, "qcow2")).id).toBe(tiny.id);
    expect((await inspect(state, "dir")).dax).toEqual({ capable: true });
  });

  it("keeps a base that cannot be mapped for DAX a disk, and says why", async () => {
    const state = await freshState();
    const small = join(await tempDir(), "small-blocks.img");
    await runner.run({
      argv: ["mkfs.ext4", "-q", "-b", "1024", "-E", "root_owner=0:0", "-d", tinyTree, small, "80M"],
    });
    const result = await shoal(["--state-dir", state, "image", "import", "old", small]);
    expect(result.code, result.stderr).toBe(0);
    const why = "its ext4 blocks are 1024 bytes; DAX needs 4096 (bases shoal builds have them)";
    expect(result.stdout).toContain(`base disk (${why})`);
    expect((await inspect(state, "old")).dax).toEqual({ capable: false, refusal: why });
    const table = await shoal(["--state-dir", state, "image", "ls"]);
    expect(table.stdout).toMatch(/^old .* disk \(its ext4 blocks are 1024 bytes;/m);
  });

  it("refuses what it cannot use, with a clear error and nothing left behind", async () => {
    const state = await freshState();
    const work = await tempDir();
    await writeFile(join(work, "notes.txt"), "not an image\n");
    const empty = join(work, "empty");
    await mkdir(empty);
    await writeFile(join(empty, "hello"), "hi\n");
    const noOverlay = join(work, "no-overlay");
    await mkdir(join(noOverlay, "boot"), { recursive: true });
    await mkdir(join(noOverlay, "lib/modules/6.1.0-1-amd64"), { recursive: true });
    await writeFile(join(noOverlay, "boot/vmlinuz-6.1.0-1-amd64"), "kernel");
    await writeFile(
      join(noOverlay, "lib/modules/6.1.0-1-amd64/modules.dep"),
      "kernel/fs/ext4/ext4.ko:\n",
    );
    const cases: [string, string][] = [
      [
        join(work, "missing.img"),
        `shoal: no such file or directory: ${join(work, "missing.img")}\n`,
      ],
      [
        join(work, "notes.txt"),
        `shoal: ${join(work, "notes.txt")} is not a filesystem image; import takes a raw ext4 image, a directory, a tarball or a qcow2\n`,
      ],
      [
        empty,
        "shoal: no kernel found in image bad: it needs /boot/vmlinuz-VERSION and /lib/modules/VERSION; install a kernel in the image (linux-image-amd64 on Debian)\n",
      ],
      [
        noOverlay,
        "shoal: the kernel 6.1.0-1-amd64 in image bad has no overlay support; shoal needs overlayfs, ext4 and virtio or Xen block drivers\n",
      ],
    ];
    for (const [path, message] of cases) {
      const result = await shoal(["--state-dir", state, "image", "import", "bad", path]);
      expect(result.code, result.stderr).toBe(2);
      expect(
        result.stderr
          .split("\n")
          .filter((line) => line.startsWith("shoal:"))
          .join("\n"),
      ).toBe(message.trim());
      expect(await leftovers(state)).toEqual([]);
      expect((await shoal(["--state-dir", state, "image", "ls", "--json"])).stdout.trim()).toBe(
        "[]",
      );
    }
  });

  it("refuses a bad image name before doing anything", async () => {
    const result = await shoal([
      "--state-dir",
      await freshState(),
      "image",
      "import",
      "../x",
      tinyTree,
    ]);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('shoal: "../x" is not an image name');
  });
});

describe("sealing", () => {
  it("removes exactly the per-machine identity files and empties the machine-id", async () => {
    const state = await freshState();
    const tree = join(await tempDir(), "tree");
    await runner.run({ argv: ["cp", "-a", `${tinyTree}/.`, tree] });
    const identity = {
      "etc/ssh/ssh_host_ed25519_key": "private",
      "etc/ssh/ssh_host_ed25519_key.pub": "public",
      "etc/ssh/ssh_host_rsa_key": "private",
      "etc/ssh/sshd_config": "kept",
      "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
      "etc/hostname": "golden\n",
      "var/lib/dhcp/dhclient.eth0.leases": "lease",
      "var/lib/systemd/random-seed": "seed",
      "var/lib/urandom/random-seed": "seed",
      "etc/udev/rules.d/70-persistent-net.rules": "rules",
    };
    for (const [path, content] of Object.entries(identity)) {
      await mkdir(join(tree, path, ".."), { recursive: true });
      await writeFile(join(tree, path), content);
    }
    await mkdir(join(tree, "var/lib/dbus"), { recursive: true });
    await symlink("/etc/machine-id", join(tree, "var/lib/dbus/machine-id"));
    const result = await shoal(["--state-dir", state, "image", "import", "golden", tree]);
    expect(result.code, result.stderr).toBe(0);
    const meta = await inspect(state, "golden");
    expect(meta.sealed).toEqual({
      removed: [
        "/etc/hostname",
        "/etc/ssh/ssh_host_ed25519_key",
        "/etc/ssh/ssh_host_ed25519_key.pub",
        "/etc/ssh/ssh_host_rsa_key",
        "/etc/udev/rules.d/70-persistent-net.rules",
        "/var/lib/dhcp/dhclient.eth0.leases",
        "/var/lib/systemd/random-seed",
        "/var/lib/urandom/random-seed",
      ],
      emptied: ["/etc/machine-id"],
    });
    const image = new Ext4Image(runner, stateLayout(state).image(meta.id).base);
    expect(await image.readFile("/etc/machine-id")).toBe("");
    expect(await image.readFile("/etc/ssh/sshd_config")).toBe("kept");
    expect((await image.list("/etc/ssh"))?.map((entry) => entry.name)).toEqual(["sshd_config"]);
    expect((await image.list("/var/lib/dbus"))?.map((entry) => entry.name)).toEqual(["machine-id"]);
  });
});

describe("shoal image rm", () => {
  it("is refused while a fleet uses the image, and removes it afterwards", async () => {
    const state = await freshState();
    expect((await shoal(["--state-dir", state, "image", "import", "base", tinyTree])).code).toBe(0);
    const meta = await inspect(state, "base");
    const fleet = fleetOf("name: lab\nimage: base\ncount: 1\n");
    const record = createdRecord(fleet);
    await writeFleetRecord(stateLayout(state), record);
    const refused = await shoal(["--state-dir", state, "image", "rm", "base"]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toBe(
      "shoal: image base is used by fleet lab; destroy those fleets, or move them to another image, first\n",
    );
    await writeFleetRecord(stateLayout(state), emptyRecord(fleet));
    expect((await shoal(["--state-dir", state, "image", "rm", "base"])).code).toBe(0);
    expect(await readdir(join(state, "images"))).not.toContain(meta.id);
    expect((await shoal(["--state-dir", state, "image", "inspect", "base"])).stderr).toBe(
      "shoal: no image named base; `shoal image ls` lists the images; `shoal image build` makes one\n",
    );
  });
});

describe("an image stored but never named", () => {
  it("is removed by the next image command, as a shoal killed between the two steps leaves it", async () => {
    const state = await freshState();
    expect((await shoal(["--state-dir", state, "image", "import", "first", tinyTree])).code).toBe(
      0,
    );
    const orphan = join(state, "images", "f".repeat(64));
    await mkdir(orphan);
    await writeFile(join(orphan, "base.img"), "left behind");
    expect((await shoal(["--state-dir", state, "image", "import", "second", tinyTree])).code).toBe(
      0,
    );
    const entries = await readdir(join(state, "images"));
    expect(entries).not.toContain("f".repeat(64));
    expect(entries).toContain((await inspect(state, "first")).id);
  });
});

describe("an image whose record was damaged", () => {
  it("is reported as such, and can still be removed", async () => {
    const state = await freshState();
    expect((await shoal(["--state-dir", state, "image", "import", "base", tinyTree])).code).toBe(0);
    const meta = stateLayout(state).image((await inspect(state, "base")).id).meta;
    await chmod(meta, 0o644);
    await writeFile(meta, "{ not json");
    const damaged = await shoal(["--state-dir", state, "image", "inspect", "base"]);
    expect(damaged.code).toBe(1);
    expect(damaged.stderr).toBe(
      `shoal: the record of image base (${meta}) is missing or unreadable; remove the image with \`shoal image rm base\` and make it again\n`,
    );
    expect((await shoal(["--state-dir", state, "image", "rm", "base"])).code).toBe(0);
    expect(await readdir(join(state, "images", "by-name"))).toEqual([]);
  });
});

describe("layers on the host", () => {
  it("are created sparse: no disk used until the VM writes", async () => {
    const layer = join(await tempDir(), "layer.img");
    await createLayer(layer, 1024 ** 3);
    const info = await stat(layer);
    expect(info.size).toBe(1024 ** 3);
    expect(info.blocks * 512).toBeLessThan(1024 * 1024);
    expect(info.mode & 0o777).toBe(0o600);
    await expect(createLayer(layer, 1024)).rejects.toThrow(/EEXIST/);
  });

  it("show what the VM added, changed, deleted and replaced, without booting it", async () => {
    const base = stateLayout(sharedState).image(tiny.id).base;
    const tree = join(await tempDir(), "layer");
    for (const dir of ["upper/root", "upper/etc/init.d", "upper/opt/app", "work", "shoal"])
      await mkdir(join(tree, dir), { recursive: true });
    await writeFile(join(tree, "upper/root/notes"), "mine\n");
    await writeFile(join(tree, "upper/etc/hosts"), "127.0.0.1 localhost changed\n");
    await writeFile(join(tree, "upper/etc/init.d/rcS"), "#!/bin/sh\n");
    await writeFile(join(tree, "upper/opt/app/run"), "x");
    await runner.run({ argv: ["mknod", join(tree, "upper/etc/os-release"), "c", "0", "0"] });
    const layer = join(tree, "..", "layer.img");
    await runner.run({ argv: ["mkfs.ext4", "-q", "-d", tree, layer, "16M"] });
    await new Ext4Image(runner, layer).edit([
      'ea_set "/upper/etc/init.d" trusted.overlay.opaque y',
    ]);
    expect(await readLayerFile(runner, layer, "/root/notes")).toBe("mine\n");
    expect(await readLayerFile(runner, layer, "/etc/passwd")).toBeUndefined();
    expect(await listLayerChanges(runner, layer, base)).toEqual([
      { path: "/etc/hosts", change: "modified", type: "file", size: 28 },
      { path: "/etc/init.d", change: "replaced", type: "dir", size: 0 },
      { path: "/etc/init.d/rcS", change: "added", type: "file", size: 10 },
      { path: "/etc/os-release", change: "deleted", type: "file", size: 67 },
      { path: "/opt", change: "added", type: "dir", size: 0 },
      { path: "/opt/app", change: "added", type: "dir", size: 0 },
      { path: "/opt/app/run", change: "added", type: "file", size: 1 },
      { path: "/root/notes", change: "added", type: "file", size: 5 },
    ]);
  });
});

describe("shoal's initramfs", () => {
  it("carries compressed modules decompressed, so busybox can load them, and leaves out a balloon the kernel lacks", async () => {
    const state = await freshState();
    const tree = join(await tempDir(), "tree");
    await runner.run({ argv: ["cp", "-a", `${tinyTree}/.`, tree] });
    const modules = `lib/modules/${tiny.kernelVersion}`;
    await runner.run({ argv: ["xz", join(tree, modules, "kernel/fs/overlayfs/overlay.ko")] });
    const dep = await readFile(join(tree, modules, "modules.dep"), "utf8");
    await writeFile(
      join(tree, modules, "modules.dep"),
      dep
        .replace("overlayfs/overlay.ko:", "overlayfs/overlay.ko.xz:")
        .split("\n")
        .filter((line) => !line.includes("/virtio_balloon.ko:"))
        .join("\n"),
    );
    const result = await shoal(["--state-dir", state, "image", "import", "xz", tree]);
    expect(result.code, result.stderr).toBe(0);
    const initrd = stateLayout(state).image((await inspect(state, "xz")).id).initrd;
    const { stdout: list } = await runner.run({
      argv: ["sh", "-c", `zcat ${initrd} | cpio -t --quiet`],
    });
    expect(list).toContain(`${modules}/kernel/fs/overlayfs/overlay.ko\n`);
    expect(list).not.toContain("overlay.ko.xz");
    const { stdout: order } = await runner.run({
      argv: ["sh", "-c", `zcat ${initrd} | cpio -i --quiet --to-stdout lib/shoal/modules`],
    });
    expect(order).toContain(`${tiny.kernelVersion}/kernel/fs/overlayfs/overlay.ko\n`);
    expect(order).not.toContain("virtio_balloon");
    const { stdout: tinyOrder } = await runner.run({
      argv: [
        "sh",
        "-c",
        `zcat ${stateLayout(sharedState).image(tiny.id).initrd} | cpio -i --quiet --to-stdout lib/shoal/modules`,
      ],
    });
    expect(tinyOrder).toMatch(/\/virtio_balloon\.ko\n/);
  });
});

describe("shoal image derive", () => {
  /** A state directory holding a copy of the shared tiny image, to derive from. */
  async function stateWithTiny(): Promise<string> {
    const state = await freshState();
    await mkdir(state, { recursive: true });
    await runner.run({ argv: ["cp", "-a", join(sharedState, "images"), join(state, "images")] });
    return state;
  }

  const mountsUnder = async (dir: string) =>
    (await readFile("/proc/self/mountinfo", "utf8"))
      .split("\n")
      .filter((line) => line.includes(dir));

  it("runs a command in a copy of the base and seals the result; the old base is untouched", async () => {
    const state = await stateWithTiny();
    const result = await shoal([
      "--state-dir",
      state,
      "image",
      "derive",
      "tiny-plus",
      "--from",
      "tiny",
      "--run",
      "echo derived > /etc/derived && rm /etc/os-release && echo running-inside-$(cat /proc/1/comm >/dev/null && echo chroot)",
    ]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toContain("running-inside-chroot");
    const derived = await inspect(state, "tiny-plus");
    expect(derived.id).not.toBe(tiny.id);
    expect(derived.source).toMatch(/^tiny \([0-9a-f]{12}\) \+ --run echo derived/);
    const base = new Ext4Image(runner, stateLayout(state).image(derived.id).base);
    expect(await base.readFile("/etc/derived")).toBe("derived\n");
    expect(await base.readFile("/etc/os-release")).toBeUndefined();
    // Everything else is the old base's.
    expect(await base.readFile("/etc/inittab")).toBe(
      await new Ext4Image(runner, stateLayout(state).image(tiny.id).base).readFile("/etc/inittab"),
    );
    expect(await sha256(stateLayout(state).image(tiny.id).base)).toBe(
      await sha256(stateLayout(sharedState).image(tiny.id).base),
    );
    expect(await mountsUnder(state)).toEqual([]);
    expect(await leftovers(state)).toEqual([]);
  });

  it("runs a script file, which does not stay in the image", async () => {
    const state = await stateWithTiny();
    const script = join(await tempDir(), "change.sh");
    await writeFile(script, "#!/bin/sh\nset -e\necho scripted > /etc/scripted\n");
    const result = await shoal([
      "--state-dir",
      state,
      "image",
      "derive",
      "tiny-scripted",
      "--from",
      "tiny",
      "--script",
      script,
    ]);
    expect(result.code, result.stderr).toBe(0);
    const base = new Ext4Image(
      runner,
      stateLayout(state).image((await inspect(state, "tiny-scripted")).id).base,
    );
    expect(await base.readFile("/etc/scripted")).toBe("scripted\n");
    expect(await base.list("/run")).toEqual([]);
    expect(await base.list("/tmp")).toEqual([]);
  });

  it("ends what the command left running, and keeps the host's resolver out of its reach", async () => {
    const state = await stateWithTiny();
    const resolver = await readFile("/etc/resolv.conf", "utf8");
    const started = Date.now();
    const result = await shoal([
      "--state-dir",
      state,
      "image",
      "derive",
      "tiny-daemon",
      "--from",
      "tiny",
      "--run",
      "sleep 600 & echo nameserver 192.0.2.53 > /etc/resolv.conf; echo left-running",
    ]);
    expect(result.code, result.stderr).toBe(0);
    expect(Date.now() - started).toBeLessThan(60_000);
    const sleepers = await runner.run({ argv: ["pgrep", "-f", "^sleep 600$"], okCodes: [1] });
    expect(sleepers.stdout).toBe("");
    expect(await readFile("/etc/resolv.conf", "utf8")).toBe(resolver);
    expect(await mountsUnder(state)).toEqual([]);
  });

  it("makes no image when the command fails, and refuses unclear requests", async () => {
    const state = await stateWithTiny();
    const derive = (...args: string[]) =>
      shoal(["--state-dir", state, "image", "derive", "broken", "--from", "tiny", ...args]);
    const failed = await derive("--run", "echo trying; exit 3");
    expect(failed.code).toBe(1);
    expect(failed.stderr).toContain(
      "shoal: the change failed in the copy of the image (exit code 3); no image was made",
    );
    expect(failed.stderr).toContain("trying");
    expect((await shoal(["--state-dir", state, "image", "inspect", "broken"])).code).toBe(2);
    expect(await leftovers(state)).toEqual([]);
    expect(await mountsUnder(state)).toEqual([]);
    expect((await derive()).code).toBe(2);
    expect((await derive("--run", "true", "--script", "/etc/hostname")).code).toBe(2);
    const missing = await derive("--script", "/nonexistent/script");
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain("cannot read script /nonexistent/script");
  });
});

describe("upgrade conflicts", () => {
  it("are the VM's changes that hide files the new base changed", async () => {
    const state = await freshState();
    await mkdir(state, { recursive: true });
    await runner.run({ argv: ["cp", "-a", join(sharedState, "images"), join(state, "images")] });
    const derived = await shoal([
      "--state-dir",
      state,
      "image",
      "derive",
      "tiny-next",
      "--from",
      "tiny",
      "--run",
      "echo '# next' >> /etc/inittab && echo new > /etc/motd && rm /etc/shells && echo same > /etc/same && echo new > /mnt/from-base && chown 1:1 /etc/group",
    ]);
    expect(derived.code, derived.stderr).toBe(0);
    const next = await inspect(state, "tiny-next");
    const tree = join(await tempDir(), "layer");
    for (const dir of ["upper/etc", "upper/root", "work", "shoal"])
      await mkdir(join(tree, dir), { recursive: true });
    await writeFile(join(tree, "upper/etc/inittab"), "::sysinit:/bin/mine\n");
    await writeFile(join(tree, "upper/etc/motd"), "the VM's own\n");
    await writeFile(join(tree, "upper/etc/shells"), "/bin/sh\n/bin/ash\n");
    await writeFile(join(tree, "upper/root/notes"), "mine\n");
    await writeFile(join(tree, "upper/etc/group"), "root:x:0:\n");
    for (const deleted of ["etc/os-release", "mnt", "lib64"])
      await runner.run({ argv: ["mknod", join(tree, "upper", deleted), "c", "0", "0"] });
    const layer = join(tree, "..", "layer.img");
    await runner.run({ argv: ["mkfs.ext4", "-q", "-d", tree, layer, "16M"] });
    const conflicts = await upgradeConflicts(
      runner,
      layer,
      stateLayout(state).image(tiny.id).base,
      stateLayout(state).image(next.id).base,
      join(await tempDir(), "scratch"),
    );
    // inittab: changed in both; motd: added in both; shells: kept by the VM, removed by the base;
    // group: only its owner changed in the base; /mnt: deleted by the VM, a file added below it.
    // Not: the VM's own notes, os-release and /lib64, deleted by the VM and the same in both bases.
    expect(conflicts.map((change) => [change.path, change.change])).toEqual([
      ["/etc/group", "modified"],
      ["/etc/inittab", "modified"],
      ["/etc/motd", "added"],
      ["/etc/shells", "modified"],
      ["/mnt", "deleted"],
    ]);
  });
});

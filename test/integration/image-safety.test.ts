import {
  chmod,
  chown,
  lstat,
  mkdir,
  readdir,
  readFile,
  rm,
  stat,
  symlink,
  writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { pack } from "tar-stream";
import { beforeAll, describe, expect, it } from "vitest";
import { ProcessRunner } from "../../src/host/runner.js";
import { Ext4Image } from "../../src/image/ext4.js";
import type { ImageMeta } from "../../src/image/store.js";
import { stateLayout } from "../../src/state/layout.js";
import { SHOAL, shoal } from "../helpers/cli.js";
import { useFileTempDir, useTempDirs } from "../helpers/tmp.js";

/**
 * Images are untrusted input: nothing in one (a path in modules.dep, a link, a qcow2's backing
 * file, a tarball's members) may reach a host file outside the image store's staging directory,
 * which only root can enter. Real tools, no VM.
 */

const tempDir = useTempDirs();
const sharedDir = useFileTempDir("shoal-image-safety-");
const runner = new ProcessRunner();
let sharedState: string;
let tiny: ImageMeta;
let tinyTree: string;
let modules: string;

async function inspect(state: string, name: string): Promise<ImageMeta> {
  const result = await shoal(["--state-dir", state, "image", "inspect", name]);
  expect(result.code, result.stderr).toBe(0);
  return JSON.parse(result.stdout) as ImageMeta;
}

/** Nothing stored and nothing left under images/ by a refused import. */
async function expectNothingStored(state: string): Promise<void> {
  const entries = await readdir(join(state, "images")).catch(() => [] as string[]);
  expect(entries.filter((entry) => entry !== "by-name")).toEqual([]);
  expect(await readdir(join(state, "images", "by-name")).catch(() => [])).toEqual([]);
}

/** A copy of the tiny image's tree to poison. */
async function tinyCopy(): Promise<string> {
  const tree = join(await tempDir(), "tree");
  await runner.run({ argv: ["cp", "-a", `${tinyTree}/.`, tree] });
  return tree;
}

/**
 * A modules.dep whose overlay module needs `file` (an absolute host path) by way of `..`: shoal
 * of today copies the image's file of that name to the host's.
 */
const climbingTo = (dep: string, file: string) =>
  dep.replace(
    /^kernel\/fs\/overlayfs\/overlay\.ko:.*$/m,
    `kernel/fs/overlayfs/overlay.ko: ${"../".repeat(30)}${file.slice(1)}`,
  );

/** The line of modules.dep that names the overlay module. */
const overlayLine = (dep: string) =>
  dep.split("\n").findIndex((line) => line.startsWith("kernel/fs/overlayfs/overlay.ko:")) + 1;

beforeAll(async () => {
  sharedState = sharedDir();
  const built = await shoal([
    "--state-dir",
    sharedState,
    "image",
    "build",
    "tiny",
    "--from",
    "busybox",
  ]);
  expect(built.code, built.stderr).toBe(0);
  tiny = await inspect(sharedState, "tiny");
  modules = `lib/modules/${tiny.kernelVersion}`;
  tinyTree = join(sharedState, "tree");
  await mkdir(tinyTree);
  await runner.run({
    argv: ["debugfs", "-R", `rdump / ${tinyTree}`, stateLayout(sharedState).image(tiny.id).base],
  });
}, 120_000);

describe("an image whose modules.dep climbs out of /lib/modules", () => {
  it("is refused, naming the entry, and nothing lands outside the image", async () => {
    const state = join(await tempDir(), "state");
    const outside = await tempDir();
    const target = join(outside, "owned");
    const tree = await tinyCopy();
    await mkdir(join(tree, outside), { recursive: true });
    await writeFile(join(tree, target), "#!/bin/sh\necho owned\n");
    await chmod(join(tree, target), 0o4777);
    const dep = join(tree, modules, "modules.dep");
    const original = await readFile(dep, "utf8");
    await writeFile(dep, climbingTo(original, target));
    const result = await shoal(["--state-dir", state, "image", "import", "evil", tree]);
    expect(result.code, result.stderr).toBe(2);
    expect(result.stderr).toContain(
      `shoal: /${modules}/modules.dep in image evil, line ${overlayLine(original)}: "${"../".repeat(30)}${target.slice(1)}" is not a module path`,
    );
    expect(await readdir(outside)).toEqual([]);
    await expectNothingStored(state);
  });

  it("is refused when a VM's layer edited it, at `image commit`", async () => {
    const state = join(await tempDir(), "state");
    await mkdir(state);
    await runner.run({ argv: ["cp", "-a", join(sharedState, "images"), join(state, "images")] });
    const file = join(await tempDir(), "shoal.yaml");
    await writeFile(
      file,
      "name: imgsafe-commit\nimage: tiny\ncount: 1\nvm: { layer: { size: 64M } }\n",
    );
    const env = { SHOAL_ACCEL: "tcg" };
    const created = await shoal(["--state-dir", state, "create", "-f", file], { env });
    expect(created.code, created.stderr).toBe(0);
    // The layer as a root guest leaves it: its own modules.dep, and the file it points at.
    const outside = await tempDir();
    const target = join(outside, "cron-job");
    const layerTree = join(await tempDir(), "layer");
    for (const dir of [`upper/${modules}`, `upper${outside}`, "work", "shoal"])
      await mkdir(join(layerTree, dir), { recursive: true });
    await writeFile(join(layerTree, "shoal/base-id"), `${tiny.id}\n`);
    await writeFile(join(layerTree, "upper", target), "* * * * * root id > /tmp/pwned\n");
    const dep = await readFile(join(tinyTree, modules, "modules.dep"), "utf8");
    await writeFile(join(layerTree, "upper", modules, "modules.dep"), climbingTo(dep, target));
    const layer = stateLayout(state).fleet("imgsafe-commit").vm("vm-1").layer;
    await rm(layer);
    await runner.run({
      argv: ["mkfs.ext4", "-q", "-F", "-L", "shoal-layer", "-d", layerTree, layer, "64M"],
    });
    const committed = await shoal(
      ["--state-dir", state, "image", "commit", "evil", "--from-vm", "vm-1", "-f", file],
      { env },
    );
    expect(committed.code, committed.stderr).toBe(2);
    expect(committed.stderr).toContain(
      `/${modules}/modules.dep in image evil, line ${overlayLine(dep)}:`,
    );
    expect(committed.stderr).toContain(`${target.slice(1)}" is not a module path`);
    expect(await readdir(outside)).toEqual([]);
    expect((await shoal(["--state-dir", state, "image", "inspect", "evil"])).code).toBe(2);
  });
});

describe("links in an image", () => {
  it("are followed inside the image only, and what shoal copies out gets shoal's modes", async () => {
    const state = join(await tempDir(), "state");
    const outside = await tempDir();
    await writeFile(join(outside, "host-file"), "the host's\n");
    const tree = await tinyCopy();
    // /lib/modules/VERSION elsewhere in the image, by an absolute link, as some images have it.
    const moved = join(tree, "opt/modules");
    await mkdir(moved, { recursive: true });
    await runner.run({ argv: ["mv", join(tree, modules), moved] });
    await symlink(`/opt/modules/${tiny.kernelVersion}`, join(tree, modules));
    const overlay = join(moved, tiny.kernelVersion, "kernel/fs/overlayfs/overlay.ko");
    await chmod(overlay, 0o4777);
    await mkdir(join(tree, "srv"));
    await symlink(outside, join(tree, "srv/outside"));
    await symlink("/etc/shadow", join(tree, "etc/host-shadow"));
    const result = await shoal(["--state-dir", state, "image", "import", "linked", tree]);
    expect(result.code, result.stderr).toBe(0);
    const paths = stateLayout(state).image((await inspect(state, "linked")).id);
    const { stdout: listing } = await runner.run({
      argv: ["sh", "-c", `zcat ${paths.initrd} | cpio -tv --quiet`],
    });
    const copies = listing.split("\n").filter((line) => line.endsWith(".ko"));
    expect(copies.length).toBeGreaterThan(5);
    for (const line of copies) expect(line, line).toMatch(/^-rw-r--r-- /);
    const { stdout: copied } = await runner.run({
      argv: [
        "sh",
        "-c",
        `zcat ${paths.initrd} | cpio -i --quiet --to-stdout ${modules}/kernel/fs/overlayfs/overlay.ko | sha256sum`,
      ],
    });
    const { stdout: original } = await runner.run({ argv: ["sha256sum", overlay] });
    expect(copied.split(" ")[0]).toBe(original.split(" ")[0]);
    // The tree's links are links in the image: what they name on the host is not copied in.
    const base = new Ext4Image(runner, paths.base);
    expect(await base.each(["stat /srv/outside", "stat /etc/host-shadow"])).toEqual([
      expect.stringContaining(`Fast link dest: "${outside}"`),
      expect.stringContaining('Fast link dest: "/etc/shadow"'),
    ]);
    expect(await base.readFile("/srv/outside/host-file")).toBeUndefined();
    expect(await readdir(outside)).toEqual(["host-file"]);
  });

  it("is refused as the kernel, which shoal takes only as a regular file", async () => {
    const state = join(await tempDir(), "state");
    const tree = await tinyCopy();
    const kernel = join(tree, `boot/vmlinuz-${tiny.kernelVersion}`);
    await runner.run({ argv: ["mv", kernel, join(tree, "boot/real-kernel")] });
    await symlink("real-kernel", kernel);
    const result = await shoal(["--state-dir", state, "image", "import", "linked", tree]);
    expect(result.code, result.stderr).toBe(2);
    expect(result.stderr).toContain(
      `shoal: /boot/vmlinuz-${tiny.kernelVersion} in image linked is not a regular file`,
    );
    await expectNothingStored(state);
  });
});

describe("a qcow2 that reads another file", () => {
  it("is refused, whether through a backing file or an external data file, and nothing is stored", async () => {
    const state = join(await tempDir(), "state");
    const work = await tempDir();
    const hostFile = join(work, "host.img");
    await runner.run({ argv: ["cp", stateLayout(sharedState).image(tiny.id).base, hostFile] });
    const backed = join(work, "backed.qcow2");
    await runner.run({
      argv: ["qemu-img", "create", "-q", "-f", "qcow2", "-b", hostFile, "-F", "raw", backed],
    });
    const viaJson = join(work, "json.qcow2");
    const json = `json:{"driver":"raw","file":{"driver":"file","filename":"${hostFile}"}}`;
    await runner.run({
      argv: ["qemu-img", "create", "-q", "-f", "qcow2", "-b", json, "-F", "raw", viaJson],
    });
    const dataFile = join(work, "data.raw");
    const external = join(work, "external.qcow2");
    const size = String((await stat(hostFile)).size);
    await runner.run({
      argv: [
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        `data_file=${dataFile},data_file_raw=on`,
        external,
        size,
      ],
    });
    // qemu-img create zeroes the data file; the host's ext4 goes in afterwards.
    await runner.run({ argv: ["cp", hostFile, dataFile] });
    const cases: [string, string][] = [
      [backed, `reads a backing file "${hostFile}"`],
      [viaJson, `reads a backing file ${JSON.stringify(json)}`],
      [external, `reads an external data file "${dataFile}"`],
    ];
    for (const [path, why] of cases) {
      const result = await shoal(["--state-dir", state, "image", "import", "q", path]);
      expect(result.code, result.stderr).toBe(2);
      expect(result.stderr).toContain(
        `shoal: ${path} ${why}: shoal imports only what the qcow2 itself holds`,
      );
      await expectNothingStored(state);
    }
  });
});

describe("an import path that is no file", () => {
  it("is refused as a device or a FIFO, without reading or waiting on it", async () => {
    const state = join(await tempDir(), "state");
    const work = await tempDir();
    const raw = join(work, "raw.img");
    await runner.run({ argv: ["cp", stateLayout(sharedState).image(tiny.id).base, raw] });
    const { stdout } = await runner.run({
      argv: ["losetup", "--find", "--show", "--read-only", raw],
    });
    const loop = stdout.trim();
    try {
      await symlink(loop, join(work, "disk.img"));
      await symlink("/dev/zero", join(work, "zero.img"));
      await runner.run({ argv: ["mkfifo", join(work, "fifo.img")] });
      const cases: [string, string][] = [
        [join(work, "disk.img"), "a block device"],
        [join(work, "zero.img"), "a character device"],
        [join(work, "fifo.img"), "a FIFO"],
      ];
      for (const [path, kind] of cases) {
        // A FIFO nobody writes to would hold an open() forever.
        const result = await runner.run({
          argv: [process.execPath, SHOAL, "--state-dir", state, "image", "import", "dev", path],
          timeoutMs: 30_000,
          okCodes: "any",
        });
        expect(result.code, result.stderr).toBe(2);
        expect(result.stderr).toContain(
          `shoal: ${path} is ${kind}; import takes a raw ext4 image, a directory, a tarball or a qcow2`,
        );
        await expectNothingStored(state);
      }
    } finally {
      await runner.run({ argv: ["losetup", "-d", loop] });
    }
  });
});

describe("a tarball", () => {
  /** A tar archive of crafted members, as tar-stream writes them. */
  async function craft(
    path: string,
    members: readonly (Parameters<ReturnType<typeof pack>["entry"]>[0] & { body?: string })[],
  ) {
    const archive = pack();
    const chunks: Buffer[] = [];
    archive.on("data", (chunk: unknown) => chunks.push(chunk as Buffer));
    const done = new Promise<void>((resolve) => archive.on("end", () => resolve()));
    for (const { body, ...header } of members) archive.entry(header, body ?? "");
    archive.finalize();
    await done;
    await writeFile(path, Buffer.concat(chunks));
  }

  it("whose members point outside is refused, and writes or links nothing there", async () => {
    const state = join(await tempDir(), "state");
    const outside = await tempDir();
    const secret = join(outside, "secret");
    await writeFile(secret, "the host's secret\n", { mode: 0o600 });
    const tarball = join(await tempDir(), "evil.tar");
    await craft(tarball, [
      { name: `${"../".repeat(20)}${outside.slice(1)}/by-dotdot`, body: "x" },
      { name: `${outside}/by-absolute-name`, body: "x" },
      { name: "out", type: "symlink", linkname: outside },
      { name: "out/through-link", body: "x" },
      { name: "up", type: "symlink", linkname: `${"../".repeat(20)}${outside.slice(1)}` },
      { name: "up/through-relative-link", body: "x" },
      { name: "hard", type: "link", linkname: secret },
      { name: "hard-up", type: "link", linkname: `${"../".repeat(20)}${secret.slice(1)}` },
      { name: "hard-through-link", type: "link", linkname: "out/secret" },
    ]);
    const result = await shoal(["--state-dir", state, "image", "import", "evil", tarball]);
    expect(result.code, result.stderr).toBe(2);
    expect(result.stderr).toMatch(
      new RegExp(
        `^shoal: cannot unpack ${tarball}: tar: .*(Member name contains '\\.\\.'|Not a directory|Cannot hard link).*; shoal takes a tarball whose members all stay inside it`,
        "m",
      ),
    );
    expect(await readdir(outside)).toEqual(["secret"]);
    const info = await stat(secret);
    expect(info.nlink).toBe(1);
    expect(await readFile(secret, "utf8")).toBe("the host's secret\n");
    await expectNothingStored(state);
  });

  it("keeps its device nodes and setuid programs in the image, unpacked where only root can reach them", async () => {
    const state = join(await tempDir(), "state");
    const tree = await tinyCopy();
    await runner.run({ argv: ["mknod", "-m", "666", join(tree, "dev/sda"), "b", "8", "0"] });
    await writeFile(join(tree, "bin/suid-shell"), "#!/bin/sh\n");
    await chown(join(tree, "bin/suid-shell"), 1000, 1000);
    await chmod(join(tree, "bin/suid-shell"), 0o6755);
    const tarball = join(await tempDir(), "root.tar");
    await runner.run({ argv: ["tar", "-C", tree, "-cf", tarball, "."] });
    // The staging directory's mode while the unpacked tree is in it, as another user meets it.
    const images = join(state, "images");
    const seen = new Set<number>();
    let running = true;
    const watching = (async () => {
      while (running) {
        for (const entry of await readdir(images).catch(() => [] as string[])) {
          if (!entry.startsWith(".staging-")) continue;
          const staging = join(images, entry);
          const info = await lstat(staging).catch(() => undefined);
          const inside = await readdir(staging).catch(() => [] as string[]);
          if (info && inside.includes("tree")) seen.add(info.mode & 0o7777);
        }
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    })();
    const result = await shoal(["--state-dir", state, "image", "import", "rootfs", tarball]);
    running = false;
    await watching;
    expect(result.code, result.stderr).toBe(0);
    expect([...seen]).toEqual([0o700]);
    const base = new Ext4Image(
      runner,
      stateLayout(state).image((await inspect(state, "rootfs")).id).base,
    );
    const [device, suid] = await base.each(["stat /dev/sda", "stat /bin/suid-shell"]);
    expect(device).toMatch(/Type: block special/);
    expect(device).toMatch(/Device major\/minor number: 08:00/);
    expect(suid).toMatch(/Mode: +06755/);
    expect(suid).toMatch(/User: +1000 +Group: +1000 /);
    // Copied out (as `image commit` does to put a base's file back), it is shoal's, not setuid.
    const copy = join(await tempDir(), "copy");
    await base.dump([["/bin/suid-shell", copy]]);
    const copied = await stat(copy);
    expect([copied.mode & 0o7777, copied.uid, copied.gid]).toEqual([0o755, 0, 0]);
  });
});

import { mkdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { QEMU_DAX_GUEST_DEVICES } from "../../src/backends/qemu/render.js";
import type { VmSpec } from "../../src/core/fleet.js";
import { ProcessRunner } from "../../src/host/runner.js";
import { type ImageMeta, imageBoot } from "../../src/image/store.js";
import { createLayer, listLayerChanges, readLayerFile } from "../../src/layer/layer.js";
import { stateLayout } from "../../src/state/layout.js";
import { shoal } from "../helpers/cli.js";
import { fleetOf } from "../helpers/fleet.js";
import { sharedImage } from "../helpers/images.js";
import { useFileTempDir, useTempDirs } from "../helpers/tmp.js";
import { killAllVms, sha256, TestVm } from "../helpers/vm.js";

/**
 * The union root in real VMs (QEMU, software emulation) booting shoal's tiny image through
 * shoal's initramfs. The console is a root shell, which the tests drive.
 */

const tempDir = useTempDirs("file");
const stateDir = useFileTempDir("shoal-e2e-");
const runner = new ProcessRunner();
let state: string;
const images: Record<
  string,
  ImageMeta & { paths: ReturnType<ReturnType<typeof stateLayout>["image"]> }
> = {};

async function buildImage(name: string, copy: number) {
  const meta = await sharedImage(state, name, { from: "busybox", copy });
  images[name] = { ...meta, paths: stateLayout(state).image(meta.id) };
}

beforeAll(async () => {
  state = stateDir();
  await buildImage("tiny", 1);
  await buildImage("tiny-next", 2);
});

// Each test boots its own VMs, with one vCPU each, and the tests run side by side: vitest's
// maxConcurrency (2, vitest.config.ts) bounds each group, so two of these describes run at once
// with up to two tests each, at most four VMs (measured: 98-111 s for the file, 242 s one by one).
// A VM a failed test left is killed at the end.
afterAll(killAllVms);

function vmSpec(layer: string, name = "agent-1"): VmSpec {
  const vm = fleetOf(`name: test\nvms: [{ name: ${name}, layer: ${layer} }]\n`).vms[0];
  if (!vm) throw new Error("no VM");
  return vm;
}

async function boot(options: {
  layer?: string;
  spec?: VmSpec;
  image?: string;
  withoutLayerDrive?: boolean;
  /** Attach the base as a disk, as for a base that cannot be mapped for DAX. */
  baseAsDisk?: boolean;
}) {
  const image = images[options.image ?? "tiny"];
  if (!image) throw new Error("no image");
  const dir = join(await tempDir(), "vm");
  await mkdir(dir);
  const { dax: _mapped, ...asDisk } = imageBoot(stateLayout(state), image);
  return TestVm.boot({
    boot: options.baseAsDisk ? asDisk : imageBoot(stateLayout(state), image),
    vm: options.spec ?? vmSpec(options.layer ? "{ type: disk }" : "{ type: tmpfs }"),
    dir,
    ...(options.layer ? { layer: options.layer } : {}),
    // A missing device is waited for rootdelay= seconds: 3 instead of 30.
    ...(options.withoutLayerDrive ? { withoutLayerDrive: true, rootDelaySeconds: 3 } : {}),
  });
}

async function ready(vm: TestVm): Promise<void> {
  await vm.waitFor(/shoal-tiny: \S+ is up/);
  vm.type("\n");
}

async function powerOff(vm: TestVm): Promise<void> {
  vm.type("sync; poweroff\n");
  await vm.waitForExit();
}

const dax = QEMU_DAX_GUEST_DEVICES;

/** How much the guest's page cache grows while it reads every file of the base once. */
async function cacheGrowthReadingBase(vm: TestVm): Promise<{ readKiB: number; grewKiB: number }> {
  const cachedKiB = "awk '/^Cached:/ { print $2 }' /proc/meminfo";
  const { out } = await vm.sh(
    `sync; echo 1 > /proc/sys/vm/drop_caches; before=$(${cachedKiB}); ` +
      "find /run/shoal/base -xdev -type f -exec cat {} + > /dev/null; " +
      `echo "read $(du -sk /run/shoal/base | cut -f1) grew $(($(${cachedKiB}) - before))"`,
  );
  const [, read, grew] = /read (\d+) grew (-?\d+)/.exec(out) ?? [];
  if (read === undefined) throw new Error(`no cache figures in ${out}`);
  return { readKiB: Number(read), grewKiB: Number(grew) };
}

async function newLayer(): Promise<string> {
  const layer = join(await tempDir(), "layer.img");
  await createLayer(layer, 256 * 1024 * 1024);
  return layer;
}

describe.concurrent("a disk layer", () => {
  it("takes the VM's writes and deletions, while the base stays read-only and unchanged", async () => {
    const tiny = images.tiny;
    if (!tiny) throw new Error("no image");
    const layer = await newLayer();
    expect((await stat(layer)).blocks).toBe(0);
    const vm = await boot({ layer });
    await vm.waitFor(new RegExp(`shoal: formatting blank layer ${dax.layer}`));
    await ready(vm);

    expect(await vm.qmp<{ status: string }>("query-status")).toMatchObject({ status: "running" });
    await expect(vm.qmp("no-such-command")).rejects.toThrow(
      /^QEMU refused a command on .*qmp\.sock: The command no-such-command has not been found$/,
    );
    expect((await vm.sh("echo hello > /root/hello && rm /etc/os-release && sync")).code).toBe(0);
    const root = (await vm.sh("grep ' / ' /proc/mounts")).out;
    expect(root).toMatch(
      /^shoal-root \/ overlay rw,.*lowerdir=\/run\/shoal\/base,upperdir=\/run\/shoal\/layer\/upper,workdir=\/run\/shoal\/layer\/work/m,
    );
    // The kernel lists only options that differ from its defaults: none of these may be on.
    expect(root).not.toMatch(/redirect_dir=(on|follow)|index=on|metacopy=on|xino=(on|auto)/);
    // The base is mapped for DAX: reading all of it leaves the guest's page cache as it was.
    expect((await vm.sh("grep ' /run/shoal/base ' /proc/mounts")).out).toMatch(
      /^\/dev\/pmem0 \/run\/shoal\/base ext4 ro,.*dax=always/m,
    );
    const cached = await cacheGrowthReadingBase(vm);
    expect(cached.readKiB).toBeGreaterThan(8 * 1024);
    expect(cached.grewKiB).toBeLessThan(1024);
    expect((await vm.sh("grep ' /run/shoal/layer ' /proc/mounts")).out).toMatch(
      /^\/dev\/vdb \/run\/shoal\/layer ext4 rw,/m,
    );

    const touch = await vm.sh("touch /run/shoal/base/x 2>&1");
    expect(touch.code).not.toBe(0);
    expect(touch.out).toContain("Read-only file system");
    const write = await vm.sh("dd if=/dev/zero of=/dev/pmem0 bs=4096 count=1 conv=notrunc 2>&1");
    expect(write.code).not.toBe(0);
    expect((await vm.sh("cat /etc/fstab | grep -c -E '^[^#].* / |swap'")).out.trim()).toBe("0");

    // The sealed base holds an empty machine-id; the VM has its own from the command line.
    expect((await vm.sh("wc -c < /run/shoal/base/etc/machine-id")).out.trim()).toBe("0");
    expect((await vm.sh("cat /etc/machine-id")).out.trim()).toBe(vmSpec("{}").machineId);
    expect((await vm.sh("hostname")).out.trim()).toBe("agent-1");
    expect((await vm.sh("cat /run/shoal/layer/shoal/base-id")).out.trim()).toBe(tiny.id);
    await powerOff(vm);

    expect(await readLayerFile(runner, layer, "/root/hello")).toBe("hello\n");
    const changes = await listLayerChanges(runner, layer, tiny.paths.base);
    expect(changes).toContainEqual({ path: "/root/hello", change: "added", type: "file", size: 6 });
    expect(changes).toContainEqual(
      expect.objectContaining({ path: "/etc/os-release", change: "deleted", type: "file" }),
    );
    expect(await sha256(tiny.paths.base)).toBe(tiny.id);
  });

  it("keeps the VM's changes across a reboot, where a tmpfs layer loses them", async () => {
    const layer = await newLayer();
    // The way a base that cannot be mapped for DAX (an imported one, Xen's) is attached.
    const disk = await boot({ layer, baseAsDisk: true });
    await ready(disk);
    expect((await disk.sh("grep ' /run/shoal/base ' /proc/mounts")).out).toMatch(
      /^\/dev\/vda \/run\/shoal\/base ext4 ro,/m,
    );
    const cached = await cacheGrowthReadingBase(disk);
    expect(cached.grewKiB).toBeGreaterThan(cached.readKiB / 2);
    await disk.sh("echo kept > /root/note && sync");
    disk.type("reboot\n");
    await ready(disk);
    expect((await disk.sh("cat /root/note")).out.trim()).toBe("kept");
    await powerOff(disk);

    const tmpfs = await boot({});
    await ready(tmpfs);
    expect((await tmpfs.sh("grep ' /run/shoal/layer ' /proc/mounts")).out).toMatch(
      /^shoal-layer \/run\/shoal\/layer tmpfs rw,.*size=65536k/m,
    );
    await tmpfs.sh("echo lost > /root/note");
    tmpfs.type("reboot\n");
    await ready(tmpfs);
    const after = await tmpfs.sh("cat /root/note 2>&1");
    expect(after.code).not.toBe(0);
    expect(after.out).toContain("No such file");
    await powerOff(tmpfs);
  });
});

describe.concurrent("failing closed", () => {
  it("stops a VM whose layer device is missing, naming the cause", async () => {
    const tiny = images.tiny;
    if (!tiny) throw new Error("no image");
    const vm = await boot({ layer: await newLayer(), withoutLayerDrive: true });
    await vm.waitForExit();
    const output = await vm.output();
    expect(output).toContain(
      `shoal: FATAL: layer device ${dax.layer} not found (waited 3s; rootdelay= sets it)`,
    );
    expect(output).toContain(
      "shoal: FATAL: refusing to run the shared base read-write; powering off",
    );
    expect(output).not.toContain("is up");
    expect(await sha256(tiny.paths.base)).toBe(tiny.id);
  });

  it("refuses a layer device that holds something else, and leaves it alone", async () => {
    const layer = await newLayer();
    await runner.run({ argv: ["mkswap", layer] });
    const before = await sha256(layer);
    const vm = await boot({ layer });
    await vm.waitForExit();
    expect(await vm.output()).toContain(
      `shoal: FATAL: layer device ${dax.layer} holds a swap signature, not a shoal layer; refusing to format it`,
    );
    expect(await sha256(layer)).toBe(before);
  });

  it("falls back to a tmpfs layer, loudly, only when the fleet opted in", async () => {
    const vm = await boot({
      layer: await newLayer(),
      withoutLayerDrive: true,
      spec: vmSpec("{ type: disk, fallback: tmpfs }"),
    });
    await vm.waitFor(
      new RegExp(
        `WARNING: layer device ${dax.layer} not found \\(waited 3s; rootdelay= sets it\\); FALLING BACK TO A TMPFS LAYER`,
      ),
    );
    await ready(vm);
    expect((await vm.sh("grep ' /run/shoal/layer ' /proc/mounts")).out).toContain("tmpfs");
    await powerOff(vm);
  });
});

describe.concurrent("a layer booted over another base", () => {
  it("is kept, kept with a warning, or reset, as the fleet's policy says", async () => {
    const layer = await newLayer();
    const policy = (onBaseChange: string) =>
      vmSpec(`{ type: disk, on_base_change: ${onBaseChange} }`);
    const first = await boot({ layer, image: "tiny" });
    await ready(first);
    await first.sh("echo mine > /root/mine && sync");
    await powerOff(first);

    const keep = await boot({ layer, image: "tiny-next", spec: policy("keep") });
    await ready(keep);
    expect((await keep.sh("cat /root/mine")).out.trim()).toBe("mine");
    await powerOff(keep);
    // shoal's warning, not any kernel's: a guest's kernel may warn of its own (seen once under load:
    // virtio_balloon's free page reporting found its queue full).
    expect(await keep.output()).not.toContain("WARNING: this layer was made over base");
    expect(await keep.output()).toContain(
      `layer made over base ${images.tiny?.id}, now over ${images["tiny-next"]?.id}: kept`,
    );

    const warn = await boot({ layer, image: "tiny", spec: policy("warn") });
    await warn.waitFor(/WARNING: this layer was made over base \w+ and now boots over \w+/);
    await ready(warn);
    expect((await warn.sh("cat /root/mine")).out.trim()).toBe("mine");
    await powerOff(warn);

    const reset = await boot({ layer, image: "tiny-next", spec: policy("reset") });
    await reset.waitFor(/now over \w+: resetting the layer/);
    await ready(reset);
    expect((await reset.sh("cat /root/mine 2>&1")).out).toContain("No such file");
    await powerOff(reset);
    expect((await readFile(images["tiny-next"]?.paths.meta ?? "", "utf8")).length).toBeGreaterThan(
      0,
    );
  });
});

describe.concurrent("the union's /etc/fstab", () => {
  it("loses the lines for / and swap that an imported image brings, and keeps the rest", async () => {
    const tiny = images.tiny;
    if (!tiny) throw new Error("no image");
    const tree = join(await tempDir(), "tree");
    await mkdir(tree);
    await runner.run({ argv: ["debugfs", "-R", `rdump / ${tree}`, tiny.paths.base] });
    const fstab = join(tree, "etc/fstab");
    const kept = "# / is mounted by the initramfs\ntmpfs /tmp tmpfs defaults 0 0\n";
    await writeFile(
      fstab,
      `UUID=1234 / ext4 errors=remount-ro 0 1\n${kept}/dev/vdc none swap sw 0 0\n`,
    );
    const imported = await shoal(["--state-dir", state, "image", "import", "with-fstab", tree]);
    expect(imported.code, imported.stderr).toBe(0);
    const meta = JSON.parse(
      (await shoal(["--state-dir", state, "image", "inspect", "with-fstab"])).stdout,
    ) as ImageMeta;
    images["with-fstab"] = { ...meta, paths: stateLayout(state).image(meta.id) };
    const vm = await boot({ image: "with-fstab" });
    await ready(vm);
    expect((await vm.sh("cat /etc/fstab")).out).toBe(kept);
    expect((await vm.sh("cat /run/shoal/base/etc/fstab")).out).toContain("UUID=1234 / ext4");
    await powerOff(vm);
  });
});

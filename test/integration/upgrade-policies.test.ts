import { execFile } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { type ConflictPolicy, upgradeFleet } from "../../src/fleet/upgrade.js";
import { layerFormatted } from "../../src/layer/layer.js";
import {
  FakeBackend,
  fakeFleet,
  fakeRecord,
  openSession,
  realToolsRunner,
  stateWithImages,
  upOnFake,
} from "../helpers/fake-backend.js";
import { useTempDirs } from "../helpers/tmp.js";

/**
 * `upgrade`'s conflict policies on VMs that run: the fake backend holds the VMs, their layers and
 * bases are real ext4 images that debugfs and e2fsck read, as they do for a booted fleet.
 */

const exec = promisify(execFile);
const tempDir = useTempDirs();

/** An ext4 image of the given files, as mkfs.ext4 -d makes it without mounting anything. */
async function ext4Of(image: string, files: Record<string, string>, size = "16M") {
  const tree = join(await tempDir(), "tree");
  for (const [path, text] of Object.entries(files)) {
    await mkdir(join(tree, path, ".."), { recursive: true });
    await writeFile(join(tree, path), text);
  }
  await exec("mkfs.ext4", ["-q", "-F", "-d", tree, image, size]);
}

async function sha256(path: string): Promise<string> {
  return (await exec("sha256sum", [path])).stdout.split(" ")[0] ?? "";
}

/**
 * Two running VMs on base "tiny", whose /etc/inittab base "next" changes: vm-1 edited it (a
 * conflict), vm-2 wrote a file of its own only.
 */
async function runningFleet() {
  const dir = await tempDir();
  const images = await stateWithImages(dir);
  await ext4Of(images.tiny.boot.base, { "etc/inittab": "base\n", "etc/motd": "hi\n" });
  await ext4Of(images.next.boot.base, { "etc/inittab": "next\n", "etc/motd": "hi\n" });
  const backend = new FakeBackend(images.layout.fleet("fake").state);
  const runner = realToolsRunner();
  const first = await upOnFake(dir, fakeFleet(2), backend, images.bootOf, {}, runner);
  expect(first.outcomes.every((outcome) => outcome.ok)).toBe(true);
  // What the guests wrote to their layers while they ran.
  const layer = (vm: string) => images.layout.fleet("fake").vm(vm).layer;
  const baseId = `${images.tiny.id}\n`;
  await ext4Of(
    layer("vm-1"),
    { "shoal/base-id": baseId, "upper/etc/inittab": "mine\n", "work/.keep": "" },
    "64M",
  );
  await ext4Of(
    layer("vm-2"),
    { "shoal/base-id": baseId, "upper/root/notes": "mine\n", "work/.keep": "" },
    "64M",
  );
  backend.calls.length = 0;
  return { ...images, backend, runner, layer };
}

async function upgradeWith(
  fleet: Awaited<ReturnType<typeof runningFleet>>,
  policy: ConflictPolicy,
) {
  const { session } = await openSession(
    fleet.dir,
    fakeFleet(2, "next"),
    fleet.backend,
    fleet.runner,
  );
  const reports = await upgradeFleet(session, fakeFleet(2, "next"), fleet.next, {
    maxUnavailable: 1,
    policy,
    bootTimeoutMs: 5_000,
    stopTimeoutMs: 1_000,
  });
  return reports.map((report) => [
    report.name,
    report.outcome,
    report.conflicts.map((conflict) => conflict.path),
  ]);
}

describe("upgrade's conflict policies on running VMs", () => {
  it("skip: a conflicting VM is judged from a copy of its layer and never stopped; it stays on its base, running", async () => {
    const fleet = await runningFleet();
    const before = await sha256(fleet.layer("vm-1"));
    expect(await upgradeWith(fleet, "skip")).toEqual([
      ["vm-1", "skipped", ["/etc/inittab"]],
      ["vm-2", "upgraded", []],
    ]);
    expect(fleet.backend.calls.filter((call) => call.endsWith(" vm-1"))).toEqual([]);
    expect(fleet.backend.baseOf("vm-1")).toBe(fleet.tiny.id);
    expect(fleet.backend.baseOf("vm-2")).toBe(fleet.next.id);
    expect(await sha256(fleet.layer("vm-1"))).toBe(before);
    const record = await fakeRecord(fleet.dir);
    expect(record.vms["vm-1"]).toMatchObject({ baseId: fleet.tiny.id, running: true });
    expect(record.vms["vm-1"]?.upgrading).toBeUndefined();
  });

  it("reset: a conflicting VM is stopped, its layer emptied, and it runs again on the new base", async () => {
    const fleet = await runningFleet();
    expect(await upgradeWith(fleet, "reset")).toEqual([
      ["vm-1", "upgraded", ["/etc/inittab"]],
      ["vm-2", "upgraded", []],
    ]);
    expect(fleet.backend.calls.filter((call) => call.endsWith(" vm-1"))).toEqual([
      "shutdown vm-1",
      "destroy vm-1",
      "define vm-1",
      "start vm-1",
    ]);
    expect(await layerFormatted(fleet.layer("vm-1"))).toBe(false);
    expect(await layerFormatted(fleet.layer("vm-2"))).toBe(true);
    expect(fleet.backend.baseOf("vm-1")).toBe(fleet.next.id);
  });

  it("proceed: a conflicting VM keeps its layer as it was and runs on the new base", async () => {
    const fleet = await runningFleet();
    const before = await sha256(fleet.layer("vm-1"));
    expect(await upgradeWith(fleet, "proceed")).toEqual([
      ["vm-1", "upgraded", ["/etc/inittab"]],
      ["vm-2", "upgraded", []],
    ]);
    expect(await sha256(fleet.layer("vm-1"))).toBe(before);
    expect(fleet.backend.baseOf("vm-1")).toBe(fleet.next.id);
    expect((await fakeRecord(fleet.dir)).vms["vm-1"]).toMatchObject({
      baseId: fleet.next.id,
      running: true,
    });
  });
});

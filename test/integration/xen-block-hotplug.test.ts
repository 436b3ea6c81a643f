import { execFile } from "node:child_process";
import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { collect } from "../helpers/cli.js";
import { useTempDirs } from "../helpers/tmp.js";

/**
 * shoal's block hotplug script (src/backends/xl/xen-block-hotplug) with the real losetup, as libxl
 * runs it: `add` or `remove`, the disk's backend directory in $XENBUS_PATH. xenstore is a directory
 * of files here (xenstore-read and xenstore-write on PATH), so no Xen is needed.
 */

const exec = promisify(execFile);
const SCRIPT = "src/backends/xl/xen-block-hotplug";
const BACKEND = "/local/domain/0/backend/vbd/7/51712";
const tempDir = useTempDirs();
let store: string;
let bin: string;
let dir: string;
const attached: string[] = [];

beforeEach(async () => {
  dir = await tempDir();
  store = join(dir, "xenstore");
  bin = join(dir, "bin");
  await mkdir(store);
  await mkdir(bin);
  // Keys as files named by their path, "/" as "%".
  await writeFile(
    join(bin, "xenstore-read"),
    `#!/bin/sh\ncat "${store}/$(echo "$1" | tr / %)" 2>/dev/null || { echo "couldn't read path $1" >&2; exit 1; }\n`,
  );
  await writeFile(
    join(bin, "xenstore-write"),
    `#!/bin/sh\nwhile [ $# -ge 2 ]; do printf %s "$2" > "${store}/$(echo "$1" | tr / %)"; shift 2; done\n`,
  );
  await chmod(join(bin, "xenstore-read"), 0o755);
  await chmod(join(bin, "xenstore-write"), 0o755);
});

afterEach(async () => {
  for (const device of attached.splice(0)) {
    await exec("losetup", ["--detach", device]).catch(() => undefined);
  }
});

async function key(name: string, value: string): Promise<void> {
  await writeFile(join(store, `${BACKEND}/${name}`.replaceAll("/", "%")), value);
}

async function read(name: string): Promise<string | undefined> {
  return readFile(join(store, `${BACKEND}/${name}`.replaceAll("/", "%")), "utf8").catch(
    () => undefined,
  );
}

function hotplug(command: string) {
  return collect(["sh", SCRIPT, command], {
    env: { ...process.env, PATH: `${bin}:${process.env.PATH}`, XENBUS_PATH: BACKEND },
  });
}

/** The loop devices attached to `file`. */
async function loopsOf(file: string): Promise<string[]> {
  const { stdout } = await exec("losetup", [
    "--noheadings",
    "--output",
    "NAME",
    "--associated",
    file,
  ]);
  return stdout.split("\n").filter(Boolean);
}

async function disk(name: string): Promise<string> {
  const file = join(dir, name);
  await exec("truncate", ["-s", "1M", file]);
  return file;
}

describe("shoal's block hotplug script", () => {
  it("attaches a VM's file as a loop device of its own, read-only for mode r, and publishes its numbers", async () => {
    const seed = await disk("identity.tar");
    await key("params", seed);
    await key("mode", "r");
    const added = await hotplug("add");
    expect(added.code, added.stderr).toBe(0);
    const [device] = await loopsOf(seed);
    if (device === undefined) throw new Error("not attached");
    attached.push(device);
    const { stdout: ro } = await exec("blockdev", ["--getro", device]);
    expect(ro.trim()).toBe("1");
    const { stdout: numbers } = await exec("stat", ["-L", "-c", "%t:%T", device]);
    expect(await read("physical-device")).toBe(numbers.trim());
    expect(await read("physical-device-path")).toBe(device);
    expect(await read("hotplug-status")).toBe("connected");

    const removed = await hotplug("remove");
    expect(removed.code, removed.stderr).toBe(0);
    expect(await loopsOf(seed)).toEqual([]);
  });

  it("attaches a layer read-write for mode w", async () => {
    const layer = await disk("layer.img");
    await key("params", layer);
    await key("mode", "w");
    expect((await hotplug("add")).code).toBe(0);
    const [device] = await loopsOf(layer);
    if (device === undefined) throw new Error("not attached");
    attached.push(device);
    expect((await exec("blockdev", ["--getro", device])).stdout.trim()).toBe("0");
  });

  it("refuses a file that is attached already, a second writer, and says so to libxl", async () => {
    const layer = await disk("layer.img");
    const { stdout } = await exec("losetup", ["--find", "--show", layer]);
    attached.push(stdout.trim());
    await key("params", layer);
    await key("mode", "w");
    const added = await hotplug("add");
    expect(added.code).toBe(1);
    expect(await read("hotplug-status")).toBe("error");
    expect(await read("hotplug-error")).toContain(`shoal: ${layer} is attached already`);
    expect(await loopsOf(layer)).toEqual([stdout.trim()]);
  });

  it("publishes a block device (the base's shared loop device) as it is, and leaves it on remove", async () => {
    const base = await disk("base.img");
    const { stdout } = await exec("losetup", ["--find", "--show", "--read-only", base]);
    const device = stdout.trim();
    attached.push(device);
    await key("params", device);
    await key("mode", "r");
    expect((await hotplug("add")).code).toBe(0);
    expect(await read("physical-device-path")).toBe(device);
    expect(await loopsOf(base)).toEqual([device]);
    expect((await hotplug("remove")).code).toBe(0);
    expect(await loopsOf(base)).toEqual([device]);
  });

  it("refuses what is neither a file nor a block device, and an unknown command", async () => {
    await key("params", dir);
    await key("mode", "r");
    const added = await hotplug("add");
    expect(added.code).toBe(1);
    expect(await read("hotplug-error")).toBe(`shoal: ${dir} is neither a block device nor a file`);
    expect((await hotplug("online")).code).toBe(1);
  });
});

import { copyFile, readdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { bzImagePayload, uncompressedKernel } from "../../src/backends/xl/kernel.js";
import { ProcessRunner } from "../../src/host/runner.js";
import { useTempDirs } from "../helpers/tmp.js";

/** The host's Debian kernel (scripts/setup installs one), unpacked as backend xl does for domUs. */

const tempDir = useTempDirs();

async function hostKernel(): Promise<string> {
  const kernel = (await readdir("/boot")).find((name) => name.startsWith("vmlinuz-"));
  if (!kernel) throw new Error("no /boot/vmlinuz-*: scripts/setup installs linux-image-amd64");
  return join("/boot", kernel);
}

describe("an image's kernel for Xen domUs", () => {
  it("is unpacked once into vmlinux beside it, an ELF file of about the size the kernel takes, read-only", async () => {
    const dir = await tempDir();
    const kernel = join(dir, "vmlinuz");
    await copyFile(await hostKernel(), kernel);
    const vmlinux = join(dir, "vmlinux");
    const runner = new ProcessRunner();
    expect(await uncompressedKernel(runner, kernel, vmlinux)).toBe(vmlinux);
    const head = (await readFile(vmlinux)).subarray(0, 4).toString("latin1");
    expect(head).toBe("\x7fELF");
    const info = await stat(vmlinux);
    expect(info.mode & 0o777).toBe(0o444);
    const payload = bzImagePayload(await readFile(kernel));
    expect(info.size).toBeLessThan(2 * (payload?.maxBytes ?? 0));
    expect(info.size).toBeGreaterThan(payload?.length ?? Number.POSITIVE_INFINITY);
    expect(await uncompressedKernel(runner, kernel, vmlinux)).toBe(vmlinux);
    expect((await readdir(dir)).sort()).toEqual(["vmlinux", "vmlinuz"]);
  });

  it("boots as it is when its payload does not unpack, leaving nothing behind", async () => {
    const dir = await tempDir();
    const kernel = join(dir, "vmlinuz");
    const image = await readFile(await hostKernel());
    const payload = bzImagePayload(image);
    if (!payload) throw new Error("the host's kernel is no bzImage shoal reads");
    // The compressed stream broken after its header.
    image.fill(0x55, payload.offset + 64, payload.offset + 4096);
    await writeFile(kernel, image);
    const vmlinux = join(dir, "vmlinux");
    expect(await uncompressedKernel(new ProcessRunner(), kernel, vmlinux)).toBe(kernel);
    expect(await readdir(dir)).toEqual(["vmlinuz"]);
  });
});

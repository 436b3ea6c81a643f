import { chmod, copyFile, mkdir, readdir, rename, rm, writeFile } from "node:fs/promises";
import { dirname, join, relative, resolve, sep } from "node:path";
import { packagePath } from "../assets.js";
import { isKernelVersion, isModulePath } from "../core/modules.js";
import { ShoalError } from "../errors.js";
import { pathExists } from "../host/paths.js";
import type { Runner } from "../host/runner.js";
import type { Ext4Image } from "./ext4.js";
import type { ImageKernel } from "./kernel.js";

/** The in-guest scripts, shipped beside the code. */
export const GUEST_DIR = packagePath("src/guest/");

const DECOMPRESSORS: Record<string, readonly [string, ...string[]]> = {
  ".xz": ["xz", "-d"],
  ".zst": ["zstd", "-d", "-q", "--rm"],
  ".gz": ["gzip", "-d"],
};

/** Host files with the shared libraries they load, found by ldd, as paths to copy. */
async function withLibraries(runner: Runner, programs: readonly string[]): Promise<string[]> {
  const files = new Set(programs);
  for (const program of programs) {
    const { stdout } = await runner.run({ argv: ["ldd", program], probe: true, okCodes: [1] });
    for (const match of stdout.matchAll(/(?:=> )?(\/\S+) \(0x/g)) if (match[1]) files.add(match[1]);
  }
  return [...files];
}

async function listTree(root: string, dir = root): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  const paths: string[] = [];
  for (const entry of entries) {
    const path = join(dir, entry.name);
    paths.push(relative(root, path));
    if (entry.isDirectory()) paths.push(...(await listTree(root, path)));
  }
  return paths;
}

/**
 * Where a module taken from the image goes in the initramfs tree. Its path and the kernel version
 * were read from the image: checked again here, where they become a host path, and the result
 * must lie inside the tree.
 */
function moduleCopy(root: string, version: string, path: string): string {
  const copy = resolve(root, "lib/modules", version, path);
  if (!isKernelVersion(version) || !isModulePath(path) || !copy.startsWith(resolve(root) + sep)) {
    throw new Error(
      `internal: module ${JSON.stringify(path)} of kernel ${JSON.stringify(version)} would land outside the initramfs`,
    );
  }
  return copy;
}

/**
 * Builds shoal's initramfs for an image's kernel: busybox, the union root's modules taken from
 * the image itself (decompressed, so busybox's insmod can load them), mke2fs for blank layers,
 * and the union-root init. Nothing in the image changes.
 */
export async function buildInitramfs(
  runner: Runner,
  image: Ext4Image,
  kernel: ImageKernel,
  work: string,
  out: string,
): Promise<void> {
  const root = join(work, "initramfs");
  const moduleDir = `/lib/modules/${kernel.version}`;
  await mkdir(join(root, "lib/shoal"), { recursive: true });
  const modules = kernel.unionRootModules.map((path) => ({
    path,
    copy: moduleCopy(root, kernel.version, path),
  }));
  for (const { copy } of modules) await mkdir(dirname(copy), { recursive: true });
  await image.dump(
    modules.map(({ path, copy }) => [`${moduleDir}/${path}`, copy] as const),
    0o644,
  );
  const loaded: string[] = [];
  for (const { path, copy } of modules) {
    const suffix = Object.keys(DECOMPRESSORS).find((s) => path.endsWith(s));
    if (suffix) {
      await runner.run({
        argv: [...(DECOMPRESSORS[suffix] ?? []), copy] as [string, ...string[]],
      });
    }
    loaded.push(`${kernel.version}/${suffix ? path.slice(0, -suffix.length) : path}`);
  }
  await writeFile(join(root, "lib/shoal/modules"), `${loaded.join("\n")}\n`);
  await copyFile(join(GUEST_DIR, "init"), join(root, "init"));
  await chmod(join(root, "init"), 0o755);
  await copyFile(join(GUEST_DIR, "union-root.sh"), join(root, "lib/shoal/union-root.sh"));

  const busybox = await pathExists("/bin/busybox");
  if (!busybox)
    throw new ShoalError("/bin/busybox is missing", {
      hint: "install busybox-static (scripts/setup does)",
    });
  const lddBusybox = await runner.run({
    argv: ["ldd", "/bin/busybox"],
    probe: true,
    okCodes: [1],
  });
  if (!`${lddBusybox.stdout}${lddBusybox.stderr}`.includes("not a dynamic executable")) {
    throw new ShoalError("/bin/busybox is not the static build", {
      hint: "install busybox-static (scripts/setup does)",
    });
  }
  const tools = ["/sbin/mke2fs", "/sbin/blkid"];
  const libraries = (await withLibraries(runner, tools)).filter((file) => !tools.includes(file));
  // The tools go where union-root.sh looks for them, out of the way of busybox's applets.
  const copies: [string, string, number][] = [
    ["/bin/busybox", "/bin/busybox", 0o755],
    ["/etc/mke2fs.conf", "/etc/mke2fs.conf", 0o644],
    ...tools.map((tool): [string, string, number] => [
      tool,
      `/lib/shoal/bin/${tool.slice(tool.lastIndexOf("/") + 1)}`,
      0o755,
    ]),
    ...libraries.map((library): [string, string, number] => [library, library, 0o755]),
  ];
  for (const [from, to, mode] of copies) {
    await mkdir(dirname(join(root, to)), { recursive: true });
    await copyFile(from, join(root, to));
    await chmod(join(root, to), mode);
  }
  await mkdir(join(root, "dev"), { recursive: true });
  // The kernel opens /dev/console for /init before anything can mount devtmpfs.
  await runner.run({ argv: ["mknod", "-m", "600", join(root, "dev/console"), "c", "5", "1"] });

  const cpio = `${out}.cpio`;
  const files = await listTree(root);
  await runner.run({
    argv: ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "-O", cpio],
    input: `${files.join("\n")}\n`,
    cwd: root,
  });
  await runner.run({ argv: ["gzip", "-9", "-n", cpio] });
  await rename(`${cpio}.gz`, out);
  await rm(root, { recursive: true, force: true });
}

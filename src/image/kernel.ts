import { allGuestModules } from "../backends/registry.js";
import {
  available,
  isKernelVersion,
  loadOrder,
  type ModuleIndex,
  parseModuleIndex,
  ROOT_FILESYSTEM_MODULES,
} from "../core/modules.js";
import { UserError } from "../errors.js";
import { type DirEntry, type Ext4Image, S_IFMT, S_IFREG } from "./ext4.js";

/**
 * What shoal's initramfs loads from a kernel's modules: every backend's block devices (one image
 * boots on any), the root's filesystems, and the memory and entropy devices this kernel has.
 */
export function unionRootModules(index: ModuleIndex): string[] {
  const guest = allGuestModules();
  return [
    ...guest.block,
    ...ROOT_FILESYSTEM_MODULES,
    ...available(index, [...guest.memory, ...guest.entropy, ...guest.dax]),
  ];
}

export interface ImageKernel {
  readonly version: string;
  /** Path of the kernel inside the image. */
  readonly kernel: string;
  /** Path of the image's own initramfs, when it has one (a regular file). */
  readonly initrd?: string;
  readonly modules: ModuleIndex;
  /**
   * What shoal's initramfs loads, in load order, relative to /lib/modules/VERSION: the union
   * root's modules and the memory devices the kernel has.
   */
  readonly unionRootModules: readonly string[];
}

/** Orders kernel versions such as 6.1.0-9-amd64 < 6.1.0-13-amd64 numerically, part by part. */
export function compareVersions(a: string, b: string): number {
  const parts = (version: string) => version.split(/(\d+)/).filter(Boolean);
  const [pa, pb] = [parts(a), parts(b)];
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const [x, y] = [pa[i] ?? "", pb[i] ?? ""];
    const difference =
      /^\d+$/.test(x) && /^\d+$/.test(y) ? Number(x) - Number(y) : x.localeCompare(y);
    if (difference !== 0) return difference;
  }
  return 0;
}

/** The newest version that has both /boot/vmlinuz-VERSION and /lib/modules/VERSION. */
export function newestKernel(
  bootFiles: readonly string[],
  moduleDirs: readonly string[],
): string | undefined {
  const withModules = new Set(moduleDirs);
  return bootFiles
    .map((name) => /^vmlinuz-(.+)$/.exec(name)?.[1])
    .filter((version): version is string => version !== undefined && withModules.has(version))
    .sort(compareVersions)
    .at(-1);
}

/**
 * The newest kernel in an image that has its modules too, and the modules the union root needs;
 * an image without either cannot boot through shoal and is refused.
 */
export async function findImageKernel(image: Ext4Image, label: string): Promise<ImageKernel> {
  const boot = (await image.list("/boot")) ?? [];
  const moduleDirs = ((await image.list("/lib/modules")) ?? []).map((entry) => entry.name);
  const version = newestKernel(
    boot.map((entry) => entry.name),
    moduleDirs,
  );
  if (!version) {
    throw new UserError(
      `no kernel found in ${label}: it needs /boot/vmlinuz-VERSION and /lib/modules/VERSION`,
      "install a kernel in the image (linux-image-amd64 on Debian)",
    );
  }
  if (!isKernelVersion(version)) {
    throw new UserError(
      `the kernel version ${JSON.stringify(version)} in ${label} is not one shoal takes`,
      "a kernel version is letters, digits and . _ + ~ - (as uname -r prints it)",
    );
  }
  const dir = `/lib/modules/${version}`;
  const parsed = parseModuleIndex(
    (await image.readFile(`${dir}/modules.dep`)) ?? "",
    (await image.readFile(`${dir}/modules.builtin`)) ?? "",
  );
  if (!parsed.ok) {
    const { file, line, entry } = parsed.bad;
    throw new UserError(
      `${dir}/${file} in ${label}, line ${line}: ${JSON.stringify(entry.slice(0, 200))} is not a module path`,
      "modules are .ko files below /lib/modules/VERSION, named without . or .. (depmod writes them so)",
    );
  }
  const modules = parsed.index;
  const order = loadOrder(modules, unionRootModules(modules));
  if (!order.ok) {
    const what = order.missing.includes("overlay")
      ? "no overlay support"
      : `no ${order.missing.join(", ")} module`;
    throw new UserError(
      `the kernel ${version} in ${label} has ${what}`,
      "shoal needs overlayfs, ext4 and virtio or Xen block drivers",
    );
  }
  const kernel = `vmlinuz-${version}`;
  if (!isRegularFile(boot, kernel)) {
    throw new UserError(
      `/boot/${kernel} in ${label} is not a regular file`,
      "shoal copies the kernel out of the image as a file, never through a link",
    );
  }
  const initrd = `initrd.img-${version}`;
  return {
    version,
    kernel: `/boot/${kernel}`,
    ...(isRegularFile(boot, initrd) ? { initrd: `/boot/${initrd}` } : {}),
    modules,
    unionRootModules: order.paths,
  };
}

/**
 * Boot files are copied out of the image as regular files only: asked to copy a link, debugfs
 * copies the link itself, not what it names.
 */
function isRegularFile(boot: readonly DirEntry[], name: string): boolean {
  const entry = boot.find((candidate) => candidate.name === name);
  return entry !== undefined && (entry.mode & S_IFMT) === S_IFREG;
}

/**
 * Kernel module resolution from an image's modules.dep, so shoal's initramfs carries exactly the
 * modules the union root needs and loads them in dependency order.
 */

/**
 * The modules the union root needs besides each backend's block devices: ext4 (and the crc32c it
 * asks for at mount), overlayfs.
 */
export const ROOT_FILESYSTEM_MODULES = ["crc32c_generic", "ext4", "overlay"];

/** The modules shoal's tiny image loads itself besides each backend's network: the power button `shoal down` presses. */
export const TINY_IMAGE_MODULES = ["button", "evdev"];

/** How a backend's guest sees its disks and network: the kernel modules for them. */
export interface GuestModules {
  readonly block: readonly string[];
  readonly net: readonly string[];
  /**
   * Devices that give the host memory back (virtio's balloon): loaded by shoal's initramfs when
   * the image's kernel has them; a kernel without them still boots, keeping all its memory.
   */
  readonly memory: readonly string[];
  /**
   * A source of randomness from the host (virtio's rng), loaded when the kernel has it: without
   * one, early users of getrandom() (mke2fs formatting a blank layer, sshd) wait seconds under
   * software emulation for the kernel to gather entropy of its own.
   */
  readonly entropy: readonly string[];
  /**
   * The device the base is mapped into the guest's memory with, for DAX (virtio-pmem), where the
   * backend has one; a kernel without them gets the base as a disk.
   */
  readonly dax: readonly string[];
}

/** "kernel/drivers/block/xen-blkfront.ko.xz" -> "xen_blkfront", as the kernel names modules. */
export function moduleName(path: string): string {
  const file = path.slice(path.lastIndexOf("/") + 1);
  return file.replace(/\.ko(\.(xz|zst|gz))?$/, "").replaceAll("-", "_");
}

export interface ModuleIndex {
  /** module name -> its path relative to /lib/modules/VERSION */
  readonly paths: ReadonlyMap<string, string>;
  /** module path -> the paths it depends on */
  readonly deps: ReadonlyMap<string, readonly string[]>;
  readonly builtin: ReadonlySet<string>;
}

/**
 * A kernel release as `uname -r` prints it (at most 64 characters there): one path component
 * under /lib/modules and /boot, so nothing else is allowed in it.
 */
export function isKernelVersion(version: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$/.test(version);
}

const MODULE_DIR = /^[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,254}$/;
const MODULE_FILE = /^[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,240}\.ko(\.(xz|zst|gz))?$/;

/**
 * Whether a module path from an image's modules.dep or modules.builtin is one shoal may use to
 * name a file: relative to /lib/modules/VERSION, plain directory names (no `..`, `.` or empty
 * ones), a .ko file, compressed or not. depmod writes nothing else; anything else is refused.
 */
export function isModulePath(path: string): boolean {
  const parts = path.split("/");
  const file = parts.pop() ?? "";
  return (
    path.length <= 1024 && MODULE_FILE.test(file) && parts.every((dir) => MODULE_DIR.test(dir))
  );
}

export interface BadModuleEntry {
  readonly file: "modules.dep" | "modules.builtin";
  /** 1-based */
  readonly line: number;
  readonly entry: string;
}

export type ParsedModules =
  | { readonly ok: true; readonly index: ModuleIndex }
  | { readonly ok: false; readonly bad: BadModuleEntry };

/** The module index of a kernel; the first path that is not a module path makes it unusable. */
export function parseModuleIndex(modulesDep: string, modulesBuiltin = ""): ParsedModules {
  const paths = new Map<string, string>();
  const deps = new Map<string, readonly string[]>();
  const depLines = modulesDep.split("\n");
  for (const [i, line] of depLines.entries()) {
    if (line.trim() === "") continue;
    const colon = line.indexOf(":");
    const path = colon < 0 ? line.trim() : line.slice(0, colon).trim();
    const needs =
      colon < 0
        ? []
        : line
            .slice(colon + 1)
            .trim()
            .split(/\s+/)
            .filter(Boolean);
    const bad = [path, ...needs].find((entry) => !isModulePath(entry));
    if (colon < 0 || bad !== undefined)
      return { ok: false, bad: { file: "modules.dep", line: i + 1, entry: bad ?? path } };
    paths.set(moduleName(path), path);
    deps.set(path, needs);
  }
  const builtin = new Set<string>();
  for (const [i, line] of modulesBuiltin.split("\n").entries()) {
    const path = line.trim();
    if (path === "") continue;
    if (!isModulePath(path))
      return { ok: false, bad: { file: "modules.builtin", line: i + 1, entry: path } };
    builtin.add(moduleName(path));
  }
  return { ok: true, index: { paths, deps, builtin } };
}

export type LoadOrder = { ok: true; paths: string[] } | { ok: false; missing: string[] };

/**
 * The module files to load for `wanted`, each after its dependencies; built-in modules need no
 * file. A module that is neither a file nor built in is missing.
 */
export function loadOrder(index: ModuleIndex, wanted: readonly string[]): LoadOrder {
  const ordered: string[] = [];
  const seen = new Set<string>();
  const visit = (path: string) => {
    if (seen.has(path)) return;
    seen.add(path);
    for (const dep of index.deps.get(path) ?? []) visit(dep);
    ordered.push(path);
  };
  const missing: string[] = [];
  for (const name of wanted.map(moduleName)) {
    const path = index.paths.get(name);
    if (path) visit(path);
    else if (!index.builtin.has(name)) missing.push(name);
  }
  return missing.length > 0 ? { ok: false, missing } : { ok: true, paths: ordered };
}

/** The modules of `wanted` that `index` has, as modules or built in (the others are left out). */
export function available(index: ModuleIndex, wanted: readonly string[]): string[] {
  return wanted.filter((name) => loadOrder(index, [name]).ok);
}

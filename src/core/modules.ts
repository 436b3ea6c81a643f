/**
 * Kernel module resolution from an image's modules.dep, so shoal's initramfs carries exactly the
 * modules the union root needs and loads them in dependency order.
 */

/** The modules the union root needs: virtio and Xen block devices, ext4 (and the crc32c it asks for at mount), overlayfs. */
export const UNION_ROOT_MODULES = [
  "virtio_pci",
  "virtio_blk",
  "xen_blkfront",
  "crc32c_generic",
  "ext4",
  "overlay",
];

/** The modules shoal's tiny image loads itself: its network, and the power button `shoal down` presses. */
export const TINY_IMAGE_MODULES = ["virtio_net", "xen_netfront", "button", "evdev"];

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

export function parseModuleIndex(modulesDep: string, modulesBuiltin = ""): ModuleIndex {
  const paths = new Map<string, string>();
  const deps = new Map<string, readonly string[]>();
  for (const line of modulesDep.split("\n")) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    const path = line.slice(0, colon).trim();
    paths.set(moduleName(path), path);
    deps.set(
      path,
      line
        .slice(colon + 1)
        .trim()
        .split(/\s+/)
        .filter(Boolean),
    );
  }
  const builtin = new Set(modulesBuiltin.split("\n").filter(Boolean).map(moduleName));
  return { paths, deps, builtin };
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

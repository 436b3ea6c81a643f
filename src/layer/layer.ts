import { open, rename, rm } from "node:fs/promises";
import { SEED_PATHS } from "../core/seed.js";
import type { Runner } from "../host/runner.js";
import { differingPaths, differingTrees } from "../image/compare.js";
import {
  type DirEntry,
  Ext4Image,
  inodeSpec,
  ROOT_INODE,
  S_IFCHR,
  S_IFDIR,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
} from "../image/ext4.js";

/**
 * A VM's layer on the host: a sparse raw file the guest formats on first boot (shoal's init does
 * that for a device with no signature at all). Inside: upper/ and work/ for overlayfs, and
 * shoal/base-id naming the base the layer was made over.
 */
export const LAYER_UPPER = "/upper";

/** Creates a layer of `sizeBytes` that takes no disk space until the guest writes to it. */
export async function createLayer(path: string, sizeBytes: number): Promise<void> {
  const handle = await open(path, "wx", 0o600);
  try {
    await handle.truncate(sizeBytes);
  } finally {
    await handle.close();
  }
}

/**
 * Replays the layer's journal, so that reading it from the host sees what the VM last wrote: a VM
 * that powers off without unmounting its layer (the union root above it stays busy) leaves its
 * latest changes in the journal, which debugfs does not read. Only for a VM that is not running.
 */
export async function settleLayer(runner: Runner, layer: string, copy = false): Promise<void> {
  // e2fsck exits 1 when it changed something (here: replayed the journal). On a copy it changes
  // nothing of the VM's, so it runs in a dry run too.
  await runner.run({
    argv: ["e2fsck", "-E", "journal_only", "-p", layer],
    okCodes: [1],
    probe: copy,
  });
}

/** Whether the guest formatted the layer yet (ext4's magic number in its superblock). */
export async function layerFormatted(path: string): Promise<boolean> {
  const handle = await open(path, "r");
  try {
    const { buffer, bytesRead } = await handle.read({ buffer: Buffer.alloc(2), position: 0x438 });
    return bytesRead === 2 && buffer.readUInt16LE(0) === 0xef53;
  } finally {
    await handle.close();
  }
}

/** The id of the base the layer was made over, as the VM's init recorded it on the layer. */
export async function layerBaseId(runner: Runner, layer: string): Promise<string | undefined> {
  const id = (await new Ext4Image(runner, layer).readFile("/shoal/base-id"))?.trim();
  return id !== undefined && /^[0-9a-f]{64}$/.test(id) ? id : undefined;
}

/**
 * Replaces a layer by an empty one of `sizeBytes`, in one rename: a shoal killed meanwhile leaves
 * either the old layer or the new one.
 */
export async function replaceLayer(path: string, sizeBytes: number): Promise<void> {
  const fresh = `${path}.reset.shoal-tmp`;
  await rm(fresh, { force: true });
  await createLayer(fresh, sizeBytes);
  await rename(fresh, path);
}

/** A file as the VM changed it, read from its layer without booting the VM; undefined if the VM did not change it. */
export async function readLayerFile(
  runner: Runner,
  layer: string,
  path: string,
): Promise<string | undefined> {
  await settleLayer(runner, layer);
  return new Ext4Image(runner, layer).readFile(`${LAYER_UPPER}${path}`);
}

/**
 * The changes that are the VM's own: without the identity files its seed writes at every boot,
 * and without directories that hold nothing but those.
 */
export function withoutIdentity(changes: readonly LayerChange[]): LayerChange[] {
  const identity = new Set(SEED_PATHS.map((path) => `/${path}`));
  const holders = new Set(
    SEED_PATHS.flatMap((path) =>
      path
        .split("/")
        .slice(0, -1)
        .map((_, i, parts) => `/${parts.slice(0, i + 1).join("/")}`),
    ),
  );
  const isOwn = (change: LayerChange) => !identity.has(change.path);
  return changes.filter((change) => {
    if (!isOwn(change)) return false;
    if (change.type !== "dir" || change.change !== "added" || !holders.has(change.path))
      return true;
    // An added directory on the way to an identity file counts if the VM put anything else in it.
    return changes.some(
      (other) =>
        other.path.startsWith(`${change.path}/`) && isOwn(other) && !holders.has(other.path),
    );
  });
}

export type ChangeKind = "added" | "modified" | "deleted" | "replaced";

export interface LayerChange {
  /** The path in the VM. */
  readonly path: string;
  readonly change: ChangeKind;
  readonly type: "file" | "dir" | "symlink" | "other";
  readonly size: number;
}

function typeOf(entry: DirEntry): LayerChange["type"] {
  const format = entry.mode & S_IFMT;
  if (format === S_IFDIR) return "dir";
  if (format === S_IFLNK) return "symlink";
  return format === S_IFREG ? "file" : "other";
}

const join = (dir: string, name: string) => (dir === "/" ? `/${name}` : `${dir}/${name}`);

/**
 * What a layer changed relative to its base, without booting the VM: files added and modified,
 * files deleted (overlayfs whiteouts: character devices 0/0) and directories replaced (opaque
 * directories hide everything the base had in them). Reads both images level by level, one
 * debugfs run per image and level, addressing every directory and file by inode: the guest chose
 * the names, which may hold quotes, newlines or bytes that are not UTF-8. The layer is read as it
 * is: settle it (`settleLayer`) first.
 */
export async function listLayerChanges(
  runner: Runner,
  layer: string,
  base: string,
): Promise<LayerChange[]> {
  const upper = new Ext4Image(runner, layer);
  const lower = new Ext4Image(runner, base);
  const changes: LayerChange[] = [];
  const upperRoot = (await upper.lookup([LAYER_UPPER]))[0];
  if (upperRoot === undefined || (upperRoot.mode & S_IFMT) !== S_IFDIR) return [];
  // Directories to descend into: the layer's, and the base's where its view of them still counts.
  let level: { dir: string; inode: number; baseInode: number | undefined }[] = [
    { dir: "/", inode: upperRoot.inode, baseInode: ROOT_INODE },
  ];
  while (level.length > 0) {
    const upperListings = await upper.listMany(level.map(({ inode }) => inode));
    const inBase = level.filter(({ baseInode }) => baseInode !== undefined);
    const baseListings = new Map(
      (await lower.listMany(inBase.map(({ baseInode }) => baseInode ?? ROOT_INODE))).map(
        (listing, i) => [inBase[i]?.dir, listing],
      ),
    );
    const next: typeof level = [];
    const whiteoutCandidates: { path: string; entry: DirEntry; hidden: DirEntry | undefined }[] =
      [];
    const opaqueCandidates: { path: string; inode: number }[] = [];
    level.forEach(({ dir }, i) => {
      const inBaseNames = new Map(
        (baseListings.get(dir) ?? []).map((entry) => [entry.name, entry]),
      );
      for (const entry of upperListings[i] ?? []) {
        const path = join(dir, entry.name);
        const hidden = inBaseNames.get(entry.name);
        const type = typeOf(entry);
        if ((entry.mode & S_IFMT) === S_IFCHR) {
          whiteoutCandidates.push({ path, entry, hidden });
        } else if (type === "dir") {
          if (hidden) opaqueCandidates.push({ path, inode: entry.inode });
          else changes.push({ path, change: "added", type, size: 0 });
          const baseDir = hidden && typeOf(hidden) === "dir" ? hidden.inode : undefined;
          next.push({ dir: path, inode: entry.inode, baseInode: baseDir });
        } else {
          changes.push({ path, change: hidden ? "modified" : "added", type, size: entry.size });
        }
      }
    });
    const devices = await upper.each(
      whiteoutCandidates.map(({ entry }) => `stat ${inodeSpec(entry.inode)}`),
    );
    whiteoutCandidates.forEach(({ path, entry, hidden }, i) => {
      const whiteout = /Device major\/minor number: 00:00/.test(devices[i] ?? "");
      // A whiteout stands for what it hides: report the deleted file's type and size.
      const shown = whiteout && hidden ? hidden : entry;
      changes.push({
        path,
        change: whiteout ? "deleted" : "added",
        type: typeOf(shown),
        size: whiteout ? shown.size : 0,
      });
    });
    const opaque = await upper.each(
      opaqueCandidates.map(({ inode }) => `ea_get ${inodeSpec(inode)} trusted.overlay.opaque`),
    );
    opaqueCandidates.forEach(({ path }, i) => {
      if (/= "y"/.test(opaque[i] ?? "")) {
        changes.push({ path, change: "replaced", type: "dir", size: 0 });
        const child = next.find((item) => item.dir === path);
        if (child) child.baseInode = undefined;
      }
    });
    level = next;
  }
  return changes.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/**
 * The VM's own changes that hide what the new base changed: a file it modified, added or deleted
 * that is not the same in both bases, or a directory it deleted or replaced under which the bases
 * differ. Moving the VM to the new base keeps its version, so the user must see these before.
 */
export async function upgradeConflicts(
  runner: Runner,
  layer: string,
  oldBase: string,
  newBase: string,
  scratch: string,
): Promise<LayerChange[]> {
  const changes = withoutIdentity(await listLayerChanges(runner, layer, oldBase));
  const files = changes.filter((change) => change.type !== "dir").map((change) => change.path);
  // A directory the VM deleted or replaced hides everything the new base has below it.
  const hidden = changes
    .filter(
      (change) =>
        change.type === "dir" && (change.change === "deleted" || change.change === "replaced"),
    )
    .map((change) => change.path);
  const [differing, differingBelow] = await Promise.all([
    differingPaths(runner, oldBase, newBase, files, scratch),
    differingTrees(runner, oldBase, newBase, hidden),
  ]);
  return changes.filter((change) => differing.has(change.path) || differingBelow.has(change.path));
}

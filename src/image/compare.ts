import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import type { Runner } from "../host/runner.js";
import { Ext4Image, inodeSpec, S_IFDIR, S_IFMT } from "./ext4.js";

/** A path in an image as debugfs's `stat` shows it; undefined output: no such path. */
export interface EntryInfo {
  readonly type: string;
  readonly mode: string;
  readonly size: number;
  /** uid:gid */
  readonly owner: string;
  /** A symlink's target (fast links only; longer ones compare by content). */
  readonly target?: string;
}

export function parseStat(output: string): EntryInfo | undefined {
  const type = /Type: (\S+)/.exec(output)?.[1];
  if (type === undefined) return undefined;
  // The last line, printed raw: a target may hold quotes and newlines.
  const target = /Fast link dest: "(.*)"\n*$/s.exec(output)?.[1];
  const owner = /User:\s+(\d+)\s+Group:\s+(\d+)/.exec(output);
  return {
    type,
    mode: /Mode:\s+(\d+)/.exec(output)?.[1] ?? "",
    owner: `${owner?.[1] ?? ""}:${owner?.[2] ?? ""}`,
    size: Number(/Size: (\d+)/.exec(output)?.[1] ?? -1),
    ...(target === undefined ? {} : { target }),
  };
}

/**
 * The paths whose file differs between two images: there in one only, another type, mode, owner,
 * size or link target, or other content (compared by sha256 when all the rest is equal). The
 * files to hash are copied out into `scratch`, a directory made and removed here.
 */
export async function differingPaths(
  runner: Runner,
  oldImage: string,
  newImage: string,
  paths: readonly string[],
  scratch: string,
): Promise<Set<string>> {
  const before = new Ext4Image(runner, oldImage);
  const after = new Ext4Image(runner, newImage);
  // The paths come from a guest's layer: looked up name by name, then addressed by inode.
  const [oldInodes, newInodes] = await Promise.all(
    [before, after].map(async (image) => (await image.lookup(paths)).map((entry) => entry?.inode)),
  );
  const stat = async (image: Ext4Image, inodes: readonly (number | undefined)[]) => {
    const found = inodes.filter((inode): inode is number => inode !== undefined);
    const outputs = await image.each(found.map((inode) => `stat ${inodeSpec(inode)}`));
    const byInode = new Map(found.map((inode, i) => [inode, parseStat(outputs[i] ?? "")]));
    return inodes.map((inode) => (inode === undefined ? undefined : byInode.get(inode)));
  };
  const [olds, news] = await Promise.all([
    stat(before, oldInodes ?? []),
    stat(after, newInodes ?? []),
  ]);
  const differing = new Set<string>();
  const sameShape: { path: string; old: number; new: number }[] = [];
  paths.forEach((path, i) => {
    const [a, b] = [olds[i], news[i]];
    if (a === undefined && b === undefined) return;
    if (
      !a ||
      !b ||
      a.type !== b.type ||
      a.mode !== b.mode ||
      a.owner !== b.owner ||
      a.size !== b.size ||
      a.target !== b.target
    ) {
      differing.add(path);
    } else if (a.type === "regular" || (a.type === "symlink" && a.target === undefined)) {
      sameShape.push({ path, old: oldInodes?.[i] ?? 0, new: newInodes?.[i] ?? 0 });
    }
  });
  if (sameShape.length > 0) {
    // The copies hold what the images hold (a layer's /etc/shadow too): root's only.
    await mkdir(scratch, { mode: 0o700 });
    try {
      const hashes = async (image: Ext4Image, tag: "old" | "new") => {
        const files = sameShape.map(
          (file, i) => [file[tag], join(scratch, `${tag}-${i}`)] as const,
        );
        await image.dump(files, 0o600);
        const digests: string[] = [];
        // One file at a time, streamed: a base may hold files larger than memory.
        for (const [, file] of files) {
          const hash = createHash("sha256");
          await pipeline(createReadStream(file), hash);
          digests.push(hash.digest("hex"));
        }
        return digests;
      };
      const [a, b] = await Promise.all([hashes(before, "old"), hashes(after, "new")]);
      sameShape.forEach(({ path }, i) => {
        if (a[i] !== b[i]) differing.add(path);
      });
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  }
  return differing;
}

/**
 * Every entry under each directory (path, mode, owner, size), read level by level with one debugfs run
 * per level, by inode; undefined for a directory the image does not have.
 */
async function treesOf(
  image: Ext4Image,
  roots: readonly string[],
): Promise<(string | undefined)[]> {
  const lines: (string[] | undefined)[] = roots.map(() => []);
  let level: { dir: string; inode: number; root: number }[] = [];
  (await image.lookup(roots)).forEach((entry, root) => {
    if (entry && (entry.mode & S_IFMT) === S_IFDIR) {
      level.push({ dir: roots[root] ?? "", inode: entry.inode, root });
    } else lines[root] = undefined;
  });
  while (level.length > 0) {
    const listings = await image.listMany(level.map((item) => item.inode));
    const next: typeof level = [];
    level.forEach(({ dir, root }, i) => {
      for (const entry of listings[i] ?? []) {
        const path = `${dir}/${entry.name}`;
        lines[root]?.push(`${path} ${entry.mode.toString(8)} ${entry.owner} ${entry.size}`);
        if ((entry.mode & S_IFMT) === S_IFDIR) next.push({ dir: path, inode: entry.inode, root });
      }
    });
    level = next;
  }
  // As JSON: a name may hold a newline, which must not make two trees read the same.
  return lines.map((tree) => (tree === undefined ? undefined : JSON.stringify(tree.sort())));
}

/**
 * The directories whose trees differ between two images (an entry added, removed, or of another
 * mode, owner or size anywhere below; contents of the same size are not compared): what a layer
 * that deleted or replaced the directory hides.
 */
export async function differingTrees(
  runner: Runner,
  oldImage: string,
  newImage: string,
  dirs: readonly string[],
): Promise<Set<string>> {
  const [olds, news] = await Promise.all([
    treesOf(new Ext4Image(runner, oldImage), dirs),
    treesOf(new Ext4Image(runner, newImage), dirs),
  ]);
  return new Set(dirs.filter((_, i) => olds[i] !== news[i]));
}

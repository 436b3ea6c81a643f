import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import type { Runner } from "../host/runner.js";
import { debugfsQuote, Ext4Image, S_IFDIR, S_IFMT } from "./ext4.js";

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
  const target = /Fast link dest: "(.*)"/.exec(output)?.[1];
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
  const stat = (image: Ext4Image) =>
    image
      .each(paths.map((path) => `stat ${debugfsQuote(path)}`))
      .then((outputs) => outputs.map(parseStat));
  const [olds, news] = await Promise.all([stat(before), stat(after)]);
  const differing = new Set<string>();
  const sameShape: string[] = [];
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
      sameShape.push(path);
    }
  });
  if (sameShape.length > 0) {
    // The copies hold what the images hold (a layer's /etc/shadow too): root's only.
    await mkdir(scratch, { mode: 0o700 });
    try {
      const hashes = async (image: Ext4Image, tag: string) => {
        const files = sameShape.map((path, i) => [path, join(scratch, `${tag}-${i}`)] as const);
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
      sameShape.forEach((path, i) => {
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
 * per level; undefined for a directory the image does not have.
 */
async function treesOf(
  image: Ext4Image,
  roots: readonly string[],
): Promise<(string | undefined)[]> {
  const lines: (string[] | undefined)[] = roots.map(() => []);
  let level = roots.map((dir, root) => ({ dir, root }));
  while (level.length > 0) {
    const listings = await image.listMany(level.map((item) => item.dir));
    const next: typeof level = [];
    level.forEach(({ dir, root }, i) => {
      const entries = listings[i];
      if (entries === undefined) {
        if (dir === roots[root]) lines[root] = undefined;
        return;
      }
      for (const entry of entries) {
        const path = `${dir}/${entry.name}`;
        lines[root]?.push(`${path} ${entry.mode.toString(8)} ${entry.owner} ${entry.size}`);
        if ((entry.mode & S_IFMT) === S_IFDIR) next.push({ dir: path, root });
      }
    });
    level = next;
  }
  return lines.map((tree) => tree?.sort().join("\n"));
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

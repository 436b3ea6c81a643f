import { createHash } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Runner } from "../host/runner.js";
import { debugfsQuote, Ext4Image } from "./ext4.js";

/** A path in an image as debugfs's `stat` shows it; undefined output: no such path. */
export interface EntryInfo {
  readonly type: string;
  readonly mode: string;
  readonly size: number;
  /** A symlink's target (fast links only; longer ones compare by content). */
  readonly target?: string;
}

export function parseStat(output: string): EntryInfo | undefined {
  const type = /Type: (\S+)/.exec(output)?.[1];
  if (type === undefined) return undefined;
  const target = /Fast link dest: "(.*)"/.exec(output)?.[1];
  return {
    type,
    mode: /Mode:\s+(\d+)/.exec(output)?.[1] ?? "",
    size: Number(/Size: (\d+)/.exec(output)?.[1] ?? -1),
    ...(target === undefined ? {} : { target }),
  };
}

/**
 * The paths whose file differs between two images: there in one only, another type, mode, size
 * or link target, or other content (compared by sha256 when all the rest is equal).
 */
export async function differingPaths(
  runner: Runner,
  oldImage: string,
  newImage: string,
  paths: readonly string[],
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
      a.size !== b.size ||
      a.target !== b.target
    ) {
      differing.add(path);
    } else if (a.type === "regular" || (a.type === "symlink" && a.target === undefined)) {
      sameShape.push(path);
    }
  });
  if (sameShape.length > 0) {
    const scratch = await mkdtemp(join(tmpdir(), "shoal-compare-"));
    try {
      const hashes = async (image: Ext4Image, tag: string) => {
        const files = sameShape.map((path, i) => [path, join(scratch, `${tag}-${i}`)] as const);
        await image.dump(files);
        return Promise.all(
          files.map(async ([, file]) =>
            createHash("sha256")
              .update(await readFile(file))
              .digest("hex"),
          ),
        );
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

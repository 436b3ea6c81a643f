import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { DAX_BLOCK_SIZE, daxAlignedMiB } from "../core/dax.js";
import type { Runner } from "../host/runner.js";

const MiB = 1024 * 1024;

/**
 * Makes a raw ext4 image from a directory tree, without mounting anything (mkfs.ext4 -d). The
 * base is only ever mounted read-only, so it needs no journal and no reserved blocks; its size is
 * the tree's with room for metadata. Its blocks and size are the ones a guest can map for DAX
 * (mkfs.ext4 would choose 1 KiB blocks below 512 MiB).
 */
export async function imageFromTree(runner: Runner, tree: string, out: string): Promise<void> {
  const { stdout } = await runner.run({
    argv: ["du", "-s", "-B1", "--apparent-size", tree],
    probe: true,
  });
  const bytes = Number(stdout.split(/\s/)[0]);
  const { stdout: inodes } = await runner.run({
    argv: ["du", "-s", "--inodes", tree],
    probe: true,
  });
  const files = Number(inodes.split(/\s/)[0]);
  const sizeMiB = daxAlignedMiB(Math.ceil((bytes * 1.2 + files * 4096 + 32 * MiB) / MiB));
  await runner.run({
    argv: [
      "mkfs.ext4",
      "-q",
      "-F",
      "-t",
      "ext4",
      "-b",
      String(DAX_BLOCK_SIZE),
      "-L",
      "shoal-base",
      "-O",
      "^has_journal",
      "-m",
      "0",
      "-N",
      String(files + 4096),
      "-E",
      "root_owner=0:0",
      "-d",
      tree,
      out,
      `${sizeMiB}M`,
    ],
  });
}

/**
 * A raw image in `staging` from a tree that `fill` writes into an empty directory; the tree is
 * removed once the image holds it.
 */
export async function rawFromTree(
  runner: Runner,
  staging: string,
  fill: (tree: string) => Promise<void>,
): Promise<string> {
  const tree = join(staging, "tree");
  const raw = join(staging, "raw.img");
  await mkdir(tree, { recursive: true });
  await fill(tree);
  await imageFromTree(runner, tree, raw);
  await rm(tree, { recursive: true, force: true });
  return raw;
}

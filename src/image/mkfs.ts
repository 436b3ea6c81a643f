import type { Runner } from "../host/runner.js";

const MiB = 1024 * 1024;

/**
 * Makes a raw ext4 image from a directory tree, without mounting anything (mkfs.ext4 -d). The
 * base is only ever mounted read-only, so it needs no journal and no reserved blocks; its size is
 * the tree's with room for metadata.
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
  const sizeMiB = Math.ceil((bytes * 1.2 + files * 4096 + 32 * MiB) / MiB);
  await runner.run({
    argv: [
      "mkfs.ext4",
      "-q",
      "-F",
      "-t",
      "ext4",
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

import { chmod, copyFile, mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { SEED_PATHS } from "../core/seed.js";
import { ShoalError } from "../errors.js";
import { type Command, CommandFailed, type Runner } from "../host/runner.js";
import { debugfsQuote, Ext4Image } from "./ext4.js";
import { imageFromTree } from "./mkfs.js";

/** From dist/image/ and src/image/ alike. */
const WITH_ROOT = fileURLToPath(new URL("../../src/image/with-root.sh", import.meta.url));

/** An image's root put together from a base and what goes above it (see with-root.sh). */
interface RootView {
  readonly base: string;
  /** A VM's layer image, or an overlayfs upper directory, read-only above the base. */
  readonly layer?: string;
  /** Takes the command's writes. */
  readonly upper?: string;
  /** /proc, /sys, /dev, DNS: for running the image's programs. */
  readonly system?: boolean;
  /** Shown at /run/shoal inside. */
  readonly share?: string;
}

/** Runs `argv` (which may name `root`) while `root` holds the view, in a mount namespace of its own. */
function inRoot(
  runner: Runner,
  root: string,
  view: RootView,
  argv: readonly string[],
  extra: Omit<Command, "argv"> = {},
) {
  return runner.run({
    ...extra,
    argv: [
      "unshare",
      "--mount",
      "--pid",
      "--propagation",
      "private",
      "--fork",
      "--kill-child",
      "--",
      "sh",
      WITH_ROOT,
      root,
      view.base,
      view.layer ?? "-",
      view.upper ?? "-",
      view.system ? "system" : "-",
      view.share ?? "-",
      "--",
      ...argv,
    ],
  });
}

export type Change = { readonly run: string } | { readonly script: string };

/**
 * A raw image in `staging`: the base with `change` applied, run as root by the image's own
 * programs in a chroot (with the host's network and DNS, so `apt-get install` works). The base is
 * only read: the change's writes go to an overlayfs upper directory in `staging`, and the new
 * image is made from the combined tree.
 */
export async function derivedSource(
  runner: Runner,
  staging: string,
  base: string,
  change: Change,
  onOutput: (chunk: Buffer) => void,
): Promise<string> {
  const root = join(staging, "root");
  const changes = join(staging, "changes");
  const share = join(staging, "share");
  await mkdir(share, { recursive: true });
  let argv: string[];
  if ("run" in change) {
    argv = ["chroot", root, "/bin/sh", "-c", change.run];
  } else {
    await copyFile(change.script, join(share, "script"));
    await chmod(join(share, "script"), 0o755);
    argv = ["chroot", root, "/run/shoal/script"];
  }
  await inRoot(runner, root, { base, upper: changes, system: true, share }, argv, {
    onOutput: (_stream, chunk) => onOutput(chunk),
  }).catch((error: unknown) => {
    if (!(error instanceof CommandFailed)) throw error;
    throw new ShoalError(
      `the change failed in the copy of the image (exit code ${error.code}); no image was made`,
      { hint: "its output is above" },
    );
  });
  const raw = join(staging, "raw.img");
  await imageOfView(runner, root, { base, layer: join(changes, "upper") }, raw);
  await rm(changes, { recursive: true, force: true });
  await rm(share, { recursive: true, force: true });
  return raw;
}

/** Makes a raw image from what a view shows, sized as for any tree shoal makes an image from. */
async function imageOfView(runner: Runner, root: string, view: RootView, out: string) {
  // imageFromTree measures and fills from one path: both run while the view is put together.
  await imageFromTree(
    {
      run: (command) => inRoot(runner, root, view, command.argv, command),
    },
    root,
    out,
  );
}

/**
 * A raw image in `staging` from a stopped VM: its layer folded into its base, as the VM sees its
 * root, without the identity files its seed wrote (the base's own versions stay).
 */
export async function committedSource(
  runner: Runner,
  staging: string,
  base: string,
  layer: string,
): Promise<string> {
  const raw = join(staging, "raw.img");
  await imageOfView(runner, join(staging, "root"), { base, layer }, raw);
  const paths = SEED_PATHS.map((relative) => `/${relative}`);
  const image = new Ext4Image(runner, raw);
  const [inImage, inBase] = await Promise.all(
    [image, new Ext4Image(runner, base)].map((from) =>
      from.each(paths.map((path) => `stat ${debugfsQuote(path)}`)),
    ),
  );
  // The seed's files as the VM had them go; the base's own versions (if it had any) come back.
  const kept = join(staging, "kept");
  await mkdir(kept);
  const restored = paths
    .map((path, i) => ({
      path,
      host: join(kept, String(i)),
      there: /Type: /.test(inBase?.[i] ?? ""),
    }))
    .filter((file) => file.there);
  await new Ext4Image(runner, base).dump(restored.map(({ path, host }) => [path, host] as const));
  await image.edit([
    ...paths
      .filter((_, i) => /Type: /.test(inImage?.[i] ?? ""))
      .map((path) => `rm ${debugfsQuote(path)}`),
    ...restored.map(({ path, host }) => `write ${debugfsQuote(host)} ${debugfsQuote(path)}`),
  ]);
  await rm(kept, { recursive: true, force: true });
  return raw;
}

import { chmod, copyFile, mkdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { packagePath } from "../assets.js";
import { SEED_PATHS } from "../core/seed.js";
import { SANDBOX_IDS, subordinateStart } from "../core/subids.js";
import { ShoalError } from "../errors.js";
import { ifExists } from "../host/paths.js";
import { type Command, CommandFailed, type Runner } from "../host/runner.js";
import { debugfsQuote, Ext4Image } from "./ext4.js";
import { imageFromTree } from "./mkfs.js";

const WITH_ROOT = packagePath("src/image/with-root.sh");

/** How with-root.sh puts an image's root together, and for what. */
type RootView =
  | {
      /** A read-only tree for host programs (du, mkfs.ext4 -d) to read. */
      readonly kind: "view";
      readonly base: string;
      /** A VM's layer image, or a sandbox's upper directory, read-only above the base. */
      readonly layer?: string;
      /** The layer is a sandbox's upper directory, owned by its ids. */
      readonly ids?: SandboxIds;
    }
  | {
      /** The image's own program, run as its root in a sandbox (see with-root.sh). */
      readonly kind: "sandbox";
      readonly base: string;
      /** Takes the command's writes: CHANGES/upper, CHANGES/work. */
      readonly changes: string;
      /** Shown at /run/shoal inside. */
      readonly share: string | undefined;
      readonly ids: SandboxIds;
    };

/** The host uid and gid that are root in a derive's sandbox; 0..65535 inside are these on. */
export interface SandboxIds {
  readonly uid: number;
  readonly gid: number;
}

/** with-root.sh's arguments before the command. */
function withRootArgs(root: string, view: RootView): string[] {
  const ids = (ids: SandboxIds) => `${ids.uid}:${ids.gid}`;
  return view.kind === "view"
    ? ["view", root, view.base, view.layer ?? "-", view.ids ? ids(view.ids) : "-"]
    : ["sandbox", root, view.base, view.changes, view.share ?? "-", ids(view.ids)];
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
      // with-root.sh reads /proc/PID of its own children.
      "--mount-proc",
      "--",
      "sh",
      WITH_ROOT,
      ...withRootArgs(root, view),
      "--",
      ...argv,
    ],
  });
}

/** Root's subordinate ids, which a derive's sandbox runs as. */
export async function sandboxIds(files = { uid: "/etc/subuid", gid: "/etc/subgid" }) {
  const root = { name: "root", id: 0 };
  const [uid, gid] = await Promise.all(
    [files.uid, files.gid].map(async (file) =>
      subordinateStart((await ifExists(readFile(file, "utf8"))) ?? "", root),
    ),
  );
  if (uid === undefined || gid === undefined) {
    throw new ShoalError(
      `image derive runs the image's programs as an unprivileged host user: root needs ${SANDBOX_IDS} subordinate ids above 65535 in ${files.uid} and ${files.gid}`,
      {
        hint: `run scripts/setup, or add a line such as root:1879048192:${SANDBOX_IDS} to both`,
      },
    );
  }
  return { uid, gid };
}

export type Change = { readonly run: string } | { readonly script: string };

/**
 * A raw image in `staging`: the base with `change` applied, run as root of the image by its own
 * programs in a sandbox (see with-root.sh: an unprivileged host user, no host devices, /proc or
 * /sys, the host's network and DNS so `apt-get install` works). The base is only read: the
 * change's writes go to an overlayfs upper directory in `staging`, and the new image is made
 * from the combined tree, its owners shifted back.
 */
export async function derivedSource(
  runner: Runner,
  staging: string,
  base: string,
  change: Change,
  onOutput: (chunk: Buffer) => void,
): Promise<string> {
  const ids = await sandboxIds();
  const root = join(staging, "root");
  const changes = join(staging, "changes");
  let argv: string[];
  let share: string | undefined;
  if ("run" in change) {
    argv = ["/bin/sh", "-c", change.run];
  } else {
    share = join(staging, "share");
    await mkdir(share, { recursive: true });
    await copyFile(change.script, join(share, "script"));
    await chmod(join(share, "script"), 0o755);
    argv = ["/run/shoal/script"];
  }
  await inRoot(runner, root, { kind: "sandbox", base, changes, share, ids }, argv, {
    onOutput: (_stream, chunk) => onOutput(chunk),
  }).catch((error: unknown) => {
    if (!(error instanceof CommandFailed)) throw error;
    throw new ShoalError(
      `the change failed in the copy of the image (exit code ${error.code}); no image was made`,
      { hint: "its output is above" },
    );
  });
  const raw = join(staging, "raw.img");
  await imageOfView(runner, root, { kind: "view", base, layer: join(changes, "upper"), ids }, raw);
  await rm(changes, { recursive: true, force: true });
  if (share) await rm(share, { recursive: true, force: true });
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
  await imageOfView(runner, join(staging, "root"), { kind: "view", base, layer }, raw);
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

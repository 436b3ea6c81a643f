import { execFile } from "node:child_process";
import { mkdir, readFile, readlink, stat, symlink } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { expect, inject } from "vitest";
import type { ImageMeta } from "../../src/image/store.js";
import { stateLayout } from "../../src/state/layout.js";
import { shoal } from "./cli.js";

const exec = promisify(execFile);

/**
 * A build the end-to-end files share: `shoal image build` with these arguments. Builds with
 * another `copy` number are made separately, for a test that needs two images with different ids.
 */
export interface SharedBuild {
  readonly from: "busybox" | "debian:bookworm";
  readonly hook?: "initramfs-tools";
  readonly copy?: number;
}

/** Each distinct build is made once per run, in a state directory of its own in the run's cache. */
async function cachedBuild(build: SharedBuild): Promise<{ state: string; id: string }> {
  const key = [build.from.replace(":", "-"), build.hook ?? "plain", build.copy ?? 1].join("-");
  const state = join(inject("imageCache"), key);
  const link = join(stateLayout(state).imageNames, "image");
  const known = await readlink(link).catch(() => undefined);
  if (known === undefined) {
    await mkdir(state, { recursive: true });
    const built = await shoal([
      "--state-dir",
      state,
      "image",
      "build",
      "image",
      "--from",
      build.from,
      ...(build.hook ? ["--hook", build.hook] : []),
    ]);
    expect(built.code, built.stderr).toBe(0);
  }
  const id = (await readlink(link)).replace(/^\.\.\//, "");
  return { state, id };
}

/**
 * Puts a shared build into `state`'s image store under `name`, as `shoal image build` would have
 * left it there (a copy: a file's tests may not change another file's base); its metadata.
 */
export async function sharedImage(
  state: string,
  name: string,
  build: SharedBuild,
): Promise<ImageMeta> {
  const cached = await cachedBuild(build);
  const to = stateLayout(state);
  const target = to.image(cached.id).dir;
  if (!(await stat(target).catch(() => undefined))) {
    await mkdir(to.images, { recursive: true, mode: 0o755 });
    await exec("cp", [
      "-a",
      "--reflink=auto",
      stateLayout(cached.state).image(cached.id).dir,
      target,
    ]);
  }
  await mkdir(to.imageNames, { recursive: true });
  await symlink(`../${cached.id}`, join(to.imageNames, name));
  const meta = JSON.parse(await readFile(to.image(cached.id).meta, "utf8")) as ImageMeta;
  return { ...meta, name };
}

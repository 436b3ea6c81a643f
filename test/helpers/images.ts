import { execFile } from "node:child_process";
import { mkdir, readFile, readlink, rm, stat, symlink } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { expect, inject } from "vitest";
import type { ImageMeta } from "../../src/image/store.js";
import { stateLayout } from "../../src/state/layout.js";
import { shoal } from "./cli.js";
import { buildArgs, buildKey, jobPaths, prebuilt, type SharedBuild } from "./prebuilt.js";

const exec = promisify(execFile);

/** Each distinct build is made once per run, in a state directory of its own in the run's cache. */
async function cachedBuild(build: SharedBuild): Promise<{ state: string; id: string }> {
  const cache = inject("imageCache");
  const key = buildKey(build);
  await prebuilt(cache, key);
  const state = jobPaths(cache, key).result;
  const link = join(stateLayout(state).imageNames, "image");
  const known = await readlink(link).catch(() => undefined);
  if (known === undefined) {
    // Not built yet, or a background build failed: built here, where a failure shows.
    await rm(state, { recursive: true, force: true });
    await mkdir(state, { recursive: true });
    const built = await shoal(buildArgs(state, build));
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

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestProject } from "vitest/node";

declare module "vitest" {
  export interface ProvidedContext {
    /** Where the end-to-end files' shared image builds are kept for one run (test/helpers/images.ts). */
    imageCache: string;
  }
}

/** One cache of built images for the whole end-to-end run, removed when it ends. */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const cache = await mkdtemp(join(tmpdir(), "shoal-image-cache-"));
  project.provide("imageCache", cache);
  return () => rm(cache, { recursive: true, force: true });
}

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll } from "vitest";

/**
 * A fresh temporary directory per call, removed after the test whether it passed or not; or, for
 * a file whose tests run concurrently (where "after the test" would also take a running test's
 * directories), after the file's last test.
 */
export function useTempDirs(until: "test" | "file" = "test"): () => Promise<string> {
  const made: string[] = [];
  (until === "test" ? afterEach : afterAll)(async () => {
    await Promise.all(made.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
  });
  return async () => {
    const dir = await mkdtemp(join(tmpdir(), "shoal-test-"));
    made.push(dir);
    return dir;
  };
}

/** One temporary directory for a whole test file (an image store, say), removed after its last test. */
export function useFileTempDir(prefix: string): () => string {
  let dir: string | undefined;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), prefix));
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });
  return () => {
    if (!dir) throw new Error("the file's temporary directory exists only while its tests run");
    return dir;
  };
}

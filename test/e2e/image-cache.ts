import { type ChildProcess, spawn } from "node:child_process";
import { mkdir, mkdtemp, open, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestProject } from "vitest/node";
import { backgroundJobs, jobPaths } from "../helpers/prebuilt.js";

/** How long a background job is given to end once asked to, before it is killed. */
const STOP_WAIT_MS = 60_000;

declare module "vitest" {
  export interface ProvidedContext {
    /** Where the end-to-end files' shared builds are kept for one run (test/helpers/prebuilt.ts). */
    imageCache: string;
  }
}

/** Starts a job in the background, its output kept in its `running` marker. */
async function start(cache: string, job: ReturnType<typeof backgroundJobs>[number]) {
  const paths = jobPaths(cache, job.key);
  if (job.stateDir) await mkdir(paths.result, { recursive: true });
  const output = await open(paths.running, "w");
  const [file, ...args] = job.argv;
  const child = spawn(file, args, { stdio: ["ignore", output.fd, output.fd], detached: true });
  const ended = new Promise<void>((resolve) => {
    child.once("close", (code, signal) => {
      void output
        .close()
        .then(() => writeFile(paths.ended, `${code ?? signal}\n`))
        .finally(resolve);
    });
  });
  return { child, ended };
}

/**
 * Ends a job still running, with everything it started (its process group): asked first, since
 * mmdebstrap takes down the mounts it made in its chroot when it gets SIGTERM; killed if it does
 * not end.
 */
async function stop(job: { child: ChildProcess; ended: Promise<void> }): Promise<void> {
  const signal = (name: NodeJS.Signals) => {
    const { child } = job;
    if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
    try {
      process.kill(-child.pid, name);
    } catch (error) {
      // Ended meanwhile.
      if ((error as NodeJS.ErrnoException).code !== "ESRCH") throw error;
    }
  };
  signal("SIGTERM");
  const kill = setTimeout(() => signal("SIGKILL"), STOP_WAIT_MS);
  await job.ended;
  clearTimeout(kill);
}

/**
 * One cache of builds for the whole end-to-end run, removed when it ends. The whole run
 * (scripts/test sets SHOAL_TEST_BACKGROUND_BUILDS=1) starts its slow builds at once, so that they
 * download and unpack while the first files' VMs boot; a run of a few files builds what they need
 * when they need it.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const cache = await mkdtemp(join(tmpdir(), "shoal-image-cache-"));
  project.provide("imageCache", cache);
  const jobs =
    process.env.SHOAL_TEST_BACKGROUND_BUILDS === "1"
      ? await Promise.all(backgroundJobs(cache).map((job) => start(cache, job)))
      : [];
  return async () => {
    await Promise.all(jobs.map(stop));
    await rm(cache, { recursive: true, force: true });
  };
}

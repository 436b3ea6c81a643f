import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { SHOAL } from "./bin.js";

/**
 * What the end-to-end files build and share in one run, in its cache directory: shoal images, and
 * the Debian root of the Xen lab's dom0. The whole run starts the slow ones in the background as
 * it begins (test/e2e/image-cache.ts), while the first files boot their VMs; a file that needs one
 * waits for it here, or builds it itself when no background build was started. No vitest here:
 * the run's global setup imports this module outside any test.
 */

/**
 * A build the end-to-end files share: `shoal image build` with these arguments. Builds with
 * another `copy` number are made separately, for a test that needs two images with different ids.
 */
export interface SharedBuild {
  readonly from: "busybox" | "debian:bookworm";
  readonly hook?: "initramfs-tools";
  readonly copy?: number;
}

/** Where a job's result is kept in the run's cache, and its markers. */
export function jobPaths(cache: string, key: string) {
  return {
    result: join(cache, key),
    /** There while a background job runs; it holds the job's output. */
    running: join(cache, `${key}.running`),
    /** Written when a background job ended, with its exit code. */
    ended: join(cache, `${key}.ended`),
  };
}

export function buildKey(build: SharedBuild): string {
  return [build.from.replace(":", "-"), build.hook ?? "plain", build.copy ?? 1].join("-");
}

/** The arguments of `shoal` that make the build into `state`, as image "image". */
export function buildArgs(state: string, build: SharedBuild): string[] {
  return [
    "--state-dir",
    state,
    "image",
    "build",
    "image",
    "--from",
    build.from,
    ...(build.hook ? ["--hook", build.hook] : []),
  ];
}

/** The Xen lab's dom0: Xen's tools and what shoal runs there (what setup installs on a QEMU host). */
const DOM0_PACKAGES = [
  "xen-utils-4.17",
  "xenstore-utils",
  "kmod",
  "udev",
  "iproute2",
  "procps",
  "util-linux",
  "e2fsprogs",
  "busybox-static",
  "dnsmasq-base",
  "openssh-client",
  "dropbear-bin",
  "nftables",
  "libstdc++6",
  "xz-utils",
];

/** The key of dom0's Debian root, a tarball made by mmdebstrap. */
export const DOM0_ROOT = "xen-dom0-root.tar";

/** mmdebstrap's command line for dom0's root, as a tarball at `tarball`. */
export function dom0RootArgv(tarball: string): [string, ...string[]] {
  return [
    "mmdebstrap",
    "--quiet",
    "--variant=minbase",
    `--include=${DOM0_PACKAGES.join(",")}`,
    "bookworm",
    tarball,
  ];
}

/**
 * The slow jobs a whole run starts as it begins: Debian's images (into a state directory, made
 * first) and dom0's root.
 */
export function backgroundJobs(
  cache: string,
): { key: string; argv: [string, ...string[]]; stateDir: boolean }[] {
  const debian: SharedBuild[] = [
    { from: "debian:bookworm" },
    { from: "debian:bookworm", hook: "initramfs-tools" },
  ];
  return [
    ...debian.map((build) => {
      const key = buildKey(build);
      return {
        key,
        argv: [process.execPath, SHOAL, ...buildArgs(jobPaths(cache, key).result, build)] as [
          string,
          ...string[],
        ],
        stateDir: true,
      };
    }),
    { key: DOM0_ROOT, argv: dom0RootArgv(jobPaths(cache, DOM0_ROOT).result), stateDir: false },
  ];
}

/**
 * What a background job of this key made, once it ended; undefined when the run started none, or
 * it failed (then the caller makes it itself, where the failure shows).
 */
export async function prebuilt(cache: string, key: string): Promise<string | undefined> {
  const paths = jobPaths(cache, key);
  if (!(await stat(paths.running).catch(() => undefined))) return undefined;
  for (;;) {
    const ended = await readFile(paths.ended, "utf8").catch(() => undefined);
    if (ended !== undefined) return ended.trim() === "0" ? paths.result : undefined;
    await sleep(1000);
  }
}

import { spawn } from "node:child_process";
import { readdir } from "node:fs/promises";
import { expect } from "vitest";
import { SHOAL } from "./bin.js";

export { SHOAL } from "./bin.js";

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the built shoal binary as a user would, with its own state directory. */
export function shoal(
  args: readonly string[],
  options: {
    cwd?: string;
    env?: Record<string, string>;
    namespace?: string;
    /** A mount namespace to run in (its /proc/PID/ns/mnt), where every shoal of the test runs. */
    mount?: string;
  } = {},
): Promise<CliResult> {
  // In a test's network namespace, that namespace is the host shoal sees. nsenter, not `ip netns
  // exec`: that one gives the command a mount namespace of its own, where the namespaces shoal
  // makes (bind mounts under /run/netns) would not be seen by the next command.
  const argv =
    options.namespace === undefined
      ? [process.execPath, SHOAL, ...args]
      : [
          "nsenter",
          `--net=/run/netns/${options.namespace}`,
          ...(options.mount === undefined ? [] : [`--mount=${options.mount}`]),
          "--",
          process.execPath,
          SHOAL,
          ...args,
        ];
  return collect(argv, { cwd: options.cwd, env: { ...process.env, ...options.env } });
}

/** `shoal --state-dir STATE ARGS`, which must succeed; its stdout. */
export async function shoalOk(stateDir: string, args: readonly string[]): Promise<string> {
  const result = await shoal(["--state-dir", stateDir, ...args]);
  expect(result.code, `shoal ${args.join(" ")}\n${result.stderr}\n${result.stdout}`).toBe(0);
  return result.stdout;
}

/** Runs a program to its end with `input` on its stdin; its exit code and whole output. */
export function collect(
  argv: readonly string[],
  options: {
    cwd?: string | undefined;
    env?: NodeJS.ProcessEnv;
    input?: string;
    /** Sees stderr as it grows, for a test that acts when the program says something. */
    onStderr?: (stderr: string) => void;
  } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const [file = "", ...rest] = argv;
    const child = spawn(file, rest, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ["pipe", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk) => {
      stdout += chunk;
    });
    child.stderr.on("data", (chunk) => {
      stderr += chunk;
      options.onStderr?.(stderr);
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(options.input ?? "");
  });
}

/**
 * Destroys every fleet a test left in `stateDir` (VMs, layers, network namespace, dnsmasq), with
 * shoal itself; for afterAll, whether the tests passed or not.
 */
export async function destroyAllFleets(stateDir: string): Promise<void> {
  for (const fleet of await readdir(`${stateDir}/fleets`).catch(() => [] as string[])) {
    await shoal(["--state-dir", stateDir, "destroy", "--fleet", fleet, "--yes"]);
  }
}

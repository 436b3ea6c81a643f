import { spawn } from "node:child_process";
import { readdir } from "node:fs/promises";
import { fileURLToPath } from "node:url";

export const SHOAL = fileURLToPath(new URL("../../bin/shoal.js", import.meta.url));

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the built shoal binary as a user would, with its own state directory. */
export function shoal(
  args: readonly string[],
  options: { cwd?: string; env?: Record<string, string> } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [SHOAL, ...args], {
      cwd: options.cwd,
      env: { ...process.env, ...options.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk) => {
      stdout += chunk;
    });
    child.stderr.on("data", (chunk) => {
      stderr += chunk;
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
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

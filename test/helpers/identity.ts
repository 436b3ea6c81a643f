import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";

export interface ReportedIdentity {
  readonly hostname: string;
  readonly machineId: string;
  readonly hostKey: string;
}

/**
 * The last identity a VM reported on its serial console once booted (the tiny image's rcS and the
 * Debian images' shoal-identity service print it).
 */
export async function reportedIdentity(serialLog: string): Promise<ReportedIdentity | undefined> {
  const log = await readFile(serialLog, "utf8").catch(() => "");
  const last = [
    ...log.matchAll(/shoal-identity: hostname=(\S+) machine-id=(\S*) hostkey=(ssh-ed25519 \S+)/g),
  ].at(-1);
  return last
    ? { hostname: last[1] ?? "", machineId: last[2] ?? "", hostKey: last[3] ?? "" }
    : undefined;
}

export async function waitForIdentity(
  serialLog: string,
  timeoutMs = 300_000,
): Promise<ReportedIdentity> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const identity = await reportedIdentity(serialLog);
    if (identity) return identity;
    if (Date.now() > deadline) throw new Error(`${serialLog} never showed the VM's identity`);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

/** SHA256 fingerprints of public keys, as `ssh-keygen -l` prints them. */
export function fingerprints(keys: readonly string[]): Promise<string[]> {
  return Promise.all(
    keys.map(
      (key) =>
        new Promise<string>((resolve, reject) => {
          const child = spawn("ssh-keygen", ["-l", "-f", "-"], {
            stdio: ["pipe", "pipe", "inherit"],
          });
          let out = "";
          child.stdout.on("data", (chunk) => {
            out += chunk;
          });
          child.on("error", reject);
          child.on("close", () => resolve(out.split(" ")[1] ?? ""));
          child.stdin.end(`${key}\n`);
        }),
    ),
  );
}

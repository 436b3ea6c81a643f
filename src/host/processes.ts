import { readdir, readFile, stat } from "node:fs/promises";
import { ifProcessExists } from "./paths.js";

/** Whether a process exists; a process of another user counts (kill answers EPERM). */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

export interface NamedProcess {
  readonly pid: number;
  /** Whose it is: any user may start a process of any name. */
  readonly uid: number;
  readonly argv: string[];
}

/** The running processes named `comm` (as in /proc/PID/comm), with their owners and command lines. */
export async function processesNamed(comm: string): Promise<NamedProcess[]> {
  const found: NamedProcess[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const name = (await ifProcessExists(readFile(`/proc/${entry}/comm`, "utf8"))) ?? "";
    if (name.trim() !== comm) continue;
    const cmdline = (await ifProcessExists(readFile(`/proc/${entry}/cmdline`, "utf8"))) ?? "";
    // A zombie has an empty command line: it does not run.
    const owner = await ifProcessExists(stat(`/proc/${entry}`));
    if (cmdline && owner) {
      found.push({
        pid: Number(entry),
        uid: owner.uid,
        argv: cmdline.replace(/\0$/, "").split("\0"),
      });
    }
  }
  return found;
}

import { readdir, readFile } from "node:fs/promises";

/** Whether a process exists; a process of another user counts (kill answers EPERM). */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** The running processes named `comm` (as in /proc/PID/comm), with their command lines. */
export async function processesNamed(
  comm: string,
): Promise<{ readonly pid: number; readonly argv: string[] }[]> {
  const found: { pid: number; argv: string[] }[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const name = await readFile(`/proc/${entry}/comm`, "utf8").catch(() => "");
    if (name.trim() !== comm) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, "utf8").catch(() => "");
    // A zombie has an empty command line: it does not run.
    if (cmdline) found.push({ pid: Number(entry), argv: cmdline.replace(/\0$/, "").split("\0") });
  }
  return found;
}

import { constants } from "node:fs";
import { access, lstat, readdir, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { UserError } from "../errors.js";

/**
 * The promise's value, or undefined when what it reads is not there (ENOENT). Any other failure
 * (a permission, a loop of links, an I/O error) is not absence and is thrown with its cause.
 */
export async function ifExists<T>(pending: Promise<T>): Promise<T | undefined> {
  try {
    return await pending;
  } catch (error) {
    if ((error as NodeJS.ErrnoException | undefined)?.code === "ENOENT") return undefined;
    throw error;
  }
}

/** Like `ifExists`, for a process's files in /proc: a process that ended between two reads is gone too (ESRCH). */
export async function ifProcessExists<T>(pending: Promise<T>): Promise<T | undefined> {
  try {
    return await pending;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException | undefined)?.code;
    if (code === "ENOENT" || code === "ESRCH") return undefined;
    throw error;
  }
}

/** The answers of access(2) that mean "there, but not to be used so". */
const REFUSED = new Set(["EACCES", "EPERM", "EROFS", "ETXTBSY"]);

/**
 * Whether a path exists (with `mode`: and may be used so), for checks that only look. Absence is
 * ENOENT; with a mode, a refusal is a "no" too. Anything else (ENOTDIR, ELOOP, EIO) is thrown.
 */
export async function pathExists(path: string, mode: number = constants.F_OK): Promise<boolean> {
  try {
    await access(path, mode);
    return true;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException | undefined)?.code;
    if (code === "ENOENT") return false;
    if (mode !== constants.F_OK && code !== undefined && REFUSED.has(code)) return false;
    throw error;
  }
}

/** The disk space a file, or a directory with everything in it, takes (allocated blocks, not sizes). */
export async function allocatedBytes(path: string): Promise<number> {
  const info = await ifExists(lstat(path));
  if (!info) return 0;
  if (!info.isDirectory()) return info.blocks * 512;
  let total = info.blocks * 512;
  for (const entry of await readdir(path)) total += await allocatedBytes(join(path, entry));
  return total;
}

/**
 * The first directory at or above `dir` that other users may not enter (no o+x), if any: what an
 * unprivileged program (dnsmasq, QEMU) cannot get through to reach the files below.
 */
export async function closedToOthers(dir: string): Promise<string | undefined> {
  for (let at = dir; ; at = dirname(at)) {
    if (((await stat(at)).mode & 0o001) === 0) return at;
    if (at === dirname(at)) return undefined;
  }
}

/**
 * Refuses a directory that `who` (a program shoal runs as an unprivileged user) cannot get
 * through to, naming the closed directory and the fix.
 */
export async function requireReachable(who: string, dir: string): Promise<void> {
  const closed = await closedToOthers(dir);
  if (closed === undefined) return;
  throw new UserError(
    `${who}, cannot reach ${dir}: ${closed} is closed to other users`,
    `allow it with \`chmod o+x ${closed}\`, or choose a --state-dir under a directory others may enter`,
  );
}

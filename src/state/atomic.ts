import { randomBytes } from "node:crypto";
import { open, readdir, rename, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { isProcessAlive } from "../host/processes.js";

const TEMP_SUFFIX = ".shoal-tmp";

async function fsyncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Whether a name is one of shoal's scratch files or directories (which stale sweeps remove). */
export function isTempName(name: string): boolean {
  return name.endsWith(TEMP_SUFFIX);
}

/** A scratch name whose shoal is gone: `.NAME.PID.RANDOM.shoal-tmp` with PID not running. */
export function isStaleTempName(name: string): boolean {
  if (!isTempName(name)) return false;
  const pid = Number(name.slice(0, -TEMP_SUFFIX.length).split(".").at(-2));
  return !Number.isInteger(pid) || !isProcessAlive(pid);
}

/** A unique scratch path beside `path` that `removeStaleTempFiles` removes once its shoal is gone. */
export function tempPathBeside(path: string): string {
  return join(
    dirname(path),
    `.${basename(path)}.${process.pid}.${randomBytes(4).toString("hex")}${TEMP_SUFFIX}`,
  );
}

/**
 * Replaces `path` so that after a crash or power loss it holds either the old or the new content,
 * never a mix: write a temporary file beside it, fsync it, rename it over, fsync the directory
 * (without that last step the rename itself may not survive a power loss).
 */
export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  mode = 0o644,
): Promise<void> {
  const dir = dirname(path);
  const temp = tempPathBeside(path);
  const handle = await open(temp, "wx", mode);
  try {
    // open() applies the umask; a secret must not end up wider than asked, nor a public file narrower.
    await handle.chmod(mode);
    await handle.writeFile(data);
    await handle.sync();
  } catch (error) {
    await handle.close();
    await rm(temp, { force: true });
    throw error;
  }
  await handle.close();
  try {
    await rename(temp, path);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
  await fsyncDirectory(dir);
}

/**
 * Removes temporary files (and scratch directories) that a killed shoal left behind in `dir`; those
 * of live processes stay.
 */
export async function removeStaleTempFiles(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw error;
  }
  const stale = names.filter(isStaleTempName);
  await Promise.all(stale.map((name) => rm(join(dir, name), { force: true, recursive: true })));
  return stale;
}

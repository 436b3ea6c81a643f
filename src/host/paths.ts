import { constants } from "node:fs";
import { access, lstat, readdir } from "node:fs/promises";
import { join } from "node:path";

/** Whether a path exists (with `mode`: and may be used so), for checks that only look. */
export function pathExists(path: string, mode: number = constants.F_OK): Promise<boolean> {
  return access(path, mode).then(
    () => true,
    () => false,
  );
}

/** The disk space a file, or a directory with everything in it, takes (allocated blocks, not sizes). */
export async function allocatedBytes(path: string): Promise<number> {
  const info = await lstat(path).catch(() => undefined);
  if (!info) return 0;
  if (!info.isDirectory()) return info.blocks * 512;
  let total = info.blocks * 512;
  for (const entry of await readdir(path)) total += await allocatedBytes(join(path, entry));
  return total;
}

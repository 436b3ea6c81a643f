import { constants } from "node:fs";
import { access } from "node:fs/promises";

/** Whether a path exists (with `mode`: and may be used so), for checks that only look. */
export function pathExists(path: string, mode: number = constants.F_OK): Promise<boolean> {
  return access(path, mode).then(
    () => true,
    () => false,
  );
}

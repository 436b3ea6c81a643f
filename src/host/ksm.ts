import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { KsmState } from "../core/doctor.js";
import { ifExists } from "./paths.js";

/**
 * The kernel's same-page merging (KSM), a setting of the whole host: QEMU marks every VM's memory
 * mergeable, and ksmd, once running, keeps one copy of pages that are alike in several VMs.
 */
export const KSM_DIR = "/sys/kernel/mm/ksm";

/** KSM's state, or undefined on a kernel built without it. */
export async function readKsm(dir = KSM_DIR): Promise<KsmState | undefined> {
  const run = await ifExists(readFile(join(dir, "run"), "utf8"));
  if (run === undefined) return undefined;
  const count = async (name: string) => Number((await readFile(join(dir, name), "utf8")).trim());
  return {
    running: run.trim() === "1",
    pagesShared: await count("pages_shared"),
    pagesSharing: await count("pages_sharing"),
  };
}

/**
 * Starts or stops ksmd. Stopping also unmerges every merged page (2, not 0), so that no page
 * stays shared between VMs once the user turned KSM off; the memory they take grows back.
 */
export async function setKsm(on: boolean, dir = KSM_DIR): Promise<void> {
  await writeFile(join(dir, "run"), on ? "1" : "2");
}

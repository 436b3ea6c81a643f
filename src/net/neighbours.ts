import { readFile } from "node:fs/promises";
import { type NeighbourLimits, neighbourLimitsFor } from "../core/net.js";
import { ifExists } from "../host/paths.js";
import type { Runner } from "../host/runner.js";

const SYSCTL = "net.ipv4.neigh.default";

/** A limit as this network namespace sees it; undefined outside the host's own namespace. */
async function readLimit(name: string): Promise<number | undefined> {
  const path = `/proc/sys/${SYSCTL.replaceAll(".", "/")}/${name}`;
  const text = await ifExists(readFile(path, "utf8"));
  return text === undefined ? undefined : Number(text.trim());
}

/**
 * Raises the host's neighbour table so that a fleet's gateway keeps an entry for each of `vms`
 * VMs: past its hard limit the kernel drops entries ("neighbour table overflow") and VMs stop
 * answering. The new limits when raised; undefined when they suffice or cannot be seen here.
 */
export async function raiseNeighbourLimits(
  runner: Runner,
  vms: number,
): Promise<NeighbourLimits | undefined> {
  const [soft, hard] = [await readLimit("gc_thresh2"), await readLimit("gc_thresh3")];
  // Only the host's own namespace has them (one table serves every namespace): shoal run in
  // another one (a container, a test's namespace) cannot change them.
  if (soft === undefined || hard === undefined) return undefined;
  const wanted = neighbourLimitsFor(vms, { soft, hard });
  if (wanted === undefined) return undefined;
  await runner.run({
    argv: [
      "sysctl",
      "-q",
      "-w",
      `${SYSCTL}.gc_thresh3=${wanted.hard}`,
      `${SYSCTL}.gc_thresh2=${wanted.soft}`,
    ],
  });
  return wanted;
}

import { readFile } from "node:fs/promises";
import { type NeighbourLimits, neighbourLimitsFor } from "../core/net.js";
import type { Runner } from "../host/runner.js";

const SYSCTL = "net.ipv4.neigh.default";

async function readLimit(name: string): Promise<number> {
  return Number(
    (await readFile(`/proc/sys/${SYSCTL.replaceAll(".", "/")}/${name}`, "utf8")).trim(),
  );
}

/**
 * Raises the host's neighbour table so that a fleet's gateway keeps an entry for each of `vms`
 * VMs: past its hard limit the kernel drops entries ("neighbour table overflow") and VMs stop
 * answering. The new limits when raised, else undefined.
 */
export async function raiseNeighbourLimits(
  runner: Runner,
  vms: number,
): Promise<NeighbourLimits | undefined> {
  const host = { soft: await readLimit("gc_thresh2"), hard: await readLimit("gc_thresh3") };
  const wanted = neighbourLimitsFor(vms, host);
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

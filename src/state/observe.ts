import { access } from "node:fs/promises";
import type { ObservedState } from "../core/plan.js";
import type { StateLayout } from "./layout.js";
import type { FleetRecord } from "./store.js";

/**
 * What is on disk for each recorded VM. No backend can run a VM yet, so a VM whose directory
 * exists is stopped and one whose directory is gone is missing.
 */
export async function observeOnDisk(
  layout: StateLayout,
  record: FleetRecord | undefined,
): Promise<Map<string, ObservedState>> {
  const names = Object.keys(record?.vms ?? {});
  const fleet = layout.fleet(record?.fleet ?? "");
  const states = await Promise.all(
    names.map(async (name): Promise<ObservedState> => {
      try {
        await access(fleet.vm(name).dir);
        return "stopped";
      } catch {
        return "missing";
      }
    }),
  );
  return new Map(names.map((name, i) => [name, states[i] ?? "missing"]));
}

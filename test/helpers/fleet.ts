import type { FleetSpec } from "../../src/core/fleet.js";
import { SpecError } from "../../src/errors.js";
import { parseFleetText } from "../../src/spec/load.js";
import { emptyRecord, type FleetRecord } from "../../src/state/store.js";

/** A fleet from YAML text, as `shoal` would load it from a file named test.yaml. */
export function fleetOf(text: string): FleetSpec {
  return parseFleetText(text, "test.yaml");
}

/** The problem lines a fleet file gets, exactly as `shoal validate` prints them. */
export function problemsOf(text: string): string[] {
  try {
    parseFleetText(text, "test.yaml");
  } catch (error) {
    if (error instanceof SpecError) return error.lines();
    throw error;
  }
  throw new Error("expected the fleet file to be refused, but it was accepted");
}

/** The record shoal keeps for `fleet` once every VM of it was created (and is not meant to run). */
export function createdRecord(fleet: FleetSpec, stamp = "t"): FleetRecord {
  const record = emptyRecord(fleet);
  for (const vm of fleet.vms) {
    record.vms[vm.name] = {
      spec: vm,
      createdAt: stamp,
      updatedAt: stamp,
      phase: "created",
      running: false,
    };
  }
  return record;
}

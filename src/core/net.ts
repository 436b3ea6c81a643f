import { isDnsLabel } from "./names.js";
import { assertRenderable } from "./syntax.js";

/**
 * Names of a fleet's isolated network. Each fleet has its own network namespace, so the bridge and
 * tap names only need to be unique inside it.
 */

/** Linux bridges take at most 1024 ports, numbered 1..1023. */
export const MAX_BRIDGE_PORTS = 1023;

export const FLEET_BRIDGE = "shoal0";

export function namespaceName(fleet: string): string {
  assertRenderable("fleet name", fleet, isDnsLabel(fleet));
  return `shoal-${fleet}`;
}

/** A VM's tap device, by its address slot: unique in the fleet and at most 15 bytes. */
export function tapName(index: number): string {
  assertRenderable(
    "address slot",
    String(index),
    Number.isInteger(index) && index > 0 && index < 2 ** 24,
  );
  return `tap${index}`;
}

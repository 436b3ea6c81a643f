import picomatch from "picomatch";
import { UserError } from "../errors.js";
import type { FleetSession } from "./session.js";

/**
 * The VMs named on the command line, by name or glob pattern (`web-*`); every pattern must match
 * one of `known`. No patterns: all of `known`.
 */
export function selectVms(patterns: readonly string[], known: readonly string[]): string[] {
  if (patterns.length === 0) return [...known];
  const selected = new Set<string>();
  for (const pattern of patterns) {
    const isMatch = picomatch(pattern);
    const matches = known.filter((name) => isMatch(name));
    if (matches.length === 0) {
      throw new UserError(
        `no VM of this fleet matches ${JSON.stringify(pattern)}`,
        "`shoal ps` lists them",
      );
    }
    for (const name of matches) selected.add(name);
  }
  return known.filter((name) => selected.has(name));
}

/** The one VM a verb like `console` or `ssh` acts on: a name, not a pattern. */
export function oneVm(session: FleetSession, name: string): string {
  const [vm] = selectVms([name], session.recordedNames());
  if (vm === undefined || vm !== name)
    throw new UserError(`give one VM name, not ${JSON.stringify(name)}`);
  return vm;
}

/** The VMs a power verb may act on: created ones, by name or pattern. */
export function createdVms(session: FleetSession, patterns: readonly string[]): string[] {
  const created = session.createdNames();
  // `down` of a fleet never brought up has nothing to do; naming VMs of it is a mistake.
  if (created.length === 0 && patterns.length > 0) {
    throw new UserError(`fleet ${session.fleet} has no VMs yet`, "`shoal up` creates them");
  }
  return selectVms(patterns, created);
}

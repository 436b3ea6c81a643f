import { ShoalError } from "../errors.js";
import type { PowerOutcome } from "../fleet/power.js";
import type { Context } from "./context.js";
import { formatTable } from "./table.js";

/** Prints what a power verb did to each VM and fails (exit 1) if any VM failed. */
export function reportPower(
  context: Context,
  verb: string,
  outcomes: readonly PowerOutcome[],
): void {
  context.print(
    formatTable(
      ["NAME", "RESULT"],
      outcomes.map((outcome) => [
        outcome.name,
        outcome.ok ? outcome.detail : `failed: ${outcome.detail}`,
      ]),
    ),
  );
  const failed = outcomes.filter((outcome) => !outcome.ok).map((outcome) => outcome.name);
  if (failed.length > 0) {
    throw new ShoalError(
      `${verb} failed for ${failed.length} of ${outcomes.length} VMs: ${failed.join(", ")}`,
      {
        hint: "`shoal logs NAME` shows a VM's console",
      },
    );
  }
}

import pLimit from "p-limit";
import { ShoalError } from "../errors.js";
import type { FleetSession } from "./session.js";

export interface PowerOutcome {
  readonly name: string;
  readonly ok: boolean;
  /** What happened, or why it failed. */
  readonly detail: string;
}

function messageOf(error: unknown): string {
  return error instanceof ShoalError ? error.message : String(error);
}

/** Runs `work` for each VM, `workers` at a time; a VM's failure is its own outcome, not the others'. */
function eachVm(
  names: readonly string[],
  workers: number,
  work: (name: string) => Promise<Omit<PowerOutcome, "name">>,
): Promise<PowerOutcome[]> {
  const limit = pLimit(workers);
  return Promise.all(
    names.map((name) =>
      limit(() =>
        work(name).then(
          (outcome): PowerOutcome => ({ name, ...outcome }),
          (error: unknown): PowerOutcome => ({ name, ok: false, detail: messageOf(error) }),
        ),
      ),
    ),
  );
}

/** Shuts VMs down in parallel: power button, then forced after `timeoutMs` (0: forced at once). */
export function stopVms(
  session: FleetSession,
  names: readonly string[],
  timeoutMs: number,
  workers: number,
): Promise<PowerOutcome[]> {
  return eachVm(names, workers, async (name) => {
    // The user's stop also cancels the start a killed upgrade owed the VM.
    const outcome = await session.stop(name, timeoutMs, { cancelsUpgrade: true });
    const forcedAfter = outcome === "forced" && timeoutMs > 0;
    return {
      ok: true,
      detail: forcedAfter ? `forced after ${Math.round(timeoutMs / 1000)} s` : outcome,
    };
  });
}

/** Starts created VMs in parallel and waits for each to boot (at most `bootTimeoutMs`). */
export function startVms(
  session: FleetSession,
  names: readonly string[],
  bootTimeoutMs: number | undefined,
  workers: number,
): Promise<PowerOutcome[]> {
  return eachVm(names, workers, async (name) => {
    const result = await session.start(name, bootTimeoutMs);
    if (!result.ready) return { ok: false, detail: result.why };
    return { ok: true, detail: bootTimeoutMs === undefined ? "started" : "booted" };
  });
}

import { eachVm } from "./fan-out.js";
import { startVm, stopVm } from "./lifecycle.js";
import type { FleetSession } from "./session.js";

export interface PowerOutcome {
  readonly name: string;
  readonly ok: boolean;
  /** What happened, or why it failed. */
  readonly detail: string;
}

async function powerEach(
  names: readonly string[],
  workers: number,
  work: (name: string) => Promise<Omit<PowerOutcome, "name">>,
): Promise<PowerOutcome[]> {
  const results = await eachVm(names, workers, work);
  return results.map((result) =>
    result.ok
      ? { name: result.name, ...result.value }
      : { name: result.name, ok: false, detail: result.error.message },
  );
}

/** Shuts VMs down in parallel: power button, then forced after `timeoutMs` (0: forced at once). */
export function stopVms(
  session: FleetSession,
  names: readonly string[],
  timeoutMs: number,
  workers: number,
): Promise<PowerOutcome[]> {
  return powerEach(names, workers, async (name) => {
    // The user's stop also cancels the start a killed upgrade owed the VM.
    const outcome = await stopVm(session, name, timeoutMs, { cancelsUpgrade: true });
    return {
      ok: true,
      detail: outcome === "timed out" ? `forced after ${Math.round(timeoutMs / 1000)} s` : outcome,
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
  return powerEach(names, workers, async (name) => {
    const result = await startVm(session, name, bootTimeoutMs);
    if (!result.ready) return { ok: false, detail: result.why };
    return { ok: true, detail: bootTimeoutMs === undefined ? "started" : "booted" };
  });
}

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

/** Shuts VMs down in parallel: power button, then forced after `timeoutMs` (0: forced at once). */
export async function stopVms(
  session: FleetSession,
  names: readonly string[],
  timeoutMs: number,
  workers: number,
): Promise<PowerOutcome[]> {
  const limit = pLimit(workers);
  return Promise.all(
    names.map((name) =>
      limit(() =>
        session.stop(name, timeoutMs).then(
          (outcome): PowerOutcome => ({
            name,
            ok: true,
            detail:
              outcome === "forced" && timeoutMs > 0
                ? `forced after ${Math.round(timeoutMs / 1000)} s`
                : outcome,
          }),
          (error: unknown): PowerOutcome => ({ name, ok: false, detail: messageOf(error) }),
        ),
      ),
    ),
  );
}

/** Starts created VMs in parallel and waits for each to boot (at most `bootTimeoutMs`). */
export async function startVms(
  session: FleetSession,
  names: readonly string[],
  bootTimeoutMs: number | undefined,
  workers: number,
): Promise<PowerOutcome[]> {
  const limit = pLimit(workers);
  return Promise.all(
    names.map((name) =>
      limit(() =>
        session.start(name, bootTimeoutMs).then(
          (result): PowerOutcome =>
            result.ready
              ? { name, ok: true, detail: bootTimeoutMs === undefined ? "started" : "booted" }
              : { name, ok: false, detail: result.why },
          (error: unknown): PowerOutcome => ({ name, ok: false, detail: messageOf(error) }),
        ),
      ),
    ),
  );
}

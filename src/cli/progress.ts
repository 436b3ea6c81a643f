import ora from "ora";
import type { FleetEvent, FleetPhase } from "../fleet/session.js";

/**
 * Runs one long step: a spinner while it runs on a terminal, then a line with its duration. Logs
 * and CI get the plain lines only.
 */
export async function step<T>(title: string, work: () => Promise<T>): Promise<T> {
  const terminal = process.stderr.isTTY === true;
  const spinner = terminal ? ora({ text: title, stream: process.stderr }).start() : undefined;
  const started = Date.now();
  try {
    const result = await work();
    const done = `${title} (${((Date.now() - started) / 1000).toFixed(1)} s)`;
    if (spinner) spinner.succeed(done);
    else process.stderr.write(`done: ${done}\n`);
    return result;
  } catch (error) {
    if (spinner) spinner.fail(title);
    else process.stderr.write(`failed: ${title}\n`);
    throw error;
  }
}

/**
 * Live counts while a fleet command works on many VMs: one updating line on a terminal, one line
 * per VM event in logs and CI.
 */
export class FleetProgress {
  private readonly counts = new Map<FleetPhase, number>();
  private readonly spinner;

  constructor(private readonly title: string) {
    this.spinner =
      process.stderr.isTTY === true
        ? ora({ text: title, stream: process.stderr }).start()
        : undefined;
  }

  readonly onEvent = (event: FleetEvent): void => {
    this.counts.set(event.phase, (this.counts.get(event.phase) ?? 0) + 1);
    if (this.spinner) {
      this.spinner.text = `${this.title}: ${this.summary()}`;
      if (event.phase === "failed")
        this.spinner.warn(`${event.vm}: failed: ${event.detail ?? ""}`).start();
    } else {
      process.stderr.write(
        `${event.vm}: ${event.phase}${event.detail ? ` (${event.detail})` : ""}\n`,
      );
    }
  };

  summary(): string {
    return [...this.counts].map(([phase, n]) => `${n} ${phase}`).join(", ") || "nothing to do";
  }

  finish(): void {
    this.spinner?.stopAndPersist({ symbol: "", text: `${this.title}: ${this.summary()}` });
  }
}

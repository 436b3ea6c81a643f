import ora from "ora";
import { colourWanted, escapeLine } from "../core/terminal.js";
import type { FleetEvent, FleetPhase } from "../fleet/session.js";

/**
 * A spinner on stderr when it is a terminal, in colour unless NO_COLOR says otherwise. A
 * pseudo-terminal without a size (`script`, some CI runners) gets none: ora would take every
 * character for a line of its own there.
 */
function spinnerOnTerminal(text: string) {
  const terminal = process.stderr.isTTY === true && (process.stderr.columns ?? 0) > 0;
  if (!terminal) return undefined;
  return ora({ text, stream: process.stderr, color: colourWanted(process.env) && "cyan" }).start();
}

/**
 * Runs one long step: a spinner while it runs on a terminal, then a line with its duration. Logs
 * and CI get the plain lines only.
 */
export async function step<T>(title: string, work: () => Promise<T>): Promise<T> {
  const spinner = spinnerOnTerminal(title);
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
 * per VM event in logs and CI. The spinner starts with the first event, so a question asked
 * before any work (destroy's confirmation) is not drawn over.
 */
export class FleetProgress {
  private readonly counts = new Map<FleetPhase, number>();
  private spinner: ReturnType<typeof spinnerOnTerminal>;
  private started = false;

  constructor(private readonly title: string) {}

  readonly onEvent = (event: FleetEvent): void => {
    if (!this.started) {
      this.started = true;
      this.spinner = spinnerOnTerminal(this.title);
    }
    this.counts.set(event.phase, (this.counts.get(event.phase) ?? 0) + 1);
    if (this.spinner) {
      this.spinner.text = `${this.title}: ${this.summary()}`;
      if (event.phase === "failed")
        this.spinner.warn(`${event.vm}: failed: ${escapeLine(event.detail ?? "")}`).start();
    } else {
      process.stderr.write(
        `${event.vm}: ${event.phase}${event.detail ? ` (${escapeLine(event.detail)})` : ""}\n`,
      );
    }
  };

  private summary(): string {
    return [...this.counts].map(([phase, n]) => `${n} ${phase}`).join(", ");
  }

  /** Leaves the final counts on the terminal; called whether the command succeeded or not. */
  finish(): void {
    this.spinner?.stopAndPersist({ symbol: "", text: `${this.title}: ${this.summary()}` });
    this.spinner = undefined;
  }
}

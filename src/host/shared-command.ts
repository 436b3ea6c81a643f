import type { Command, CommandResult, Runner } from "./runner.js";

/**
 * A listing command (`xl list -v`) that many callers ask at once, run once for all of them: a
 * caller gets the result of a run that began after it asked, so it never sees a state older than
 * its question (a domain it just destroyed, say). Callers that ask while a run is under way share
 * the next one. N VMs waiting for their boots cost one listing per round instead of N, which on a
 * busy dom0 is the difference between a host that boots its domUs and one that only lists them.
 */
export class SharedCommand {
  private running: Promise<CommandResult> | undefined;
  private next: Promise<CommandResult> | undefined;

  constructor(
    private readonly runner: Runner,
    private readonly command: Command,
  ) {}

  result(): Promise<CommandResult> {
    if (this.next) return this.next;
    if (!this.running) return this.begin();
    const settled = this.running.then(
      () => undefined,
      () => undefined,
    );
    this.next = settled.then(() => {
      this.next = undefined;
      return this.begin();
    });
    return this.next;
  }

  private begin(): Promise<CommandResult> {
    const run = this.runner.run(this.command);
    this.running = run;
    const done = () => {
      if (this.running === run) this.running = undefined;
    };
    run.then(done, done);
    return run;
  }
}

import { Command, Option } from "@commander-js/extra-typings";
import { ShoalError, UserError } from "../errors.js";
import { eachVm } from "../fleet/fan-out.js";
import type { VmStatus } from "../fleet/lifecycle.js";
import { observeAll } from "../fleet/planning.js";
import { FleetReach, lastLine, SSH_FAILED } from "../fleet/reach.js";
import { createdVms } from "../fleet/select.js";
import type { FleetSession } from "../fleet/session.js";
import { fleetFileOption, wordsAfterDoubleDash } from "./context.js";
import { notice, withFleet } from "./fleet.js";
import { fleetNameOption, positiveInteger, workersOption } from "./options.js";

/** What one VM made of the command. `exitCode` is null when the command never ran there. */
interface VmOutcome {
  readonly name: string;
  readonly exitCode: number | null;
  readonly stdout: string;
  readonly stderr: string;
  /** Why the command did not run or finish (not running, unreachable, timed out). */
  readonly error?: string;
}

/**
 * Writes a stream's output line by line, each line prefixed with the VM's name, so the lines of
 * many VMs can interleave without mixing inside a line.
 */
class PrefixedLines {
  private pending = "";

  constructor(
    private readonly prefix: string,
    private readonly out: NodeJS.WritableStream,
  ) {}

  write(chunk: Buffer): void {
    const lines = (this.pending + chunk.toString("utf8")).split("\n");
    this.pending = lines.pop() ?? "";
    for (const line of lines) this.out.write(`${this.prefix}${line}\n`);
  }

  end(): void {
    if (this.pending !== "") this.out.write(`${this.prefix}${this.pending}\n`);
    this.pending = "";
  }
}

/** The VMs `exec` runs on: names and patterns, or --all; one of them is needed. */
function targets(session: FleetSession, patterns: readonly string[], all: boolean): string[] {
  if (all && patterns.length > 0) {
    throw new UserError("give VM names or --all, not both");
  }
  if (!all && patterns.length === 0) {
    throw new UserError(
      "which VMs? give names or patterns before --, or --all",
      "for example: shoal exec --all -- hostname",
    );
  }
  const vms = createdVms(session, patterns);
  if (vms.length === 0) throw new UserError(`fleet ${session.fleet} has no VMs yet`);
  return vms;
}

async function runOn(
  reach: FleetReach,
  name: string,
  status: VmStatus | undefined,
  command: readonly string[],
  live: boolean,
  timeoutMs: number | undefined,
): Promise<VmOutcome> {
  const notRunning = await reach.notRunning(name, status);
  if (notRunning) return { name, exitCode: null, stdout: "", stderr: "", error: notRunning };
  const out = new PrefixedLines(`${name}: `, process.stdout);
  const err = new PrefixedLines(`${name}: `, process.stderr);
  const result = await reach.run(name, command, {
    ...(live
      ? { onOutput: (stream, chunk) => (stream === "stdout" ? out : err).write(chunk) }
      : {}),
    ...(timeoutMs === undefined ? {} : { timeoutMs }),
  });
  out.end();
  err.end();
  const base = { name, stdout: result.stdout, stderr: result.stderr };
  if (result.code < 0) {
    return { ...base, exitCode: null, error: `timed out after ${(timeoutMs ?? 0) / 1000} s` };
  }
  if (result.code === SSH_FAILED) {
    return { ...base, exitCode: result.code, error: `ssh: ${lastLine(result.stderr)}` };
  }
  return { ...base, exitCode: result.code };
}

function describe(outcome: VmOutcome): string {
  if (outcome.error && outcome.exitCode === null) return `${outcome.name} (${outcome.error})`;
  if (outcome.error) return `${outcome.name} (exit ${outcome.exitCode}, ${outcome.error})`;
  return `${outcome.name} (exit ${outcome.exitCode})`;
}

export function execCommand() {
  return new Command("exec")
    .description(
      "run a command on many VMs at once over SSH; every output line starts with the VM's name",
    )
    .argument("[vms...]", "VM names or patterns (web-*), then -- and the command")
    .usage("[options] [vms...] -- <command...>")
    .option("--all", "every VM of the fleet")
    .option("--json", "print one object per VM (name, exitCode, stdout, stderr) when all are done")
    .addOption(workersOption(32))
    .addOption(
      new Option(
        "--timeout <seconds>",
        "give up on a VM whose command runs longer than this",
      ).argParser((value) => positiveInteger("--timeout", value)),
    )
    .addOption(fleetFileOption())
    .addOption(fleetNameOption())
    .action(async (operands, options, command) => {
      const words = wordsAfterDoubleDash(command) ?? [];
      if (words.length === 0) {
        throw new UserError(
          "no command to run: put it after --",
          "for example: shoal exec --all -- uptime",
        );
      }
      const patterns = operands.slice(0, operands.length - words.length);
      const timeoutMs = options.timeout === undefined ? undefined : options.timeout * 1000;
      await withFleet(command, options, undefined, async ({ context, session }) => {
        const vms = targets(session, patterns, options.all === true);
        const reach = await FleetReach.open(context.runner, session);
        const states = await observeAll(session, vms);
        const outcomes = (
          await eachVm(vms, options.workers, (name) =>
            runOn(reach, name, states.get(name), words, options.json !== true, timeoutMs),
          )
        ).map((result) =>
          result.ok
            ? result.value
            : {
                name: result.name,
                exitCode: null,
                stdout: "",
                stderr: "",
                error: result.error.message,
              },
        );
        if (options.json) context.printJson(outcomes);
        const failed = outcomes.filter((outcome) => outcome.exitCode !== 0);
        if (failed.length > 0) {
          throw new ShoalError(
            `exec failed on ${failed.length} of ${outcomes.length} VMs: ${failed.map(describe).join(", ")}`,
          );
        }
        notice(`exec: exit 0 on all ${outcomes.length} VMs`);
      });
    });
}

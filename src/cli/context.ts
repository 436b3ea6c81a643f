import { Option } from "@commander-js/extra-typings";
import { escapeText, jsonText } from "../core/terminal.js";
import { type Launcher, ProcessRunner } from "../host/runner.js";
import { DEFAULT_FLEET_FILE } from "../spec/load.js";
import { DEFAULT_STATE_DIR, type StateLayout } from "../state/layout.js";
import { openStateDir } from "../state/trust.js";

/** The global options every verb sees, as commander hands them over. */
export interface GlobalOptions {
  readonly stateDir: string;
  readonly debug?: true;
  readonly dryRun?: true;
}

export const globalOptions = [
  new Option("--state-dir <dir>", "where shoal keeps images and fleets")
    .env("SHOAL_STATE_DIR")
    .default(DEFAULT_STATE_DIR),
  new Option("--dry-run", "print the commands that would change the host instead of running them"),
  new Option("--debug", "print every command run, and stack traces"),
] as const;

/** `-f FILE`, except where -f means follow (`logs -f`, as in tail and docker). */
export function fleetFileOption(short = true) {
  return new Option(short ? "-f, --file <file>" : "--file <file>", "the fleet file").default(
    DEFAULT_FLEET_FILE,
  );
}

export interface Context {
  readonly dryRun: boolean;
  /** The state directory, checked on first use (see state/trust.ts). */
  readonly layout: () => Promise<StateLayout>;
  readonly runner: Launcher;
  /** Prints a result on stdout; a control character that slipped into it shows escaped. */
  readonly print: (text: string) => void;
  /** Prints a result as JSON on stdout, names and all escaped as JSON and terminals need. */
  readonly printJson: (value: unknown) => void;
}

function printLine(text: string): void {
  process.stdout.write(text.endsWith("\n") ? text : `${text}\n`);
}

export function makeContext(options: GlobalOptions): Context {
  let layout: Promise<StateLayout> | undefined;
  return {
    dryRun: options.dryRun === true,
    // Checked on first use: commands that never touch state must not fail on a bad --state-dir.
    layout: () => {
      layout ??= openStateDir(options.stateDir);
      return layout;
    },
    runner: new ProcessRunner({ dryRun: options.dryRun === true, trace: options.debug === true }),
    print: (text) => printLine(escapeText(text)),
    printJson: (value) => printLine(jsonText(value)),
  };
}

/** The global options as seen from a verb's action (commander keeps them on the root command). */
export function contextOf(command: { optsWithGlobals(): object }): Context {
  return makeContext(command.optsWithGlobals() as GlobalOptions);
}

/**
 * The words after `--` on shoal's command line, or undefined without one. commander hands them over
 * merged into the verb's operands, so a verb that takes names before `--` and a command after it
 * needs to know where they split.
 */
export function wordsAfterDoubleDash(command: { readonly parent: unknown }): string[] | undefined {
  let root: { readonly parent: unknown } = command;
  while (root.parent) root = root.parent as { readonly parent: unknown };
  const raw = (root as { readonly rawArgs?: readonly string[] }).rawArgs ?? [];
  const dashes = raw.indexOf("--");
  return dashes === -1 ? undefined : raw.slice(dashes + 1);
}

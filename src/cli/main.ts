import { readFileSync } from "node:fs";
import { Command, CommanderError } from "@commander-js/extra-typings";
import { packagePath } from "../assets.js";
import { escapeText } from "../core/terminal.js";
import { ExitCode, ShoalError, SpecError } from "../errors.js";
import { consoleCommand } from "./console.js";
import { globalOptions } from "./context.js";
import { cpCommand } from "./cp.js";
import { createCommand } from "./create.js";
import { destroyCommand } from "./destroy.js";
import { dfCommand } from "./df.js";
import { diffCommand } from "./diff.js";
import { doctorCommand } from "./doctor.js";
import { downCommand } from "./down.js";
import { execCommand } from "./exec.js";
import { exportCommand } from "./export.js";
import { forwardCommand } from "./forward.js";
import { hostCommand } from "./host.js";
import { imageCommand } from "./image.js";
import { logsCommand } from "./logs.js";
import { netCommand } from "./net.js";
import { planCommand } from "./plan.js";
import { psCommand } from "./ps.js";
import { resetCommand } from "./reset.js";
import { restartCommand } from "./restart.js";
import { schemaCommand } from "./schema.js";
import { sshCommand } from "./ssh.js";
import { startCommand } from "./start.js";
import { stopCommand } from "./stop.js";
import { upCommand } from "./up.js";
import { upgradeCommand } from "./upgrade.js";
import { validateCommand } from "./validate.js";
import { waitCommand } from "./wait.js";

const packageJson = JSON.parse(readFileSync(packagePath("package.json"), "utf8")) as {
  version: string;
};

function buildProgram() {
  const program = new Command("shoal")
    .description(
      "fleets of VMs that boot from one read-only base image, each with a small private layer",
    )
    .version(packageJson.version, "-V, --version")
    .showHelpAfterError("(run `shoal help` for usage)")
    .exitOverride();
  for (const option of globalOptions) program.addOption(option);
  for (const verb of [
    upCommand(),
    createCommand(),
    psCommand(),
    downCommand(),
    startCommand(),
    stopCommand(),
    restartCommand(),
    destroyCommand(),
    consoleCommand(),
    logsCommand(),
    sshCommand(),
    execCommand(),
    cpCommand(),
    forwardCommand(),
    netCommand(),
    waitCommand(),
    diffCommand(),
    resetCommand(),
    dfCommand(),
    upgradeCommand(),
    validateCommand(),
    doctorCommand(),
    hostCommand(),
    planCommand(),
    exportCommand(),
    imageCommand(),
    schemaCommand(),
  ]) {
    program.addCommand(verb.exitOverride());
  }
  return program;
}

function report(error: unknown, debug: boolean): number {
  if (error instanceof CommanderError) {
    // commander has printed its message already; help and --version end with code 0.
    return error.exitCode === 0 ? ExitCode.ok : ExitCode.badInput;
  }
  if (error instanceof ShoalError) {
    const prefix = error instanceof SpecError ? "" : "shoal: ";
    // A message may quote what a guest or an image wrote (a tool's stderr, a file name).
    for (const line of error.lines()) process.stderr.write(`${prefix}${escapeText(line)}\n`);
    if (debug && error.stack) process.stderr.write(`${escapeText(error.stack)}\n`);
    return error.exitCode;
  }
  const message = error instanceof Error ? (error.stack ?? error.message) : String(error);
  process.stderr.write(`shoal: internal error, please report it: ${escapeText(message)}\n`);
  return ExitCode.internal;
}

export async function main(argv: readonly string[]): Promise<number> {
  try {
    await buildProgram().parseAsync([...argv], { from: "user" });
    return ExitCode.ok;
  } catch (error) {
    return report(error, argv.includes("--debug"));
  }
}

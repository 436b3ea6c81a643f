import { createInterface } from "node:readline/promises";
import { UserError } from "../errors.js";

/** Asks a yes/no question on the terminal; only "y" or "yes" is yes. */
export async function confirm(question: string): Promise<boolean> {
  const prompt = createInterface({ input: process.stdin, output: process.stderr });
  try {
    return /^y(es)?$/i.test((await prompt.question(`${question} [y/N] `)).trim());
  } finally {
    prompt.close();
  }
}

/**
 * A verb that throws data away asks first. With no terminal to ask on (a script, a pipe, cron) it
 * refuses before doing anything unless given --yes: silence is not consent.
 */
export function refuseUnaskable(verb: string, yes: boolean | undefined): void {
  if (yes === true || process.stdin.isTTY === true) return;
  throw new UserError(
    `shoal ${verb} asks before it throws anything away, and its input is not a terminal to ask on`,
    `pass --yes to ${verb} without being asked`,
  );
}

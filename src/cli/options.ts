import { Option } from "@commander-js/extra-typings";
import { UserError } from "../errors.js";

/** Flags that many verbs share. */

export function fleetNameOption() {
  return new Option(
    "--fleet <name>",
    "act on a fleet by name, without reading its fleet file (for a file that is gone or broken)",
  );
}

export function workersOption(defaultCount = 8) {
  return new Option("--workers <n>", "how many VMs to work on at once")
    .default(defaultCount)
    .argParser((value) => positiveInteger("--workers", value));
}

export function timeoutOption(what: string, seconds: number) {
  return new Option("--timeout <seconds>", what)
    .default(seconds)
    .argParser((value) => positiveInteger("--timeout", value));
}

export function positiveInteger(flag: string, value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < 1) {
    throw new UserError(`${flag} ${JSON.stringify(value)} is not a positive whole number`);
  }
  return n;
}

/** A day: a wait longer than that is a mistake in the script, not patience. */
export const MAX_LOCK_WAIT_S = 86_400;

/** `--lock-wait SECONDS`, for every verb that takes the fleet's lock. */
export function lockWaitOption() {
  return new Option(
    "--lock-wait <seconds>",
    "when another shoal command holds the fleet's lock, wait this long for it before giving up (exit 3)",
  )
    .default(0)
    .argParser((value) => {
      const n = Number(value);
      if (!/^\d+$/.test(value) || n > MAX_LOCK_WAIT_S) {
        throw new UserError(
          `--lock-wait ${JSON.stringify(value)} is not a number of seconds from 0 to ${MAX_LOCK_WAIT_S}`,
          "--lock-wait 60 waits up to a minute for the command holding the lock",
        );
      }
      return n;
    });
}

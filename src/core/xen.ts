/**
 * What xl and xenconsoled say, read without I/O: a domain's state from `xl list`, its uptime from
 * `xl uptime`, and where xenconsoled writes guest consoles.
 */

/**
 * A domain as `xl list NAME` reports it. xl prints six state letters `rbpscd`: running, blocked,
 * paused, shut down, the shutdown reason (`-` power off, `r` reboot, `s` suspend, `c` crash,
 * `w` watchdog, `S` soft reset) and dying.
 */
export type XlDomainState =
  | { readonly kind: "running" }
  | { readonly kind: "shut-down" }
  | { readonly kind: "crashed"; readonly reason: string }
  | { readonly kind: "dying" };

const STATE_LETTERS = /^[r-][b-][p-][s-][-rscwS?][d-]$/;

export function parseXlList(text: string, domain: string): XlDomainState | undefined {
  for (const line of text.split("\n")) {
    const fields = line.trim().split(/\s+/);
    if (fields[0] !== domain) continue;
    const state = fields.find((field) => STATE_LETTERS.test(field));
    if (state === undefined) return undefined;
    if (state[5] === "d") return { kind: "dying" };
    if (state[3] === "s") {
      if (state[4] === "c") return { kind: "crashed", reason: "Xen reports a crash" };
      if (state[4] === "w") return { kind: "crashed", reason: "the watchdog fired" };
      // A reboot or soft reset is carried out by xl's monitor at once: the guest goes on.
      if (state[4] === "r" || state[4] === "S") return { kind: "running" };
      return { kind: "shut-down" };
    }
    // `xl create` builds a domain paused and unpauses it last: one left paused was cut short
    // there (or paused by hand), and does not run shoal's VM.
    if (state[2] === "p") return { kind: "crashed", reason: "it is paused (a start cut short?)" };
    return { kind: "running" };
  }
  return undefined;
}

/** `xl uptime NAME`: `Name ID Uptime` with an uptime of `[D day[s], ]H:MM:SS`. */
export function parseXlUptimeSeconds(text: string, domain: string): number | undefined {
  for (const line of text.split("\n")) {
    const trimmed = line.trim();
    if (!trimmed.startsWith(`${domain} `)) continue;
    const match = /(?:(\d+) days?, )?\s*(\d+):(\d\d):(\d\d)$/.exec(trimmed);
    if (!match) return undefined;
    const [, days = "0", hours = "0", minutes = "0", seconds = "0"] = match;
    return ((Number(days) * 24 + Number(hours)) * 60 + Number(minutes)) * 60 + Number(seconds);
  }
  return undefined;
}

/** Where xenconsoled was built to write logs when given no `--log-dir`. */
export const XENCONSOLED_DEFAULT_LOG_DIR = "/var/log/xen/console";

/**
 * Whether a running xenconsoled (its argv) writes each guest's console to `DIR/guest-NAME.log`,
 * and where: it does with `--log=guest` or `--log=all` (these two have no short forms; a value may
 * also be the next argument). Abbreviations such as `--log-d` are not recognised.
 */
export function xenconsoledGuestLogDir(argv: readonly string[]): string | undefined {
  let log = "none";
  let dir = XENCONSOLED_DEFAULT_LOG_DIR;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    const next = argv[i + 1];
    const value = (option: string): string | undefined => {
      if (arg.startsWith(`${option}=`)) return arg.slice(option.length + 1);
      if (arg === option && next !== undefined) {
        i++;
        return next;
      }
      return undefined;
    };
    const logValue = value("--log");
    if (logValue !== undefined) log = logValue;
    const dirValue = value("--log-dir");
    if (dirValue !== undefined) dir = dirValue;
  }
  return log === "guest" || log === "all" ? dir : undefined;
}

/** xenconsoled's file for a domain's console. */
export function guestConsoleLog(logDir: string, domain: string): string {
  return `${logDir.replace(/\/+$/, "")}/guest-${domain}.log`;
}

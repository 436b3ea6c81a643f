import shellQuote from "shell-quote";
import { HostUnreachable } from "../errors.js";
import { type Command, type CommandResult, type Runner, requireSuccess } from "./runner.js";

/**
 * Commands on another machine of a fleet (a libvirt host): what libvirt does not do for shoal, such
 * as the fleet's VXLAN device, runs there over SSH as root, reached the way libvirt's own ssh
 * transport reaches it from the same URI (user, port, `command=` for the ssh program, `keyfile=`,
 * `known_hosts=`, `no_verify=1`), so one line in the fleet file says how to reach a host.
 */

/** A host's URI as far as SSH needs it; undefined for this machine's own daemon. */
export function sshArgvFor(uri: string): readonly [string, ...string[]] | undefined {
  const url = new URL(uri);
  const hostname = url.hostname.replace(/^\[|\]$/g, "");
  if (hostname === "") return undefined;
  const params = url.searchParams;
  const options = [
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=10",
    ...(url.port === "" ? [] : ["-p", url.port]),
    ...optional(params.get("keyfile"), (file) => ["-i", file]),
    ...optional(params.get("known_hosts"), (file) => ["-o", `UserKnownHostsFile=${file}`]),
    ...(params.get("no_verify") === "1" ? ["-o", "StrictHostKeyChecking=no"] : []),
    "-l",
    url.username === "" ? "root" : decodeURIComponent(url.username),
  ];
  return [params.get("command") ?? "ssh", ...options, "--", hostname];
}

function optional(value: string | null, argv: (value: string) => string[]): string[] {
  return value === null || value === "" ? [] : argv(value);
}

/**
 * The one runner, for commands on the host `uri` names: this machine's own runner for a local
 * URI, else each argv quoted for the remote shell and run through ssh (stdin passed on).
 */
export function runnerOn(
  runner: Runner,
  host: { readonly name: string; readonly uri: string },
): Runner {
  const ssh = sshArgvFor(host.uri);
  if (ssh === undefined) return runner;
  // One runner per host for this runner's life (a command): what is probed once per runner, such
  // as a kernel's impairment support, is probed once per host.
  const known = remoteRunners.get(runner) ?? new Map<string, Runner>();
  remoteRunners.set(runner, known);
  const key = `${host.name}\0${host.uri}`;
  const found = known.get(key);
  if (found) return found;
  const made: Runner = {
    run: async (command: Command): Promise<CommandResult> => {
      const result = await runner.run({
        ...command,
        argv: [...ssh, shellQuote.quote(["env", "LANG=C", ...command.argv])],
        okCodes: "any",
      });
      // ssh's own failures (no connection, no login) exit 255.
      if (result.code === SSH_FAILED) {
        const why = result.stderr.trim().split("\n").slice(-1)[0] ?? "";
        throw new HostUnreachable(host.name, `ssh: ${why}`);
      }
      return requireSuccess(command, result);
    },
  };
  known.set(key, made);
  return made;
}

const remoteRunners = new WeakMap<Runner, Map<string, Runner>>();

const SSH_FAILED = 255;

/**
 * Runs `act` for each host's part side by side, every one to its end: the hosts that could not be
 * reached, for the caller to say so; any other failure is thrown.
 */
export async function onEachHost<T>(
  parts: readonly T[],
  act: (part: T) => Promise<unknown>,
): Promise<HostUnreachable[]> {
  const results = await Promise.allSettled(parts.map(act));
  const unreachable: HostUnreachable[] = [];
  for (const result of results) {
    if (result.status === "fulfilled") continue;
    if (!(result.reason instanceof HostUnreachable)) throw result.reason;
    unreachable.push(result.reason);
  }
  return unreachable;
}

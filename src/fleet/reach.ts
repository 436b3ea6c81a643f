import { setTimeout as sleep } from "node:timers/promises";
import {
  forwardArgv,
  isAskedName,
  type PortForward,
  type RemotePath,
  remoteEnd,
  type SshAccess,
  type SshOptions,
  type SshTarget,
  scpArgv,
  sshArgv,
} from "../core/reach.js";
import { ShoalError, UserError } from "../errors.js";
import { pathExists } from "../host/paths.js";
import type { CommandResult, Runner } from "../host/runner.js";
import { readClientKey } from "../identity/identity.js";
import { receiveUntrusted } from "./guest-files.js";
import { type VmStatus, vmStatus } from "./lifecycle.js";
import type { FleetSession } from "./session.js";

/** Long enough for a VM under software emulation to accept a connection; short enough to retry. */
const CONNECT_TIMEOUT_S = 10;
const RETRY_MS = 1000;
const BATCH: SshOptions = { batch: true, connectTimeoutSeconds: CONNECT_TIMEOUT_S };

/** ssh's own exit code for "could not connect or log in"; a remote command's codes pass through. */
export const SSH_FAILED = 255;

/** ssh's message when a VM shows another host key than the one in the fleet's known_hosts. */
export function isHostKeyMismatch(stderr: string): boolean {
  return /Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED/.test(stderr);
}

/** The last thing ssh said, for one-line reports of a VM that could not be reached. */
export function lastLine(text: string): string {
  return text.trimEnd().split("\n").at(-1)?.replace(/\r$/, "") ?? "";
}

/**
 * Reaching a fleet's VMs over SSH: the fleet's key, its known_hosts, its network namespace, and
 * the address each VM has by its record.
 */
export class FleetReach {
  private constructor(
    private readonly runner: Runner,
    private readonly session: FleetSession,
    readonly access: SshAccess,
  ) {}

  static async open(runner: Runner, session: FleetSession): Promise<FleetReach> {
    const key = await readClientKey(session.paths.clientKeys);
    const knownHosts = session.paths.knownHosts;
    const made = await pathExists(knownHosts);
    if (!made || !key) {
      throw new UserError(
        `fleet ${session.fleet} has ${made ? "no SSH key of its own yet" : "no VMs yet"}`,
        "`shoal up` makes it",
      );
    }
    return new FleetReach(runner, session, {
      knownHosts,
      identity: key.privateKeyPath,
      namespace: session.network.namespace,
    });
  }

  target(name: string): SshTarget {
    return { name, ip: this.session.entry(name).spec.ip };
  }

  /**
   * Why a VM cannot answer (`it is stopped`), or undefined for a running one: as `observed` (with
   * the fleet's other VMs), or asked now.
   */
  async notRunning(name: string, observed?: VmStatus): Promise<string | undefined> {
    const { state } = observed ?? (await vmStatus(this.session, name));
    return state === "running" ? undefined : `it is ${state}`;
  }

  /** Refuses a VM that is not running, before ssh waits for a connection that cannot come. */
  async requireRunning(name: string): Promise<void> {
    const why = await this.notRunning(name);
    if (why)
      throw new UserError(
        `VM ${name} cannot be reached: ${why}`,
        `\`shoal start ${name}\` starts it`,
      );
  }

  /** An interactive session or one command with the user's terminal, as `ssh VM CMD` would. */
  async attach(name: string, command: readonly string[]): Promise<number> {
    const argv = sshArgv(this.access, this.target(name), command, {
      batch: false,
      connectTimeoutSeconds: CONNECT_TIMEOUT_S,
    });
    const result = await this.runner.run({ argv, attached: true, okCodes: "any" });
    if (result.code === SSH_FAILED && isHostKeyMismatch(result.stderr)) {
      throw hostKeyError(name);
    }
    // ssh ended by a signal has no exit code to pass on.
    return result.code < 0 ? 1 : result.code;
  }

  /** Forwards ports of this host's loopback to the VM until `stop` is aborted. */
  async forward(name: string, forwards: readonly PortForward[], stop: AbortSignal): Promise<void> {
    const result = await this.runner.run({
      argv: forwardArgv(this.access, this.target(name), forwards, BATCH),
      attached: true,
      okCodes: "any",
      signal: stop,
    });
    if (stop.aborted) return;
    if (isHostKeyMismatch(result.stderr)) throw hostKeyError(name);
    throw new ShoalError(
      `forwarding to ${name} ended: ${lastLine(result.stderr) || `ssh exit ${result.code}`}`,
    );
  }

  /** Runs a command on a VM without a terminal; every exit code is an answer. */
  run(
    name: string,
    command: readonly string[],
    options: {
      readonly onOutput?: (stream: "stdout" | "stderr", chunk: Buffer) => void;
      readonly timeoutMs?: number;
    } = {},
  ): Promise<CommandResult> {
    return this.runner.run({
      argv: sshArgv(this.access, this.target(name), command, BATCH),
      okCodes: "any",
      ...(options.onOutput ? { onOutput: options.onOutput } : {}),
      ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
    });
  }

  /**
   * Copies between this host and a VM with scp; a failure names the VM and what scp said. What
   * comes from a VM lands only once checked (src/host/guest-files.ts), under `subdirectory` of the
   * destination when given (one per VM).
   */
  async copy(
    from: string | RemotePath,
    to: string | RemotePath,
    options: { readonly subdirectory?: string; readonly signal?: AbortSignal } = {},
  ): Promise<void> {
    if (typeof from === "string" || typeof to !== "string") {
      return this.scp(from, to, options.signal);
    }
    return receiveUntrusted(
      {
        path: to,
        ...(options.subdirectory === undefined ? {} : { subdirectory: options.subdirectory }),
        asked: (name) => isAskedName(from.path, name),
        from: from.target.name,
        ...(options.signal === undefined ? {} : { signal: options.signal }),
      },
      (inbox) => this.scp(from, inbox.path, options.signal, inbox.fd),
    );
  }

  private async scp(
    from: string | RemotePath,
    to: string | RemotePath,
    signal: AbortSignal | undefined,
    fd3?: number,
  ): Promise<void> {
    const remote = remoteEnd(from, to);
    const result = await this.runner.run({
      argv: scpArgv(this.access, from, to, BATCH),
      okCodes: "any",
      ...(signal === undefined ? {} : { signal }),
      ...(fd3 === undefined ? {} : { fd3 }),
    });
    if (result.code === 0) return;
    if (isHostKeyMismatch(result.stderr)) throw hostKeyError(remote.target.name);
    throw new ShoalError(
      `copy on ${remote.target.name} failed: ${lastLine(result.stderr) || `scp exit ${result.code}`}`,
    );
  }

  /** Waits until a VM accepts an SSH login, or the deadline; a VM that stops ends the wait. */
  async waitForLogin(name: string, deadline: number): Promise<void> {
    for (;;) {
      const notRunning = await this.notRunning(name);
      if (notRunning) throw new ShoalError(notRunning);
      const result = await this.run(name, ["true"], {
        timeoutMs: (CONNECT_TIMEOUT_S + 5) * 1000,
      });
      if (result.code === 0) return;
      if (isHostKeyMismatch(result.stderr)) throw hostKeyError(name);
      if (Date.now() >= deadline) {
        throw new ShoalError(`no SSH login yet: ${lastLine(result.stderr) || "no answer"}`);
      }
      await sleep(RETRY_MS);
    }
  }
}

function hostKeyError(name: string): ShoalError {
  return new ShoalError(
    `VM ${name} did not show the SSH host key shoal made for it: refused (it may not be ${name})`,
    {
      exitCode: SSH_FAILED,
      hint: "if the VM's key was replaced on purpose, `shoal destroy` and `shoal up` give it a new identity",
    },
  );
}

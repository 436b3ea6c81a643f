import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { closeSync, constants, openSync } from "node:fs";
import { Duplex } from "node:stream";
import shellQuote from "shell-quote";
import { ShoalError } from "../errors.js";

/**
 * Every external command shoal runs goes through a Runner: argv arrays only (never a shell
 * string), LANG=C so output parses the same everywhere, and failures that say what ran.
 */
export interface Command {
  readonly argv: readonly [string, ...string[]];
  readonly input?: string | Buffer;
  /** Extra environment on top of shoal's own; LANG/LC_ALL stay C. */
  readonly env?: Readonly<Record<string, string>>;
  readonly timeoutMs?: number;
  readonly cwd?: string;
  /** An open file descriptor handed to the command as its fd 3 (flock works on it, for example). */
  readonly fd3?: number;
  /**
   * A probe only looks (lists, versions, locks): it runs in dry-run mode too, so that a dry run
   * plans from the real state of the host. Everything else is printed instead of run.
   */
  readonly probe?: boolean;
  /**
   * Exit codes that are answers, not failures (for example flock's 1 for "held by another").
   * "any": every ending is an answer, a timeout or signal too (code -1).
   */
  readonly okCodes?: readonly number[] | "any";
  /** Sees the output as it comes (it is still collected), for commands whose output is shown live. */
  readonly onOutput?: (stream: "stdout" | "stderr", chunk: Buffer) => void;
  /**
   * The command talks to the user directly (ssh): it gets shoal's stdin and stdout, and its stderr
   * is shown as it comes while its tail is kept for the result.
   */
  readonly attached?: boolean;
  /** Ends the command (SIGTERM) when aborted: for commands that run until the user stops them. */
  readonly signal?: AbortSignal;
  /**
   * Runs the command in a session of its own, out of reach of the terminal's Ctrl-C: for a step
   * that, cut halfway, leaves something the next run cannot tell from a working one.
   */
  readonly uninterruptible?: boolean;
}

export interface CommandResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** A program that keeps running after shoal exits (a VM's QEMU). */
export interface LaunchCommand {
  readonly argv: readonly [string, ...string[]];
  /** The file its output (stdout and stderr) is appended to; made 0600, never through a link. */
  readonly output: string;
}

export interface Launched {
  readonly pid: number;
  /** Settles with its exit code (-1: killed by a signal) if it ends while shoal still runs. */
  readonly ended: Promise<number>;
}

export interface Runner {
  run(command: Command): Promise<CommandResult>;
}

/** A Runner that also starts programs which outlive shoal (VMs' QEMU). */
export interface Launcher extends Runner {
  /**
   * Starts a program in a session of its own (out of reach of the terminal's Ctrl-C) with no
   * input and returns once it runs; undefined in a dry run, which only prints it.
   */
  launch(command: LaunchCommand): Promise<Launched | undefined>;
  /**
   * Starts a program whose input and output are one stream to talk over (a console reached
   * through ssh); it ends when the stream is destroyed.
   */
  connect(argv: readonly [string, ...string[]]): Duplex;
}

/** How a command line looks when shown to a person: copy-pasteable into a shell. */
export function formatArgv(argv: readonly string[]): string {
  return shellQuote.quote([...argv]);
}

const STDERR_TAIL_LINES = 10;

export class CommandFailed extends ShoalError {
  readonly argv: readonly string[];
  readonly code: number | null;
  readonly stderrTail: string;

  constructor(argv: readonly string[], code: number | null, stderr: string, reason?: string) {
    const tail = stderr.trimEnd().split("\n").slice(-STDERR_TAIL_LINES).join("\n");
    const status = reason ?? `exited with code ${code}`;
    super(`command failed (${status}): ${formatArgv(argv)}${tail ? `\n${tail}` : ""}`);
    this.argv = argv;
    this.code = code;
    this.stderrTail = tail;
  }
}

export interface ProcessRunnerOptions {
  /** Print commands that change things instead of running them. */
  readonly dryRun?: boolean;
  /** Where dry-run and --debug lines go. */
  readonly log?: (line: string) => void;
  /** Log every command before it runs. */
  readonly trace?: boolean;
}

export class ProcessRunner implements Launcher {
  constructor(private readonly options: ProcessRunnerOptions = {}) {}

  private log(line: string): void {
    if (this.options.log) this.options.log(line);
    else process.stderr.write(`${line}\n`);
  }

  async run(command: Command): Promise<CommandResult> {
    if (this.options.dryRun && !command.probe) {
      this.log(`would run: ${formatArgv(command.argv)}`);
      return { code: 0, stdout: "", stderr: "" };
    }
    if (this.options.trace) this.log(`+ ${formatArgv(command.argv)}`);
    return requireSuccess(command, await execute(command));
  }

  connect(argv: readonly [string, ...string[]]): Duplex {
    if (this.options.trace) this.log(`+ ${formatArgv(argv)} (a stream)`);
    const [file, ...args] = argv;
    const child = spawn(file, args, {
      env: { ...process.env, LANG: "C", LC_ALL: "C" },
      stdio: ["pipe", "pipe", "pipe"],
    });
    const stderr: Buffer[] = [];
    child.stderr.on("data", (chunk: Buffer) => stderr.push(chunk));
    const stream = Duplex.from({ readable: child.stdout, writable: child.stdin });
    child.on("error", (error) => stream.destroy(error));
    child.on("close", (code) => {
      if (code !== 0 && code !== null && !stream.destroyed) {
        stream.destroy(new CommandFailed(argv, code, Buffer.concat(stderr).toString()));
      }
    });
    stream.on("close", () => child.kill());
    return stream;
  }

  async launch(command: LaunchCommand): Promise<Launched | undefined> {
    if (this.options.dryRun) {
      this.log(`would run: ${formatArgv(command.argv)}`);
      return undefined;
    }
    if (this.options.trace) this.log(`+ ${formatArgv(command.argv)} >>${command.output}`);
    const output = openSync(
      command.output,
      constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW,
      0o600,
    );
    try {
      const [file, ...args] = command.argv;
      const child = spawn(file, args, {
        env: { ...process.env, LANG: "C", LC_ALL: "C" },
        stdio: ["ignore", output, output],
        detached: true,
      });
      const pid = await new Promise<number>((resolve, reject) => {
        child.once("spawn", () => resolve(child.pid ?? -1));
        child.once("error", (error: NodeJS.ErrnoException) =>
          reject(
            new CommandFailed(
              command.argv,
              null,
              "",
              error.code === "ENOENT" ? `${file} is not installed or not on PATH` : error.message,
            ),
          ),
        );
      });
      const ended = new Promise<number>((resolve) =>
        child.once("exit", (code) => resolve(code ?? -1)),
      );
      // It must not keep shoal from exiting.
      child.unref();
      return { pid, ended };
    } finally {
      closeSync(output);
    }
  }
}

/** Turns an exit code that is not an answer into a CommandFailed. */
export function requireSuccess(
  command: Command,
  result: CommandResult & { reason?: string },
): CommandResult {
  const answer = command.okCodes === "any" || command.okCodes?.includes(result.code);
  if (result.code !== 0 && !answer) {
    throw new CommandFailed(command.argv, result.code, result.stderr, result.reason);
  }
  return result;
}

function execute(command: Command): Promise<CommandResult & { reason?: string }> {
  const [file, ...args] = command.argv;
  return new Promise((resolve, reject) => {
    // With an fd3 the stdio array is not a literal tuple, so TypeScript cannot see the three pipes.
    const passed = command.attached ? "inherit" : "pipe";
    const child = spawn(file, args, {
      ...(command.cwd === undefined ? {} : { cwd: command.cwd }),
      env: { ...process.env, ...command.env, LANG: "C", LC_ALL: "C" },
      stdio: [passed, passed, "pipe", ...(command.fd3 === undefined ? [] : [command.fd3])],
      ...(command.signal === undefined ? {} : { signal: command.signal }),
      ...(command.uninterruptible ? { detached: true } : {}),
    }) as ChildProcessWithoutNullStreams;
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    // Attached, stdout is the user's terminal and not ours to read.
    child.stdout?.on("data", (chunk: Buffer) => {
      stdout.push(chunk);
      command.onOutput?.("stdout", chunk);
    });
    child.stderr.on("data", (chunk: Buffer) => {
      stderr.push(chunk);
      if (command.attached) process.stderr.write(chunk);
      command.onOutput?.("stderr", chunk);
    });
    // Not spawn's own timeout: its timer outlives a program that could not start, and keeps
    // shoal from exiting until it fires.
    let timedOut = false;
    const timer =
      command.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            child.kill("SIGKILL");
          }, command.timeoutMs);
    child.on("error", (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      // An abort is the caller's own stop; "close" reports how the command ended.
      if (error.name === "AbortError") return;
      const reason =
        error.code === "ENOENT" ? `${file} is not installed or not on PATH` : error.message;
      reject(new CommandFailed(command.argv, null, "", reason));
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const err = Buffer.concat(stderr).toString();
      if (code === null) {
        const reason = timedOut ? `timed out after ${command.timeoutMs} ms` : `killed by ${signal}`;
        resolve({ code: -1, stdout: Buffer.concat(stdout).toString(), stderr: err, reason });
        return;
      }
      resolve({ code, stdout: Buffer.concat(stdout).toString(), stderr: err });
    });
    if (!child.stdin) return;
    child.stdin.on("error", () => {
      // The command may exit without reading its input; its exit status tells what happened.
    });
    child.stdin.end(command.input);
  });
}

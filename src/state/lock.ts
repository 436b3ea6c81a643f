import { constants } from "node:fs";
import { mkdir, open, readFile } from "node:fs/promises";
import { dirname } from "node:path";
import { ExitCode, ShoalError } from "../errors.js";
import { ifExists } from "../host/paths.js";
import type { Runner } from "../host/runner.js";
import { parseJsonOrUndefined } from "./json.js";

/**
 * One lock per fleet (and one for the image store, and one host-wide for `xl create`), so two shoal
 * commands never change a fleet at once. It is a flock(2) lock:
 * the kernel drops it when its holder exits in any way (Ctrl-C, SIGKILL, power loss), so there is
 * never a stale lock to clean up. Node has no flock(), so util-linux flock(1) takes it on an open
 * file description shoal passes in; the lock belongs to that description and stays with shoal
 * after flock(1) exits. Node opens files close-on-exec, so VMs that shoal starts never inherit it.
 */

export interface LockHolder {
  readonly pid: number;
  readonly command: string;
  readonly since: string;
}

export class FleetLocked extends ShoalError {
  constructor(
    subject: string,
    holder: LockHolder | undefined,
    waitedSeconds: number,
    hint = "wait for it to finish",
  ) {
    const who = holder
      ? `shoal ${holder.command} (pid ${holder.pid}, since ${holder.since})`
      : "another shoal command";
    super(
      `${subject} is busy: ${who} holds its lock${waitedSeconds > 0 ? ` and did not finish within ${waitedSeconds}s` : ""}`,
      { exitCode: ExitCode.locked, hint },
    );
  }
}

export interface FleetLock {
  release(): Promise<void>;
}

export interface LockOptions {
  /** What the lock guards, for messages: "fleet lab", "the image store". */
  readonly subject: string;
  /** The shoal command taking the lock, shown to whoever waits for it. */
  readonly command: string;
  readonly waitSeconds: number;
  /** Told once when the lock is held by someone else and shoal starts waiting. */
  readonly onWait?: (holder: LockHolder | undefined) => void;
  /** What the user can do when the lock stays busy; each lock has its own remedies. */
  readonly hint?: string;
  /** Held beside other shared holders, against an exclusive one (flock --shared). */
  readonly shared?: boolean;
}

async function readHolder(path: string): Promise<LockHolder | undefined> {
  // Empty or not JSON (a holder between taking the lock and writing its name): unknown holder.
  const holder = parseJsonOrUndefined((await ifExists(readFile(path, "utf8"))) ?? "") as
    | Partial<LockHolder>
    | null
    | undefined;
  if (
    typeof holder?.pid === "number" &&
    typeof holder.command === "string" &&
    typeof holder.since === "string"
  ) {
    return { pid: holder.pid, command: holder.command, since: holder.since };
  }
  return undefined;
}

export async function acquireLock(
  runner: Runner,
  path: string,
  options: LockOptions,
): Promise<FleetLock> {
  await mkdir(dirname(path), { recursive: true });
  // Never through a link: the holder's name is written into the file.
  const handle = await open(
    path,
    constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW,
    0o644,
  ).catch((error: unknown) => {
    if ((error as NodeJS.ErrnoException).code !== "ELOOP") throw error;
    throw new ShoalError(`the lock ${path} is a symbolic link; shoal made a file there`, {
      hint: "someone changed the state directory: look at it, and remove the link",
    });
  });
  const flock = async (...mode: string[]) => {
    const result = await runner.run({
      argv: ["flock", options.shared ? "--shared" : "--exclusive", ...mode, "3"],
      fd3: handle.fd,
      probe: true,
      okCodes: [1],
    });
    return result.code === 0;
  };
  try {
    let locked = await flock("--nonblock");
    if (!locked && options.waitSeconds > 0) {
      options.onWait?.(await readHolder(path));
      locked = await flock("--wait", String(options.waitSeconds));
    }
    if (!locked) {
      throw new FleetLocked(
        options.subject,
        await readHolder(path),
        options.waitSeconds,
        options.hint,
      );
    }
    const holder: LockHolder = {
      pid: process.pid,
      command: options.command,
      since: new Date().toISOString(),
    };
    await handle.truncate(0);
    await handle.write(JSON.stringify(holder), 0);
  } catch (error) {
    await handle.close();
    throw error;
  }
  return {
    // The name goes with the lock: the next holder, or one that is no shoal, is not taken for it.
    release: async () => {
      try {
        await handle.truncate(0);
      } finally {
        await handle.close();
      }
    },
  };
}

/** Runs `work` while holding the lock; the lock goes when `work` ends, however it ends. */
export async function withLock<T>(
  runner: Runner,
  path: string,
  options: LockOptions,
  work: () => Promise<T>,
): Promise<T> {
  const lock = await acquireLock(runner, path, options);
  try {
    return await work();
  } finally {
    await lock.release();
  }
}

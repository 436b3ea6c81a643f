import { constants } from "node:fs";
import { mkdir, open, stat } from "node:fs/promises";
import { dirname } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { undefinedUnlessBug } from "../../errors.js";
import { ifExists } from "../../host/paths.js";
import { CommandFailed, type Launcher } from "../../host/runner.js";
import type { VmPaths } from "../../state/layout.js";
import { QmpClient } from "./qmp.js";

/** QEMU sets itself up in well under a second; a host busy starting many VMs may take far longer. */
const START_TIMEOUT_MS = 60_000;
const GREETING_TIMEOUT_MS = 10_000;
const POLL_MS = 50;
const LOG_TAIL_BYTES = 4096;

const { O_WRONLY, O_RDONLY, O_CREAT, O_APPEND, O_TRUNC, O_NOFOLLOW, O_DIRECTORY } = constants;

/** Makes `path` root's, of group `gid`, with `mode`: through a handle, so never through a link. */
async function own(path: string, flags: number, mode: number, gid: number): Promise<void> {
  const handle = await open(path, flags | O_NOFOLLOW, mode);
  try {
    await handle.chown(0, gid);
    await handle.chmod(mode);
  } finally {
    await handle.close();
  }
}

/**
 * Lets the unprivileged QEMU (of group `gid`) at what it opens, and at nothing else of the VM's:
 * it may enter the VM's directory (not list it), read the identity seed, read and write the layer,
 * write the serial log and its pid file, and make its sockets in a directory of their own. Every
 * file stays root's, so QEMU cannot change who else may read it; the host key directory, the
 * definition and QEMU's own log stay root's alone.
 */
export async function grantQemuAccess(
  paths: VmPaths,
  hasLayer: boolean,
  gid: number,
): Promise<void> {
  const directory = O_RDONLY | O_DIRECTORY;
  await own(dirname(paths.dir), directory, 0o710, gid);
  await own(paths.dir, directory, 0o710, gid);
  await own(paths.seed, O_RDONLY, 0o640, gid);
  if (hasLayer) await own(paths.layer, O_RDONLY, 0o660, gid);
  await own(paths.serialLog, O_WRONLY | O_CREAT | O_APPEND, 0o620, gid);
  // Emptied: until QEMU writes its pid, no earlier pid is taken for it.
  await own(paths.pidFile, O_WRONLY | O_CREAT | O_TRUNC, 0o620, gid);
  await mkdir(paths.socketDir, { mode: 0o770 }).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== "EEXIST") throw error;
  });
  await own(paths.socketDir, directory, 0o770, gid);
}

/** What QEMU wrote to its log since `offset` (its last part). */
async function logSince(log: string, offset: number): Promise<string> {
  const handle = await ifExists(open(log, O_RDONLY | O_NOFOLLOW));
  if (!handle) return "";
  try {
    const { size } = await handle.stat();
    const start = Math.max(offset, size - LOG_TAIL_BYTES);
    const buffer = Buffer.alloc(Math.max(0, size - start));
    await handle.read(buffer, 0, buffer.length, start);
    return buffer.toString();
  } finally {
    await handle.close();
  }
}

/**
 * Starts QEMU in the background, its messages appended to `files.log`, and returns once it
 * answers on QMP: QEMU under -sandbox cannot -daemonize, so this is how shoal knows it is set up.
 * A QEMU that ends first fails with what it wrote; one that never answers is killed.
 */
export async function launchQemu(
  runner: Launcher,
  argv: readonly [string, ...string[]],
  files: { readonly qmpSocket: string; readonly log: string },
): Promise<void> {
  const offset = (await ifExists(stat(files.log)))?.size ?? 0;
  const launched = await runner.launch({ argv, output: files.log });
  if (launched === undefined) return;
  let exitCode: number | undefined;
  void launched.ended.then((code) => {
    exitCode = code;
  });
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    // Not answering yet is the expected failure here, not absence: only a bug is thrown on.
    const qmp = await QmpClient.connect(files.qmpSocket, GREETING_TIMEOUT_MS).catch(
      undefinedUnlessBug,
    );
    if (qmp) {
      qmp.close();
      return;
    }
    if (exitCode !== undefined) {
      throw new CommandFailed(
        argv,
        exitCode,
        await logSince(files.log, offset),
        `ended with code ${exitCode} while starting`,
      );
    }
    if (Date.now() > deadline) {
      try {
        process.kill(launched.pid, "SIGKILL");
      } catch (error) {
        // Gone meanwhile.
        if ((error as NodeJS.ErrnoException).code !== "ESRCH") throw error;
      }
      throw new CommandFailed(
        argv,
        null,
        await logSince(files.log, offset),
        `did not answer on QMP within ${START_TIMEOUT_MS / 1000} s`,
      );
    }
    await sleep(POLL_MS);
  }
}

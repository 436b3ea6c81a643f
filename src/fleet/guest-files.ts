// Over 400 lines: one security boundary, what a guest sends landing on the host; every check
// is in one file so that a reviewer reads the whole path from inbox to destination at once.
import { constants, type Stats } from "node:fs";
import {
  type FileHandle,
  lstat,
  mkdir,
  open,
  readdir,
  realpath,
  rename,
  rmdir,
  unlink,
} from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { bytesToText, escapeName } from "../core/terminal.js";
import { ShoalError, UserError } from "../errors.js";
import { ifExists } from "../host/paths.js";
import { isStaleTempName, isTempName, tempPathBeside } from "../state/atomic.js";

/**
 * Files that come from a guest, landing in a directory of the host. The guest is not trusted: it
 * picks names, modes and what it claims to send, and shoal runs as root. So the transfer writes
 * into a private scratch directory (0700, made by shoal inside the directory the files land in, so
 * the last step is a rename on one filesystem); shoal then checks what arrived before any of it is
 * visible: only regular files and directories, setuid, setgid and sticky bits cleared, top-level
 * names only those the user asked for; and moves it into place without following a link: every
 * directory shoal writes in is held open (O_NOFOLLOW) and reached through /proc/self/fd, so a link
 * swapped in while the copy runs cannot redirect it. Links, FIFOs, sockets and devices never land.
 */

const { O_RDONLY, O_DIRECTORY, O_NOFOLLOW, O_NONBLOCK, O_NOCTTY } = constants;

/** What a guest may not set on the host: setuid, setgid, sticky. */
const SPECIAL_MODE_BITS = 0o7000;
/** What it may: the permission bits. */
const KEPT_MODE_BITS = 0o777;

/** Where the transfer writes inside the scratch directory (which is its fd 3). */
const INBOX = "in";

/** The transfer's view of where to write: a path that is valid in a process given `fd` as fd 3. */
export interface Inbox {
  readonly fd: number;
  readonly path: string;
}

export interface Landing {
  /** The destination as the user named it: a directory to copy into, a file, or a new name. */
  readonly path: string;
  /** A directory of shoal's under `path` that the copy goes into (one per VM); made if missing. */
  readonly subdirectory?: string;
  /** Which top-level names the user asked for; anything else a guest sends is refused. */
  readonly asked: (name: string) => boolean;
  /** Who sent the files, for messages: "vm-1". */
  readonly from: string;
  /** Ends the transfer; nothing it wrote is placed. */
  readonly signal?: AbortSignal;
}

/** A directory held open, so that names below it are found in this directory and no other. */
class HeldDirectory {
  private constructor(
    private readonly handle: FileHandle,
    /** The path as the user would write it, for messages. */
    readonly shown: string,
  ) {}

  static async open(path: string | Buffer, shown: string): Promise<HeldDirectory> {
    return new HeldDirectory(await open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW), shown);
  }

  /** The directory `name` in this one, or why it is not one (a link, a file). */
  async child(
    name: Buffer,
    shown = join(this.shown, showName(name)),
  ): Promise<HeldDirectory | string> {
    try {
      return await HeldDirectory.open(this.at(name), shown);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== "ELOOP" && code !== "ENOTDIR") throw error;
      // With O_DIRECTORY a link fails as ENOTDIR, like a file.
      return (await lstat(this.at(name))).isSymbolicLink()
        ? linkRefusal(shown)
        : `${shown} is not a directory`;
    }
  }

  get fd(): number {
    return this.handle.fd;
  }

  /** This directory's path through the open descriptor: it cannot be redirected. */
  get path(): string {
    return `/proc/self/fd/${this.handle.fd}`;
  }

  at(name: Buffer): Buffer {
    return Buffer.concat([Buffer.from(`${this.path}/`), name]);
  }

  stat(): Promise<Stats> {
    return this.handle.stat();
  }

  chmod(mode: number): Promise<void> {
    return this.handle.chmod(mode);
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}

function linkRefusal(shown: string): string {
  return `${shown} is a symbolic link; shoal does not write through links`;
}

/** A name from a guest as it may be shown: byte for byte, anything a terminal acts on escaped. */
function showName(name: Buffer): string {
  return escapeName(bytesToText(name));
}

function kindOf(info: Stats): string {
  if (info.isSymbolicLink()) return "a symbolic link";
  if (info.isFIFO()) return "a FIFO";
  if (info.isSocket()) return "a socket";
  if (info.isCharacterDevice()) return "a character device";
  if (info.isBlockDevice()) return "a block device";
  if (info.isFile()) return "a hard link to a file elsewhere";
  return "not a regular file or a directory";
}

async function names(dir: HeldDirectory): Promise<Buffer[]> {
  return (await readdir(dir.path, { encoding: "buffer" })).sort(Buffer.compare);
}

async function lstatIfThere(path: Buffer): Promise<Stats | undefined> {
  try {
    return await lstat(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
}

/**
 * Clears setuid, setgid and sticky bits below `dir` (and on it) and lists what is neither a
 * regular file of one name nor a directory. Changes go through descriptors opened without
 * following links, after the type was checked without opening (opening a device can act on it);
 * a file without those bits is only looked at (10,000 files: one lstat each).
 */
async function sanitize(dir: HeldDirectory, problems: string[]): Promise<void> {
  for (const name of await names(dir)) {
    const path = dir.at(name);
    const info = await lstat(path);
    if (isTempName(name.toString("utf8"))) {
      problems.push(`${join(dir.shown, showName(name))} has a name shoal keeps for its scratch`);
    } else if (info.isDirectory()) {
      const inner = await dir.child(name);
      if (typeof inner === "string") throw new Error(`internal: ${inner} in shoal's scratch`);
      try {
        await sanitize(inner, problems);
      } finally {
        await inner.close();
      }
    } else if (info.isFile() && info.nlink === 1) {
      if ((info.mode & SPECIAL_MODE_BITS) !== 0) await restrictFile(path, info);
    } else {
      problems.push(`${join(dir.shown, showName(name))} is ${kindOf(info)}`);
    }
  }
  const info = await dir.stat();
  if ((info.mode & SPECIAL_MODE_BITS) !== 0) await dir.chmod(info.mode & KEPT_MODE_BITS);
}

async function restrictFile(path: Buffer, info: Stats): Promise<void> {
  const handle = await open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
  try {
    if ((await handle.stat()).ino !== info.ino)
      throw new Error("internal: shoal's scratch changed");
    await handle.chmod(info.mode & KEPT_MODE_BITS);
  } finally {
    await handle.close();
  }
}

/**
 * Puts `name` from `from` at `name` in `into`: renamed when nothing is there, a file renamed over a
 * file, a directory merged into a directory (its own mode kept), as scp would; anything else
 * (a link, a directory on another filesystem, a file onto a directory) is a problem. With `act`
 * false only the problems are found, so that a refused copy changes nothing.
 */
async function settle(
  from: HeldDirectory,
  into: HeldDirectory,
  name: Buffer,
  target: Buffer,
  act: boolean,
  problems: string[],
): Promise<void> {
  const source = await lstat(from.at(name));
  const there = await lstatIfThere(into.at(target));
  const shown = join(into.shown, showName(target));
  if (there === undefined || (there.isFile() && source.isFile())) {
    if (act) await moveInto(from.at(name), into.at(target), shown);
    return;
  }
  if (!(there.isDirectory() && source.isDirectory())) {
    problems.push(
      there.isSymbolicLink()
        ? linkRefusal(shown)
        : there.isDirectory()
          ? `${shown} is a directory`
          : source.isDirectory()
            ? `${shown} is not a directory`
            : `${shown} is not a regular file`,
    );
    return;
  }
  if (there.dev !== source.dev) {
    problems.push(`${shown} is on another filesystem; copy into it directly`);
    return;
  }
  const inner = await into.child(target);
  if (typeof inner === "string") {
    problems.push(inner);
    return;
  }
  const incoming = await from.child(name);
  if (typeof incoming === "string") throw new Error(`internal: ${incoming} in shoal's scratch`);
  try {
    for (const child of await names(incoming)) {
      await settle(incoming, inner, child, child, act, problems);
    }
  } finally {
    await incoming.close();
    await inner.close();
  }
}

async function moveInto(from: Buffer, to: Buffer, shown: string): Promise<void> {
  try {
    await rename(from, to);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EXDEV") throw error;
    throw new ShoalError(`${shown} is on another filesystem (a mount); copy into it directly`);
  }
}

function refused(from: string, problems: readonly string[]): ShoalError {
  const shown = problems.slice(0, 5).join("; ");
  const more = problems.length > 5 ? ` and ${problems.length - 5} more` : "";
  return new ShoalError(`copy from ${from} refused: ${shown}${more}; nothing copied`);
}

/** Where the copy's entries go: into a directory, or one entry as a name in a directory. */
interface Place {
  readonly dir: HeldDirectory;
  /** The one name the copy takes in `dir`; without it, entries keep their own names. */
  readonly as?: Buffer;
}

function refuseScratchPath(path: string): void {
  if (path.split("/").some(isTempName)) {
    throw new UserError(
      `${path} is inside a scratch directory of shoal's (*.shoal-tmp), which shoal removes`,
    );
  }
}

/** The user's destination, resolved as they meant it: links in the path they typed are followed. */
async function resolvePlace(landing: Landing): Promise<Place> {
  const resolved = await realpath(landing.path).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT" && landing.subdirectory === undefined) return undefined;
    throw new UserError(`${landing.path}: ${error.message}`);
  });
  if (resolved === undefined) {
    const name = basename(landing.path);
    if (name === "" || name === "." || name === "..") {
      throw new UserError(`${JSON.stringify(landing.path)} names no file or directory`);
    }
    const parent = await ifExists(realpath(dirname(landing.path)));
    if (parent === undefined) throw new UserError(`${dirname(landing.path)} does not exist`);
    refuseScratchPath(join(parent, name));
    return { dir: await HeldDirectory.open(parent, dirname(landing.path)), as: Buffer.from(name) };
  }
  refuseScratchPath(resolved);
  const info = await lstat(resolved);
  if (info.isDirectory()) {
    const dir = await HeldDirectory.open(resolved, landing.path);
    if (landing.subdirectory === undefined) return { dir };
    try {
      return { dir: await ownDirectory(dir, landing.subdirectory) };
    } finally {
      await dir.close();
    }
  }
  if (info.isFile() && landing.subdirectory === undefined) {
    return {
      dir: await HeldDirectory.open(dirname(resolved), dirname(landing.path)),
      as: Buffer.from(basename(resolved)),
    };
  }
  throw new UserError(`${landing.path} is not a directory or a regular file`);
}

async function ownDirectory(parent: HeldDirectory, name: string): Promise<HeldDirectory> {
  refuseScratchPath(name);
  const bytes = Buffer.from(name);
  await mkdir(parent.at(bytes), { mode: 0o755 }).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== "EEXIST") throw error;
  });
  const dir = await parent.child(bytes);
  if (typeof dir === "string") throw new UserError(dir);
  return dir;
}

/**
 * Runs `transfer` into a private scratch directory and lands what it wrote at `landing` once it is
 * checked. A failed transfer still lands what arrived (as scp leaves what it copied) and then fails;
 * an aborted one lands nothing. The scratch directory is removed in every case; one that a killed
 * shoal left is removed by the next copy to the same place.
 */
export async function receiveUntrusted(
  landing: Landing,
  transfer: (inbox: Inbox) => Promise<void>,
): Promise<void> {
  const place = await resolvePlace(landing);
  try {
    await sweepStaleScratch(place.dir);
    const scratchName = Buffer.from(basename(tempPathBeside(join(place.dir.path, "cp"))));
    await mkdir(place.dir.at(scratchName), { mode: 0o700 }).catch((error: Error) => {
      throw new UserError(`${place.dir.shown}: nothing can be copied there (${error.message})`);
    });
    const scratch = await place.dir.child(scratchName);
    if (typeof scratch === "string") throw new ShoalError(`shoal's scratch directory: ${scratch}`);
    try {
      await checkFresh(scratch);
      try {
        await receiveInto(scratch, place, landing, transfer);
      } finally {
        await empty(scratch);
        await rmdir(place.dir.at(scratchName));
      }
    } finally {
      await scratch.close();
    }
  } finally {
    await place.dir.close();
  }
}

/**
 * Removes everything in `dir` through descriptors, level by level: a link found (or swapped in by
 * someone who can write there) is removed itself, never followed.
 */
async function empty(dir: HeldDirectory): Promise<void> {
  for (const name of await names(dir)) {
    const inner = await dir.child(name);
    if (typeof inner === "string") {
      await unlink(dir.at(name));
      continue;
    }
    try {
      await empty(inner);
    } finally {
      await inner.close();
    }
    await rmdir(dir.at(name));
  }
}

/**
 * Scratch directories that a killed shoal left here: only directories of root's that nobody else
 * can write in (as shoal makes them), so that a look-alike planted by another user is left alone.
 */
async function sweepStaleScratch(dir: HeldDirectory): Promise<void> {
  for (const name of await names(dir)) {
    if (!isStaleTempName(name.toString("utf8"))) continue;
    const stale = await dir.child(name);
    if (typeof stale === "string") continue;
    try {
      const info = await stale.stat();
      if (info.uid !== process.getuid?.() || (info.mode & 0o077) !== 0) continue;
      await empty(stale);
    } finally {
      await stale.close();
    }
    await rmdir(dir.at(name));
  }
}

/**
 * The scratch directory is made in the user's directory, where others may have write access: it
 * must still be the empty directory of root's that shoal made, not one swapped in.
 */
async function checkFresh(scratch: HeldDirectory): Promise<void> {
  const info = await scratch.stat();
  if (info.uid !== process.getuid?.() || (await names(scratch)).length > 0) {
    throw new ShoalError(`${scratch.shown}: shoal's scratch directory was replaced while made`);
  }
}

async function receiveInto(
  scratch: HeldDirectory,
  place: Place,
  landing: Landing,
  transfer: (inbox: Inbox) => Promise<void>,
): Promise<void> {
  // The transfer's own mode bits are the guest's to choose (scp -p sets them on what it makes,
  // "." included): it writes one level down, so the scratch directory itself stays 0700.
  await scratch.chmod(0o700);
  const inboxName = Buffer.from(INBOX);
  await mkdir(scratch.at(inboxName), { mode: 0o700 });
  const failure = await transfer({ fd: scratch.fd, path: `/proc/self/fd/3/${INBOX}` }).then(
    () => undefined,
    (error: unknown) => error,
  );
  if (landing.signal?.aborted) {
    throw new ShoalError(`copy from ${landing.from} interrupted; nothing copied`);
  }
  const inbox = await scratch.child(inboxName, place.dir.shown);
  if (typeof inbox === "string") throw new Error(`internal: ${inbox} in shoal's scratch`);
  try {
    const entries = await names(inbox);
    const problems: string[] = [];
    for (const name of entries) {
      const text = name.toString("utf8");
      if (!landing.asked(text)) {
        problems.push(`${landing.from} sent ${showName(name)}, which was not asked for`);
      }
    }
    if (problems.length > 0) throw refused(landing.from, problems);
    await sanitize(inbox, problems);
    if (problems.length > 0) throw refused(landing.from, problems);
    if (place.as !== undefined && entries.length > 1) {
      throw new UserError(
        `${landing.path} is not a directory, and ${entries.length} entries came from ${landing.from}`,
        "copy into a directory",
      );
    }
    for (const act of [false, true]) {
      for (const name of entries) {
        await settle(inbox, place.dir, name, place.as ?? name, act, problems);
      }
      if (problems.length > 0) throw refused(landing.from, problems);
    }
  } finally {
    await inbox.close();
  }
  if (failure !== undefined) throw failure;
}

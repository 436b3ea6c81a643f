import { lstat, readdir, realpath, stat, statfs } from "node:fs/promises";
import { dirname, join, relative, sep } from "node:path";
import { ShoalError, UserError } from "../errors.js";
import { type StateLayout, stateLayout } from "./layout.js";

/**
 * shoal runs as root and executes, mounts and deletes what its state directory holds, so the
 * directory must be one only root can change, as sshd's StrictModes asks of ~/.ssh: owned by root
 * and writable by nobody else, and so must every directory above it (a sticky one such as /tmp is
 * fine there: others may add entries but not replace ours). Inside it, shoal makes no links but
 * the image names, so a link anywhere else was planted and is never followed.
 */

/** Filesystems of the kernel's own objects: state kept there would be nonsense or worse. */
const PSEUDO_FILESYSTEMS = new Map<number, string>([
  [0x9fa0, "proc"],
  [0x62656572, "sysfs"],
  [0x1cd1, "devpts"],
  [0x27e0eb, "cgroup"],
  [0x63677270, "cgroup2"],
  [0x64626720, "debugfs"],
  [0x74726163, "tracefs"],
  [0x73636673, "securityfs"],
  [0xcafe4a11, "bpf"],
  [0x62656570, "configfs"],
  [0x6165676c, "pstore"],
  [0xde5e81e4, "efivarfs"],
  [0x6e736673, "nsfs"],
  [0x42494e4d, "binfmt_misc"],
  [0x19800202, "mqueue"],
  [0x65735543, "fusectl"],
  [0xf97cff8c, "selinuxfs"],
]);

/** Trees of device nodes and kernel objects, which may sit on an ordinary tmpfs (devtmpfs). */
const KERNEL_TREES = ["/dev", "/proc", "/sys"];

const FIX = "it must be owned by root and writable by no other user";

/** ENOTDIR too: a file where a directory above was, so nothing at the path; the caller says what is there. */
function isMissing(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return code === "ENOENT" || code === "ENOTDIR";
}

/** The nearest directory at or above `path` that exists, and the part of `path` below it. */
async function nearestExisting(path: string): Promise<{ dir: string; rest: string }> {
  let dir = path;
  for (;;) {
    const info = await stat(dir).catch((error: unknown) => {
      if (isMissing(error)) return undefined;
      throw error;
    });
    if (info) return { dir, rest: relative(dir, path) };
    dir = dirname(dir);
  }
}

function writableByOthers(info: { mode: number; gid: number }): boolean {
  return (info.mode & 0o002) !== 0 || ((info.mode & 0o020) !== 0 && info.gid !== 0);
}

/**
 * Checks the state directory a user gave (and lays out every path under it): a directory, or a
 * path where one can be made, on a real filesystem, that only root can change.
 */
export async function openStateDir(stateDir: string): Promise<StateLayout> {
  if (stateDir === "") {
    throw new UserError(
      "the state directory is empty (--state-dir or SHOAL_STATE_DIR)",
      "give a directory, or unset SHOAL_STATE_DIR for the default /var/lib/shoal",
    );
  }
  const layout = stateLayout(stateDir);
  const given = JSON.stringify(stateDir);
  let existing: { dir: string; rest: string };
  try {
    existing = await nearestExisting(layout.root);
  } catch (error) {
    throw new UserError(
      `state directory ${given} cannot be looked at: ${(error as Error).message}`,
    );
  }
  if (existing.rest !== "" && !(await stat(existing.dir)).isDirectory()) {
    throw new UserError(
      `state directory ${given} cannot be made: ${existing.dir} is not a directory`,
    );
  }
  const real = join(await realpath(existing.dir), existing.rest);
  const tree = KERNEL_TREES.find((top) => real === top || real.startsWith(`${top}${sep}`));
  const kind = PSEUDO_FILESYSTEMS.get((await statfs(existing.dir)).type);
  if (tree !== undefined || kind !== undefined) {
    throw new UserError(
      `state directory ${given} is in ${kind ?? tree}, which holds the kernel's objects, not files`,
      "choose a directory on a disk, such as the default /var/lib/shoal",
    );
  }
  if (existing.rest === "") {
    const info = await stat(real);
    if (!info.isDirectory()) {
      throw new UserError(`state directory ${given} is not a directory`, "give a directory");
    }
    if (info.uid !== 0 || writableByOthers(info)) {
      throw new UserError(
        `state directory ${real} is ${info.uid !== 0 ? `owned by uid ${info.uid}` : "writable by other users"}`,
        `${FIX}: \`chown root:root ${real} && chmod go-w ${real}\``,
      );
    }
  }
  for (let dir = dirname(real); ; dir = dirname(dir)) {
    const info = await stat(dir);
    const sticky = (info.mode & 0o1000) !== 0;
    if (info.uid !== 0 || (writableByOthers(info) && !sticky)) {
      throw new UserError(
        `state directory ${real} is below ${dir}, which is ${info.uid !== 0 ? `owned by uid ${info.uid}` : "writable by other users"}: they could replace the state directory`,
        `every directory above it must be owned by root and writable by no other user (or sticky, as /tmp): \`chown root ${dir} && chmod go-w ${dir}\`, or choose another --state-dir`,
      );
    }
    if (dir === dirname(dir)) break;
  }
  return stateLayout(real);
}

/**
 * A directory inside the state directory that shoal is about to write into, remove or run from:
 * a real directory (not a link someone planted) owned by root and writable by no other user.
 * Absent is fine; shoal makes it.
 */
export async function checkOwnDirectory(path: string): Promise<void> {
  const info = await lstat(path).catch((error: unknown) => {
    if (isMissing(error)) return undefined;
    throw error;
  });
  if (info === undefined) return;
  if (info.isSymbolicLink() || !info.isDirectory()) {
    throw new ShoalError(
      `${path} is ${info.isSymbolicLink() ? "a symbolic link" : "not a directory"}; shoal made a directory there and does not follow what replaced it`,
      { hint: "someone changed the state directory: look at it, and remove what is not shoal's" },
    );
  }
  if (info.uid !== 0 || writableByOthers(info)) {
    throw new ShoalError(
      `${path} is ${info.uid !== 0 ? `owned by uid ${info.uid}` : "writable by other users"}; shoal does not use it`,
      { hint: `${FIX}: \`chown root:root ${path} && chmod go-w ${path}\`` },
    );
  }
}

/**
 * A directory of shoal's own (a VM's) holds regular files, sockets and directories shoal made; a
 * symbolic link in it was planted, and writing to it (QEMU's console log, for one) would write
 * wherever it points.
 */
export async function checkNoLinksIn(dir: string): Promise<void> {
  await checkOwnDirectory(dir);
  const entries = await readdir(dir, { withFileTypes: true }).catch((error: unknown) => {
    if (isMissing(error)) return [];
    throw error;
  });
  const link = entries.find((entry) => entry.isSymbolicLink());
  if (link) {
    throw new ShoalError(
      `${join(dir, link.name)} is a symbolic link; shoal made no link there and does not write through it`,
      { hint: "someone changed the state directory: look at it, and remove the link" },
    );
  }
}

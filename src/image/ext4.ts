import { randomBytes } from "node:crypto";
import { chmod, chown, stat } from "node:fs/promises";
import { bytesToText, textToBytes } from "../core/terminal.js";
import { ShoalError } from "../errors.js";
import type { Runner } from "../host/runner.js";

/**
 * Reading and editing ext4 images without mounting them, through debugfs: no loop device, no
 * mount to clean up if shoal is killed.
 */

export interface DirEntry {
  readonly name: string;
  readonly inode: number;
  readonly mode: number;
  /** uid:gid */
  readonly owner: string;
  readonly size: number;
}

export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFCHR = 0o020000;

/** debugfs always exits 0; what went wrong is on stderr, after its version banner. */
function debugfsErrors(stderr: string): string[] {
  return stderr.split("\n").filter((line) => line.trim() !== "" && !/^debugfs \d/.test(line));
}

/** The inode of every ext4 file system's root directory. */
export const ROOT_INODE = 2;

/**
 * Quotes a path for debugfs's command parser, which reads `""` inside quotes as one quote. A
 * request is one line, so a path with a line break cannot be named: address the file by inode
 * (`inodeSpec`) instead, as everything that reads names from an image does.
 */
export function debugfsQuote(path: string): string {
  if (/[\n\r\0]/.test(path)) {
    throw new ShoalError(
      `cannot name a path with a line break in a debugfs request: ${JSON.stringify(path)}`,
    );
  }
  return `"${path.replaceAll('"', '""')}"`;
}

/** debugfs's name for a file by its inode: whatever bytes the file's name holds. */
export function inodeSpec(inode: number): string {
  if (!Number.isSafeInteger(inode) || inode < 1) throw new Error(`internal: inode ${inode}`);
  return `<${inode}>`;
}

/** A directory or file to ask about: a path of shoal's own, or an inode read from a listing. */
export type FileRef = string | number;

function spec(file: FileRef): string {
  return typeof file === "number" ? inodeSpec(file) : debugfsQuote(file);
}

/**
 * Parses `ls -p` output: one `/inode/mode/uid/gid/name/size/` per entry (size empty for a
 * directory). A name may hold any byte but `/` and NUL, a newline too, so entries are read from
 * slash to slash rather than line by line.
 */
const LISTING_ENTRY = /\/(\d+)\/([0-7]+)\/(\d+)\/(\d+)\/([^/]*)\/(\d*)\/\n/y;

function parseListing(output: string): DirEntry[] | undefined {
  const entries: DirEntry[] = [];
  LISTING_ENTRY.lastIndex = Math.max(0, output.indexOf("/"));
  for (let match = LISTING_ENTRY.exec(output); match; match = LISTING_ENTRY.exec(output)) {
    const [, inode, mode, uid, gid, name, size] = match;
    entries.push({
      name: name ?? "",
      inode: Number(inode),
      mode: Number.parseInt(mode ?? "0", 8),
      owner: `${uid}:${gid}`,
      size: Number(size),
    });
  }
  // A listing always holds "." and ".."; a missing directory holds nothing.
  if (!entries.some((entry) => entry.name === ".")) return undefined;
  return entries.filter((entry) => entry.name !== "." && entry.name !== "..");
}

export class Ext4Image {
  constructor(
    private readonly runner: Runner,
    readonly path: string,
  ) {}

  /**
   * Read requests in one debugfs run: each one's output, and what went wrong (stderr). Requests
   * go in on stdin and outputs come back as bytes, so names keep every byte they have (see
   * bytesToText). Before each request goes a comment line with a random marker, which debugfs
   * prints as it is: the outputs are split there, and no file's name or link target (which debugfs
   * prints raw) can forge a split.
   */
  private async run(requests: readonly string[]): Promise<{ outputs: string[]; errors: string[] }> {
    const marker = `#shoal-${randomBytes(16).toString("hex")}\n`;
    const chunks: Buffer[] = [];
    const result = await this.runner.run({
      argv: ["debugfs", "-f", "-", this.path],
      input: Buffer.from(textToBytes(requests.map((request) => `${marker}${request}\n`).join(""))),
      probe: true,
      onOutput: (stream, chunk) => {
        if (stream === "stdout") chunks.push(chunk);
      },
    });
    const sections = bytesToText(Buffer.concat(chunks)).split(marker).slice(1);
    if (sections.length !== requests.length) {
      throw new ShoalError(
        `debugfs gave ${sections.length} answers to ${requests.length} requests on ${this.path}`,
      );
    }
    // debugfs echoes each request as "debugfs: REQUEST" before its output.
    const outputs = sections.map((section, i) => {
      const echo = `debugfs: ${requests[i]}\n`;
      return section.startsWith(echo) ? section.slice(echo.length) : section;
    });
    return { outputs, errors: debugfsErrors(result.stderr) };
  }

  /** Several requests in one debugfs run, for dumps and edits; returns the errors. */
  private async batch(requests: readonly string[], write: boolean): Promise<string[]> {
    const result = await this.runner.run({
      argv: ["debugfs", ...(write ? ["-w"] : []), "-f", "-", this.path],
      input: Buffer.from(textToBytes(`${requests.join("\n")}\n`)),
      probe: !write,
    });
    return debugfsErrors(result.stderr);
  }

  /** Many read requests in one debugfs run, one output per request. */
  async each(requests: readonly string[]): Promise<string[]> {
    if (requests.length === 0) return [];
    return (await this.run(requests)).outputs;
  }

  /** The filesystem's block size, from its superblock. */
  async blockSize(): Promise<number> {
    const { outputs } = await this.run(["stats -h"]);
    const size = /^Block size:\s+(\d+)$/m.exec(outputs[0] ?? "")?.[1];
    if (size === undefined)
      throw new ShoalError(`cannot read the block size of image ${this.path}`);
    return Number(size);
  }

  /** The entries of a directory, without . and ..; undefined when it does not exist. */
  async list(dir: FileRef): Promise<DirEntry[] | undefined> {
    const { outputs, errors } = await this.run([`ls -p ${spec(dir)}`]);
    return errors.length > 0 ? undefined : parseListing(outputs[0] ?? "");
  }

  /** Listings of many directories at once; a directory that does not exist lists as undefined. */
  async listMany(dirs: readonly FileRef[]): Promise<(DirEntry[] | undefined)[]> {
    const outputs = await this.each(dirs.map((dir) => `ls -p ${spec(dir)}`));
    return outputs.map(parseListing);
  }

  /**
   * The entry each path names, found by listing directories from the root down, one debugfs run
   * per depth: a name with any byte in it is found, and a link on the way is not followed (as
   * overlayfs does not merge a directory into a link). Undefined: no such path.
   */
  async lookup(paths: readonly string[]): Promise<(DirEntry | undefined)[]> {
    const parts = paths.map((path) => path.split("/").filter((part) => part !== ""));
    const root: DirEntry = { name: "", inode: ROOT_INODE, mode: S_IFDIR, owner: "", size: 0 };
    // Found so far, by the names on the way joined with "/" (which no name holds).
    const found = new Map<string, DirEntry | undefined>([["", root]]);
    const depth = parts.reduce((deepest, names) => Math.max(deepest, names.length), 0);
    for (let level = 0; level < depth; level++) {
      const dirs = [
        ...new Set(
          parts
            .filter((names) => names.length > level)
            .map((names) => names.slice(0, level).join("/")),
        ),
      ].filter((dir) => {
        const entry = found.get(dir);
        return entry !== undefined && (entry.mode & S_IFMT) === S_IFDIR;
      });
      const listings = await this.listMany(dirs.map((dir) => found.get(dir)?.inode ?? ROOT_INODE));
      dirs.forEach((dir, i) => {
        for (const entry of listings[i] ?? []) {
          found.set(dir === "" ? entry.name : `${dir}/${entry.name}`, entry);
        }
      });
    }
    return parts.map((names) => found.get(names.join("/")));
  }

  async readFile(path: FileRef): Promise<string | undefined> {
    const { outputs, errors } = await this.run([`cat ${spec(path)}`]);
    return errors.length > 0 ? undefined : outputs[0];
  }

  /**
   * Copies files out of the image: [file in image, path on host], each host path one shoal chose
   * in a directory only root can enter. The copies are shoal's: owned by it, with `mode`; without
   * one (a copy bound back into an image), with the image's permission bits but never its owner
   * or its setuid, setgid and sticky bits.
   */
  async dump(files: readonly (readonly [FileRef, string])[], mode?: number): Promise<void> {
    if (files.length === 0) return;
    const keep = mode === undefined ? "-p " : "";
    const errors = await this.batch(
      files.map(([from, to]) => `dump ${keep}${spec(from)} ${debugfsQuote(to)}`),
      false,
    );
    if (errors.length > 0)
      throw new ShoalError(`cannot read from image ${this.path}: ${errors[0]}`);
    for (const [, to] of files) {
      await chown(to, process.getuid?.() ?? 0, process.getgid?.() ?? 0);
      await chmod(to, mode ?? (await stat(to)).mode & 0o777);
    }
  }

  /** Runs write requests (rm, punch, sif...) on the image. */
  async edit(requests: readonly string[]): Promise<void> {
    if (requests.length === 0) return;
    const errors = await this.batch(requests, true);
    if (errors.length > 0) throw new ShoalError(`cannot edit image ${this.path}: ${errors[0]}`);
  }
}

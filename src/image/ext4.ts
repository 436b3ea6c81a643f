import { chmod, chown, stat } from "node:fs/promises";
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

/** Quotes a path for debugfs's command parser. */
export function debugfsQuote(path: string): string {
  if (/["\n]/.test(path)) {
    throw new ShoalError(
      `cannot handle a path with a quote or newline in an image: ${JSON.stringify(path)}`,
    );
  }
  return `"${path}"`;
}

/** Parses `ls -p` lines: /inode/mode/uid/gid/name/size/ */
function parseListing(output: string): DirEntry[] {
  return output
    .split("\n")
    .filter((line) => line.startsWith("/"))
    .map((line) => {
      const [, inode, mode, uid, gid, name, size] = line.split("/");
      return {
        name: name ?? "",
        inode: Number(inode),
        mode: Number.parseInt(mode ?? "0", 8),
        owner: `${uid}:${gid}`,
        size: Number(size),
      };
    })
    .filter((entry) => entry.name !== "." && entry.name !== "..");
}

export class Ext4Image {
  constructor(
    private readonly runner: Runner,
    readonly path: string,
  ) {}

  /** One read-only request; its output is exactly the request's. */
  private async request(request: string): Promise<{ stdout: string; errors: string[] }> {
    const result = await this.runner.run({
      argv: ["debugfs", "-R", request, this.path],
      probe: true,
    });
    return { stdout: result.stdout, errors: debugfsErrors(result.stderr) };
  }

  /** Several requests in one debugfs run, for dumps and edits; returns the errors. */
  private async batch(requests: readonly string[], write: boolean): Promise<string[]> {
    const result = await this.runner.run({
      argv: ["debugfs", ...(write ? ["-w"] : []), "-f", "-", this.path],
      input: `${requests.join("\n")}\n`,
      probe: !write,
    });
    return debugfsErrors(result.stderr);
  }

  /**
   * Many read requests in one debugfs run, one output per request. debugfs echoes each request
   * as "debugfs: REQUEST" before its output, which splits the output back up.
   */
  async each(requests: readonly string[]): Promise<string[]> {
    if (requests.length === 0) return [];
    const result = await this.runner.run({
      argv: ["debugfs", "-f", "-", this.path],
      input: `${requests.join("\n")}\n`,
      probe: true,
    });
    const sections = result.stdout.split(/^debugfs: .*$/m).slice(1);
    if (sections.length !== requests.length) {
      throw new ShoalError(
        `debugfs gave ${sections.length} answers to ${requests.length} requests on ${this.path}`,
      );
    }
    return sections;
  }

  /** The entries of a directory, without . and ..; undefined when it does not exist. */
  async list(dir: string): Promise<DirEntry[] | undefined> {
    const { stdout, errors } = await this.request(`ls -p ${debugfsQuote(dir)}`);
    return errors.length > 0 ? undefined : parseListing(stdout);
  }

  /** Listings of many directories at once; a directory that does not exist lists as undefined. */
  async listMany(dirs: readonly string[]): Promise<(DirEntry[] | undefined)[]> {
    const outputs = await this.each(dirs.map((dir) => `ls -p ${debugfsQuote(dir)}`));
    // A listing always holds "." and ".."; a missing directory holds nothing.
    return outputs.map((output) => (output.includes("/.//") ? parseListing(output) : undefined));
  }

  async readFile(path: string): Promise<string | undefined> {
    const { stdout, errors } = await this.request(`cat ${debugfsQuote(path)}`);
    return errors.length > 0 ? undefined : stdout;
  }

  /**
   * Copies files out of the image: [path in image, path on host], each host path one shoal chose
   * in a directory only root can enter. The copies are shoal's: owned by it, with `mode`; without
   * one (a copy bound back into an image), with the image's permission bits but never its owner
   * or its setuid, setgid and sticky bits.
   */
  async dump(files: readonly (readonly [string, string])[], mode?: number): Promise<void> {
    if (files.length === 0) return;
    const keep = mode === undefined ? "-p " : "";
    const errors = await this.batch(
      files.map(([from, to]) => `dump ${keep}${debugfsQuote(from)} ${debugfsQuote(to)}`),
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

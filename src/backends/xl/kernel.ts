import { constants } from "node:fs";
import { chmod, lstat, mkdir, open, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { undefinedUnlessBug } from "../../errors.js";
import { ifExists } from "../../host/paths.js";
import type { Runner } from "../../host/runner.js";
import { removeStaleTempFiles, tempPathBeside } from "../../state/atomic.js";

/**
 * Xen's domain builder decompresses a bzImage's kernel for every domain it makes: under software
 * emulation that was 7 of the 11 s of one `xl create` (Debian's xz kernel), and on any host it is
 * CPU spent per domU for the same bytes. shoal decompresses each image's kernel once, into
 * `vmlinux` beside it, and its domUs boot that ELF file; a kernel it cannot take apart boots as it
 * is, decompressed by Xen.
 */

/** The compressors a Debian kernel may use that the host has a tool for, by their magic. */
// The kernel's build appends the unpacked size (4 bytes) to an xz or zstd kernel, which the tools
// would take for a broken next stream; gzip's own trailer holds it.
const FORMATS = [
  { magic: "fd377a585a00", suffix: ".xz", sizeTrailer: 4, argv: ["xz", "--decompress", "--quiet"] },
  { magic: "1f8b", suffix: ".gz", sizeTrailer: 0, argv: ["gzip", "--decompress", "--quiet"] },
  {
    magic: "28b52ffd",
    suffix: ".zst",
    sizeTrailer: 4,
    argv: ["zstd", "--decompress", "--quiet", "--rm"],
  },
] as const;

/** Where a bzImage keeps its compressed kernel, and how large the kernel may be once unpacked. */
export interface BzImagePayload {
  readonly offset: number;
  readonly length: number;
  /** The kernel's init_size: the memory it needs to start, which bounds the unpacked kernel. */
  readonly maxBytes: number;
  readonly format: (typeof FORMATS)[number];
}

/** Reads an x86 bzImage's setup header (boot protocol 2.10 or later); undefined for anything else. */
export function bzImagePayload(image: Buffer): BzImagePayload | undefined {
  if (image.length < 0x264 || image.toString("latin1", 0x202, 0x206) !== "HdrS") return undefined;
  if (image.readUInt16LE(0x206) < 0x20a) return undefined;
  const setupSectors = image.readUInt8(0x1f1) || 4;
  const offset = (setupSectors + 1) * 512 + image.readUInt32LE(0x248);
  const length = image.readUInt32LE(0x24c);
  const maxBytes = image.readUInt32LE(0x260);
  if (length === 0 || offset + length > image.length || maxBytes === 0) return undefined;
  const head = image.toString("hex", offset, offset + 6);
  const format = FORMATS.find((candidate) => head.startsWith(candidate.magic));
  return format && { offset, length, maxBytes, format };
}

const ELF_MAGIC = "7f454c46";

/**
 * The image's kernel as an ELF file next to it (`vmlinux`), made on first use; the bzImage itself
 * when it is not one shoal can unpack. The image is untrusted: the unpacked kernel may be no larger
 * than its header says (prlimit stops the decompressor there) and must be an ELF file.
 */
export async function uncompressedKernel(
  runner: Runner,
  kernel: string,
  vmlinux: string,
): Promise<string> {
  // Never through a link: what domUs boot is a file shoal made beside the image's kernel.
  const done = await ifExists(lstat(vmlinux));
  if (done?.isFile()) return vmlinux;
  const image = await readFile(kernel);
  const payload = bzImagePayload(image);
  if (payload === undefined) return kernel;
  const dir = join(vmlinux, "..");
  await removeStaleTempFiles(dir);
  const scratch = tempPathBeside(vmlinux);
  await mkdir(scratch, { mode: 0o700 });
  try {
    const packed = join(scratch, `vmlinux${payload.format.suffix}`);
    const end = payload.offset + payload.length - payload.format.sizeTrailer;
    await writeFile(packed, image.subarray(payload.offset, end));
    const unpacked = await runner
      .run({
        // An ELF file holds a little more than the memory the kernel takes: twice is ample.
        argv: ["prlimit", `--fsize=${2 * payload.maxBytes}`, "--", ...payload.format.argv, packed],
      })
      // A decompressor that fails (or is stopped at the limit) is an answer: boot the bzImage.
      .then(() => true, undefinedUnlessBug);
    const out = join(scratch, "vmlinux");
    if (!unpacked || !(await isElf(out))) return kernel;
    await chmod(out, 0o444);
    await rename(out, vmlinux);
    return vmlinux;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

async function isElf(path: string): Promise<boolean> {
  const handle = await ifExists(open(path, constants.O_RDONLY | constants.O_NOFOLLOW));
  if (handle === undefined) return false;
  try {
    const head = Buffer.alloc(4);
    await handle.read(head, 0, 4, 0);
    return head.toString("hex") === ELF_MAGIC;
  } finally {
    await handle.close();
  }
}

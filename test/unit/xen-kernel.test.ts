import { describe, expect, it } from "vitest";
import { bzImagePayload } from "../../src/backends/xl/kernel.js";

/** A bzImage's first bytes as the x86 boot protocol lays them out, with an xz payload. */
function bzImage(options: { version?: number; magic?: string; length?: number } = {}): Buffer {
  const image = Buffer.alloc(8192);
  image.writeUInt8(3, 0x1f1); // setup sectors: the payload's offset counts from (3 + 1) * 512
  image.write("HdrS", 0x202, "latin1");
  image.writeUInt16LE(options.version ?? 0x20f, 0x206);
  image.writeUInt32LE(100, 0x248);
  image.writeUInt32LE(options.length ?? 1000, 0x24c);
  image.writeUInt32LE(64 << 20, 0x260);
  Buffer.from(options.magic ?? "fd377a585a00", "hex").copy(image, 4 * 512 + 100);
  return image;
}

describe("a bzImage's compressed kernel", () => {
  it("is found by the setup header, with its compressor and the memory the kernel takes", () => {
    const payload = bzImagePayload(bzImage());
    expect(payload).toMatchObject({ offset: 2148, length: 1000, maxBytes: 64 << 20 });
    expect(payload?.format.argv[0]).toBe("xz");
    expect(payload?.format.sizeTrailer).toBe(4);
    expect(bzImagePayload(bzImage({ magic: "1f8b08" }))?.format.argv[0]).toBe("gzip");
    expect(bzImagePayload(bzImage({ magic: "28b52ffd" }))?.format.argv[0]).toBe("zstd");
  });

  it("is not taken from an old boot protocol, another compressor, a payload past the file, or no bzImage", () => {
    expect(bzImagePayload(bzImage({ version: 0x209 }))).toBeUndefined();
    expect(bzImagePayload(bzImage({ magic: "894c5a4f" }))).toBeUndefined();
    expect(bzImagePayload(bzImage({ length: 100_000 }))).toBeUndefined();
    expect(bzImagePayload(Buffer.from("\x7fELF"))).toBeUndefined();
  });
});

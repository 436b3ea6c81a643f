import { describe, expect, it } from "vitest";
import { DAX_ALIGNMENT, daxAlignedMiB, daxRefusal } from "../../src/core/dax.js";

const MiB = 1024 * 1024;

describe("a base mapped for DAX", () => {
  it("needs 4 KiB blocks, a size in whole 2 MiB, and the kernel's virtio-pmem modules", () => {
    const base = { blockSize: 4096, bytes: 58 * MiB, missingModules: [] };
    expect(daxRefusal(base)).toBeUndefined();
    expect(daxRefusal({ ...base, blockSize: 1024 })).toBe(
      "its ext4 blocks are 1024 bytes; DAX needs 4096 (bases shoal builds have them)",
    );
    expect(daxRefusal({ ...base, bytes: 57 * MiB })).toBe(
      "its size (59768832 bytes) is not a multiple of 2M",
    );
    expect(daxRefusal({ ...base, missingModules: ["virtio_pmem", "nd_pmem"] })).toBe(
      "its kernel lacks virtio_pmem, nd_pmem",
    );
  });

  it("gets its size rounded up to whole 2 MiB when shoal builds it", () => {
    expect([1, 2, 3, 57, 58, 849].map(daxAlignedMiB)).toEqual([2, 2, 4, 58, 58, 850]);
    for (const size of [1, 2, 3, 57, 58, 849]) {
      expect((daxAlignedMiB(size) * MiB) % DAX_ALIGNMENT).toBe(0);
    }
  });
});

import { formatSize } from "./size.js";

/**
 * When a base can be mapped into the guest for DAX (virtio-pmem) instead of being attached as a
 * disk: then every guest reads the base's files straight from the host's page cache, which holds
 * them once for all the VMs, instead of keeping a copy of its own in its own page cache.
 */

/** ext4 maps its files for DAX only when its blocks are as large as the guest's pages. */
export const DAX_BLOCK_SIZE = 4096;

/** The guest's persistent-memory driver maps its region in 2 MiB subsections. */
export const DAX_ALIGNMENT = 2 * 1024 * 1024;

export interface BaseFacts {
  /** ext4's block size, from the base's superblock. */
  readonly blockSize: number;
  readonly bytes: number;
  /** The image's kernel modules for virtio-pmem that it has neither as files nor built in. */
  readonly missingModules: readonly string[];
}

/** Why a base cannot be mapped for DAX; undefined when it can. */
export function daxRefusal(base: BaseFacts): string | undefined {
  if (base.blockSize !== DAX_BLOCK_SIZE)
    return `its ext4 blocks are ${base.blockSize} bytes; DAX needs ${DAX_BLOCK_SIZE} (bases shoal builds have them)`;
  if (base.bytes % DAX_ALIGNMENT !== 0)
    return `its size (${base.bytes} bytes) is not a multiple of ${formatSize(DAX_ALIGNMENT)}`;
  if (base.missingModules.length > 0) return `its kernel lacks ${base.missingModules.join(", ")}`;
  return undefined;
}

/** A tree's image size, rounded up so that the base can be mapped for DAX. */
export function daxAlignedMiB(sizeMiB: number): number {
  const unit = DAX_ALIGNMENT / (1024 * 1024);
  return Math.ceil(sizeMiB / unit) * unit;
}

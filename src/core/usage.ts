/**
 * `shoal df`'s accounting: each base counted once however many VMs share it, each VM's layer and
 * other files (seed, console log, definition), against what the same VMs would take if each had
 * a full copy of its base.
 */

export interface ImageUsage {
  readonly name: string;
  readonly id: string;
  /** The base's allocated size: what it takes on disk, and what a (sparse) copy of it would. */
  readonly bytes: number;
  /** The libvirt host this copy of the base is on: one copy per host that runs VMs of it. */
  readonly host?: string;
}

export interface VmUsage {
  readonly name: string;
  /** The image's name, as the VM's spec has it. */
  readonly image: string;
  readonly layerType: "disk" | "tmpfs";
  /** The libvirt host it runs on; its layer is there. */
  readonly host?: string;
  readonly layerBytes: number;
  /** Everything else in the VM's directory. */
  readonly otherBytes: number;
}

export interface DiskAccounting {
  readonly images: readonly (ImageUsage & { readonly vms: number })[];
  readonly vms: readonly VmUsage[];
  readonly basesBytes: number;
  readonly vmsBytes: number;
  readonly totalBytes: number;
  /** Each VM with its own full copy of its base (and its other files); its changes would be in the copy. */
  readonly fullCopiesBytes: number;
  /** fullCopiesBytes / totalBytes; undefined for a fleet that takes nothing. */
  readonly ratio: number | undefined;
}

export function accountDisk(
  images: readonly ImageUsage[],
  vms: readonly VmUsage[],
): DiskAccounting {
  // A base copied to several hosts: each copy is the same file (one not measured counts 0).
  const byName = new Map<string, ImageUsage>();
  for (const image of images) {
    if ((byName.get(image.name)?.bytes ?? -1) < image.bytes) byName.set(image.name, image);
  }
  const used = images
    .map((image) => ({
      ...image,
      vms: vms.filter(
        (vm) => vm.image === image.name && (image.host === undefined || vm.host === image.host),
      ).length,
    }))
    .filter((image) => image.vms > 0);
  const basesBytes = used.reduce((sum, image) => sum + image.bytes, 0);
  const vmsBytes = vms.reduce((sum, vm) => sum + vm.layerBytes + vm.otherBytes, 0);
  const totalBytes = basesBytes + vmsBytes;
  const fullCopiesBytes = vms.reduce(
    (sum, vm) => sum + (byName.get(vm.image)?.bytes ?? 0) + vm.otherBytes,
    0,
  );
  return {
    images: used,
    vms,
    basesBytes,
    vmsBytes,
    totalBytes,
    fullCopiesBytes,
    ratio: totalBytes > 0 ? fullCopiesBytes / totalBytes : undefined,
  };
}

import { describe, expect, it } from "vitest";
import { loadOrder, moduleName, parseModuleIndex } from "../../src/core/modules.js";

const DEP = `kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/fs/overlayfs/overlay.ko.xz:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/xen-blkfront.ko:
`;

describe("kernel modules", () => {
  it("are named as the kernel names them", () => {
    expect(moduleName("kernel/drivers/block/xen-blkfront.ko")).toBe("xen_blkfront");
    expect(moduleName("kernel/fs/overlayfs/overlay.ko.xz")).toBe("overlay");
    expect(moduleName("xen-blkfront")).toBe("xen_blkfront");
  });

  it("load after their dependencies, each once", () => {
    const order = loadOrder(parseModuleIndex(DEP), [
      "virtio_pci",
      "virtio_blk",
      "ext4",
      "overlay",
      "xen-blkfront",
    ]);
    expect(order).toEqual({
      ok: true,
      paths: [
        "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/virtio/virtio_pci.ko",
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/lib/crc16.ko",
        "kernel/fs/mbcache.ko",
        "kernel/fs/jbd2/jbd2.ko",
        "kernel/fs/ext4/ext4.ko",
        "kernel/fs/overlayfs/overlay.ko.xz",
        "kernel/drivers/block/xen-blkfront.ko",
      ],
    });
  });

  it("need no file when built into the kernel", () => {
    const index = parseModuleIndex("kernel/fs/ext4/ext4.ko:\n", "kernel/fs/overlayfs/overlay.ko\n");
    expect(loadOrder(index, ["overlay", "ext4"])).toEqual({
      ok: true,
      paths: ["kernel/fs/ext4/ext4.ko"],
    });
  });

  it("are reported missing when neither a file nor built in", () => {
    expect(loadOrder(parseModuleIndex(DEP), ["overlay", "zfs", "btrfs"])).toEqual({
      ok: false,
      missing: ["zfs", "btrfs"],
    });
  });
});

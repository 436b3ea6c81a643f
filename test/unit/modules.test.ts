import { describe, expect, it } from "vitest";
import { parseLdd } from "../../src/core/ldd.js";
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

describe("the libraries a program the tiny image carries loads", () => {
  it("takes each resolved library and the loader, not the vDSO", () => {
    const output = [
      "\tlinux-vdso.so.1 (0x00007ffd1d5f2000)",
      "\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f7228c94000)",
      "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f7228a76000)",
      "\t/lib64/ld-linux-x86-64.so.2 (0x00007f7228df2000)",
      "",
    ].join("\n");
    expect(parseLdd(output)).toEqual({
      ok: true,
      paths: [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
      ],
    });
  });

  it("names a library the host lacks", () => {
    expect(parseLdd("\tlibtomcrypt.so.1 => not found\n")).toEqual({
      ok: false,
      missing: ["libtomcrypt.so.1 => not found"],
    });
  });
});

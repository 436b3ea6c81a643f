import { describe, expect, it } from "vitest";
import { parseLdd } from "../../src/core/ldd.js";
import {
  available,
  isKernelVersion,
  isModulePath,
  loadOrder,
  type ModuleIndex,
  moduleName,
  parseModuleIndex,
} from "../../src/core/modules.js";

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

function indexOf(dep: string, builtin?: string): ModuleIndex {
  const parsed = parseModuleIndex(dep, builtin);
  if (!parsed.ok) throw new Error(`refused: ${JSON.stringify(parsed.bad)}`);
  return parsed.index;
}

describe("kernel modules", () => {
  it("are named as the kernel names them", () => {
    expect(moduleName("kernel/drivers/block/xen-blkfront.ko")).toBe("xen_blkfront");
    expect(moduleName("kernel/fs/overlayfs/overlay.ko.xz")).toBe("overlay");
    expect(moduleName("xen-blkfront")).toBe("xen_blkfront");
  });

  it("load after their dependencies, each once", () => {
    const order = loadOrder(indexOf(DEP), [
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
    const index = indexOf("kernel/fs/ext4/ext4.ko:\n", "kernel/fs/overlayfs/overlay.ko\n");
    expect(loadOrder(index, ["overlay", "ext4"])).toEqual({
      ok: true,
      paths: ["kernel/fs/ext4/ext4.ko"],
    });
  });

  it("are reported missing when neither a file nor built in", () => {
    expect(loadOrder(indexOf(DEP), ["overlay", "zfs", "btrfs"])).toEqual({
      ok: false,
      missing: ["zfs", "btrfs"],
    });
  });

  it("that only improve a guest (the balloon) are taken where the kernel has them, as files or built in", () => {
    expect(available(indexOf(DEP), ["virtio_balloon", "virtio_blk"])).toEqual(["virtio_blk"]);
    const builtin = indexOf(DEP, "kernel/drivers/virtio/virtio_balloon.ko\n");
    expect(available(builtin, ["virtio_balloon"])).toEqual(["virtio_balloon"]);
  });
});

describe("what an image's modules.dep and modules.builtin may name", () => {
  it("is a .ko file, compressed or not, below /lib/modules/VERSION, as depmod writes it", () => {
    for (const path of [
      "kernel/fs/ext4/ext4.ko",
      "kernel/fs/overlayfs/overlay.ko.xz",
      "kernel/drivers/block/xen-blkfront.ko.zst",
      "kernel/lib/crc16.ko.gz",
      "updates/dkms/zfs.ko",
      "extra/vboxguest.ko",
      "kernel/net/802/p8022.ko",
      "kernel/drivers/gpu/drm/i915/i915.ko",
      "kernel/sound/soc/codecs/snd-soc-rt5640.ko",
      "weird+dir/mod_x-1.2.ko",
      "top.ko",
    ]) {
      expect(isModulePath(path), path).toBe(true);
    }
  });

  it("never climbs out, is never absolute, empty or odd", () => {
    for (const path of [
      "../../../../../../tmp/x/owned",
      "kernel/../../../etc/cron.d/x.ko",
      "kernel/fs/../ext4.ko",
      "kernel/./fs/ext4.ko",
      "./kernel/fs/ext4.ko",
      "/lib/modules/6.1.0-13-amd64/kernel/fs/ext4/ext4.ko",
      "/tmp/x.ko",
      "kernel//fs/ext4.ko",
      "kernel/fs/ext4.ko/",
      "kernel/.hidden/x.ko",
      "kernel/fs/.ko",
      "",
      "..",
      "kernel/fs/ext4",
      "kernel/fs/ext4.ko.bz2",
      "kernel/fs/ext4.ko.xz.sh",
      "kernel/fs/ext 4.ko",
      "kernel/fs/ext4\n.ko",
      'kernel/fs/"x".ko',
      "kernel/fs/$(reboot).ko",
      "kernel/fs/ext4.ko\u0000",
      "kernel\\fs\\ext4.ko",
      `kernel/${"a".repeat(300)}/x.ko`,
      `${"d/".repeat(600)}x.ko`,
    ]) {
      expect(isModulePath(path), JSON.stringify(path)).toBe(false);
    }
  });

  it("makes the whole index unusable at the first bad entry, a dependency too, naming it and its line", () => {
    const poisoned = `kernel/fs/mbcache.ko:
kernel/fs/overlayfs/overlay.ko: ../../../../../../tmp/x/owned
`;
    expect(parseModuleIndex(poisoned)).toEqual({
      ok: false,
      bad: { file: "modules.dep", line: 2, entry: "../../../../../../tmp/x/owned" },
    });
    expect(parseModuleIndex("/tmp/x.ko:\n")).toEqual({
      ok: false,
      bad: { file: "modules.dep", line: 1, entry: "/tmp/x.ko" },
    });
    expect(parseModuleIndex("kernel/fs/ext4/ext4.ko\n")).toEqual({
      ok: false,
      bad: { file: "modules.dep", line: 1, entry: "kernel/fs/ext4/ext4.ko" },
    });
    expect(parseModuleIndex(": kernel/x.ko\n")).toEqual({
      ok: false,
      bad: { file: "modules.dep", line: 1, entry: "" },
    });
    expect(parseModuleIndex(DEP, "kernel/fs/ext4/ext4.ko\n../../etc/x.ko\n")).toEqual({
      ok: false,
      bad: { file: "modules.builtin", line: 2, entry: "../../etc/x.ko" },
    });
    // Blank lines and the trailing newline are no entries.
    expect(parseModuleIndex(`\n${DEP}\n\n`, "\nkernel/fs/ext4/ext4.ko\n").ok).toBe(true);
  });
});

describe("a kernel version read from an image", () => {
  it("is one path component of uname -r's characters", () => {
    for (const version of [
      "6.1.0-13-amd64",
      "5.15.0-1034-azure",
      "4.19.0-0.bpo.1-amd64",
      "6.8.0-rc1+",
      "6.1.0_custom~1",
      "6",
    ]) {
      expect(isKernelVersion(version), version).toBe(true);
    }
    for (const version of [
      "",
      ".",
      "..",
      "../../tmp",
      "6.1/../../x",
      ".hidden",
      "-rf",
      "6.1 x",
      "6.1\nx",
      "6.1$(x)",
      "a".repeat(65),
    ]) {
      expect(isKernelVersion(version), JSON.stringify(version)).toBe(false);
    }
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

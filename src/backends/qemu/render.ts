import { type GuestDevices, renderKernelCmdline } from "../../core/cmdline.js";
import { DAX_ALIGNMENT } from "../../core/dax.js";
import type { VmSpec } from "../../core/fleet.js";
import { inNamespace } from "../../core/net.js";
import {
  assertSafePaths,
  type BootFiles,
  domainName,
  isInterfaceName,
} from "../../core/render/boot.js";
import { assertRenderable, UNIX_SOCKET_PATH_MAX } from "../../core/syntax.js";
import { MAX_TCG_CACHE_MIB } from "../backend.js";

/**
 * Under software emulation on a busy host the kernel's boot-time check that the timer interrupt
 * arrives through the IO-APIC can miss its window, and the guest panics ("IO-APIC + timer doesn't
 * work!"): seen here with 50 VMs booting at once, and in CI. The emulated timer works; skip the check.
 */
const QEMU_KERNEL_PARAMS = ["no_timer_check"] as const;

/** How a QEMU guest sees its disks (virtio, in this order) and its serial console. */
export const QEMU_GUEST_DEVICES: GuestDevices = {
  base: "/dev/vda",
  seed: "/dev/vdb",
  layer: "/dev/vdc",
  console: "ttyS0",
  kernelParams: QEMU_KERNEL_PARAMS,
};

/**
 * The same with the base mapped for DAX, as virtio-pmem: ext4 reads its files straight from the
 * mapping. The mapping lies above 4 GiB, so without swiotlb=noforce the guest would set 32 MiB of
 * its memory aside for bounce buffers that no virtio device uses (a 128M guest: 80 MiB free -> 48).
 */
export const QEMU_DAX_GUEST_DEVICES: GuestDevices = {
  base: "/dev/pmem0",
  seed: "/dev/vda",
  layer: "/dev/vdb",
  console: "ttyS0",
  baseFlags: "dax=always",
  kernelParams: [...QEMU_KERNEL_PARAMS, "swiotlb=noforce"],
};

const MiB = 1024 * 1024;

export type Accelerator = "kvm" | "tcg";

/**
 * The translation cache software emulation gets by default: a quarter of the VM's memory, between
 * 16 and 64 MiB (QEMU's own default, 1 GiB, lets it grow to what the guest ever ran). Measured
 * here: a Debian VM of 384M boots in 22 s with 64 MiB as with QEMU's default, idle at 308 MiB of
 * host memory instead of 582 (48 MiB: 30 s); a tiny VM of 128M boots in 7.0 s with 32 MiB as
 * with the default, at 196 MiB instead of 232 (16 MiB: 7.8 s, 178 MiB).
 */
export function defaultTcgCacheMiB(memoryMiB: number): number {
  return Math.min(64, Math.max(16, Math.floor(memoryMiB / 4)));
}

/** The translation cache a VM's QEMU gets under software emulation: as set, or the default; checked. */
export function tcgCacheMiBFor(vm: Pick<VmSpec, "memoryMiB">, setMiB: number | undefined): number {
  const tcgCache = setMiB ?? defaultTcgCacheMiB(vm.memoryMiB);
  assertRenderable(
    "translation cache size",
    String(tcgCache),
    Number.isInteger(tcgCache) && tcgCache >= 1 && tcgCache <= MAX_TCG_CACHE_MIB,
  );
  return tcgCache;
}

/** The unprivileged system user every QEMU runs as (made by scripts/setup). */
export const QEMU_USER = "shoal-qemu";

/**
 * QEMU's own seccomp filter: no set*id, no fork or exec, no scheduler or resource changes, no
 * obsolete system calls. With these QEMU cannot -daemonize (it forks and calls setsid) nor drop
 * privileges itself with -runas (setuid comes after the filter is in place), so it is started
 * unprivileged, in a session of its own, by shoal.
 */
export const QEMU_SANDBOX =
  "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/**
 * Runs `argv` as `user` with no capabilities (none to gain again either: an empty bounding set,
 * no_new_privs), the user's own groups (kvm for /dev/kvm) and nothing inherited from root.
 */
export function asUser(user: string, argv: readonly [string, ...string[]]): [string, ...string[]] {
  assertRenderable("user name", user, /^[a-z_][a-z0-9_-]{0,31}$/.test(user));
  return [
    "setpriv",
    `--reuid=${user}`,
    `--regid=${user}`,
    "--init-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
    "--no-new-privs",
    "--",
    ...argv,
  ];
}

export interface QemuFiles {
  /** The VM's identity seed (see core/seed.ts). */
  readonly seed: string;
  /** The VM's disk layer; absent for a tmpfs layer. */
  readonly layer?: string;
  readonly serialLog: string;
  readonly consoleSocket: string;
  readonly qmpSocket: string;
  readonly pidFile: string;
}

export interface QemuInput {
  readonly fleet: string;
  readonly vm: VmSpec;
  readonly boot: BootFiles;
  readonly files: QemuFiles;
  /** The VM's tap device; without one the VM has no network. */
  readonly tap?: string;
  /** The network namespace QEMU runs in (the fleet's), so that it finds its tap there. */
  readonly namespace?: string;
  readonly accel: Accelerator;
  /** Software emulation's translation cache in MiB; unset: defaultTcgCacheMiB. */
  readonly tcgCacheMiB?: number;
  /** The user QEMU runs as (shoal: QEMU_USER); without one, as whoever starts it (tests). */
  readonly user?: string;
}

/**
 * The QEMU command for one VM, run unprivileged and under QEMU's seccomp sandbox; shoal starts it
 * in the background (see QEMU_SANDBOX) and talks to it over QMP, and reaches the serial console
 * over a socket while QEMU also logs it to a file. The base and the identity seed are attached
 * `readonly=on`, so QEMU itself refuses any write to them; the base as a disk, or mapped for DAX
 * where it can be. Memory the guest frees goes back to
 * the host through the balloon's free page reporting.
 */
export function renderQemuArgv(input: QemuInput): [string, ...string[]] {
  const { vm, boot, files } = input;
  assertSafePaths({ kernel: boot.kernel, initrd: boot.initrd, base: boot.base, ...files });
  for (const socket of [files.consoleSocket, files.qmpSocket]) {
    assertRenderable("socket path", socket, socket.length <= UNIX_SOCKET_PATH_MAX);
  }
  if (input.tap !== undefined) assertRenderable("tap name", input.tap, isInterfaceName(input.tap));
  const network =
    input.tap === undefined
      ? ["-nic", "none"]
      : [
          "-netdev",
          `tap,id=net0,ifname=${input.tap},script=no,downscript=no`,
          "-device",
          `virtio-net-pci,netdev=net0,mac=${vm.mac}`,
        ];
  const layer =
    vm.layer.type === "disk"
      ? [
          "-drive",
          `if=none,id=layer,file=${files.layer},format=raw,discard=unmap,detect-zeroes=unmap`,
          "-device",
          "virtio-blk-pci,drive=layer",
        ]
      : [];
  const tcgCache = tcgCacheMiBFor(vm, input.tcgCacheMiB);
  if (vm.layer.type === "disk" && files.layer === undefined) {
    throw new Error(`internal: ${vm.name} has a disk layer but no layer path`);
  }
  const baseMiB = boot.dax === undefined ? 0 : boot.dax.bytes / MiB;
  // The size comes from the image's record: whole 2 MiB, as QEMU maps it and the guest needs it.
  assertRenderable(
    "base size",
    String(boot.dax?.bytes),
    boot.dax === undefined ||
      (Number.isSafeInteger(boot.dax.bytes) &&
        boot.dax.bytes > 0 &&
        boot.dax.bytes % DAX_ALIGNMENT === 0),
  );
  // Mapped privately and read-only: QEMU cannot write to the file, and no VM's page is another's.
  const base =
    boot.dax === undefined
      ? [
          "-drive",
          `if=none,id=base,file=${boot.base},format=raw,readonly=on`,
          "-device",
          "virtio-blk-pci,drive=base",
        ]
      : [
          "-object",
          `memory-backend-file,id=base,mem-path=${boot.base},size=${baseMiB}M,share=off,readonly=on`,
          "-device",
          "virtio-pmem-pci,memdev=base",
        ];
  const qemu: [string, ...string[]] = [
    "qemu-system-x86_64",
    "-name",
    domainName(input.fleet, vm.name),
    "-machine",
    "q35",
    "-accel",
    input.accel === "kvm" ? "kvm" : `tcg,tb-size=${tcgCache}`,
    ...(input.accel === "kvm" ? ["-cpu", "host"] : []),
    "-m",
    boot.dax === undefined
      ? `${vm.memoryMiB}M`
      : `${vm.memoryMiB}M,maxmem=${vm.memoryMiB + baseMiB}M`,
    "-smp",
    String(vm.vcpus),
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-kernel",
    boot.kernel,
    "-initrd",
    boot.initrd,
    "-append",
    renderKernelCmdline(
      boot.dax === undefined ? QEMU_GUEST_DEVICES : QEMU_DAX_GUEST_DEVICES,
      vm,
      boot,
    ),
    ...base,
    "-drive",
    `if=none,id=seed,file=${files.seed},format=raw,readonly=on`,
    "-device",
    "virtio-blk-pci,drive=seed",
    ...layer,
    "-device",
    "virtio-balloon-pci,free-page-reporting=on",
    // QEMU's own getrandom() feeds it (see GuestModules.entropy).
    "-device",
    "virtio-rng-pci",
    ...network,
    "-chardev",
    `socket,id=console,path=${files.consoleSocket},server=on,wait=off,logfile=${files.serialLog},logappend=on`,
    "-serial",
    "chardev:console",
    "-chardev",
    `socket,id=qmp,path=${files.qmpSocket},server=on,wait=off`,
    "-mon",
    "chardev=qmp,mode=control",
    // A guest that powers off leaves QEMU running and paused, so shoal can tell it from a crash.
    "-no-shutdown",
    "-pidfile",
    files.pidFile,
    "-sandbox",
    QEMU_SANDBOX,
  ];
  return inNamespace(input.namespace, input.user === undefined ? qemu : asUser(input.user, qemu));
}

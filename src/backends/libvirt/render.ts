import { XMLBuilder } from "fast-xml-parser";
import { renderKernelCmdline } from "../../core/cmdline.js";
import type { VmSpec } from "../../core/fleet.js";
import {
  assertSafePaths,
  type BootFiles,
  domainName,
  isInterfaceName,
  UUID_PATTERN,
} from "../../core/render/boot.js";
import { assertRenderable } from "../../core/syntax.js";
import { type Accelerator, QEMU_GUEST_DEVICES, tcgCacheMiBFor } from "../qemu/render.js";

/**
 * A VM as a libvirt domain: the same QEMU machine the qemu backend runs (the guest sees the same
 * devices, so one image and its initramfs boot on both), described in libvirt's domain XML. The
 * disks are volumes of a storage pool on the VM's host, so that a remote host holds its own copy
 * of the base; the kernel and initramfs are files on that host (libvirt takes paths for them).
 */

/** The XML namespace of shoal's element in a domain's <metadata>, which says whose it is. */
export const METADATA_NAMESPACE = "https://shoal.dev/xmlns/libvirt/1";

/** What the guest sees: the qemu backend's devices, in the same order. */
export const LIBVIRT_GUEST_DEVICES = QEMU_GUEST_DEVICES;

/** A volume of a libvirt storage pool. */
export interface Volume {
  readonly pool: string;
  readonly name: string;
}

export interface DomainInput {
  /** The VM's fleet: the domain is named as the VM's domain of any backend (domainName). */
  readonly fleet: string;
  readonly uuid: string;
  readonly vm: VmSpec;
  readonly boot: Pick<BootFiles, "baseId" | "ownInitramfs">;
  /** The kernel and initramfs, as paths on the VM's host. */
  readonly kernel: string;
  readonly initrd: string;
  readonly disks: { readonly base: Volume; readonly seed: Volume; readonly layer?: Volume };
  /** The VM's interface: a tap libvirt makes with this name on this bridge of the host's. */
  readonly nic?: { readonly bridge: string; readonly tap: string; readonly mtu?: number };
  readonly accel: Accelerator;
  readonly tcgCacheMiB?: number;
  /** Where QEMU logs the serial console on the VM's host. */
  readonly consoleLog: string;
  /** The unix socket QEMU serves the serial console on, on the VM's host. */
  readonly consoleSocket: string;
  /** The owner mark (see core/net.ts ownerMark), kept in the domain's metadata. */
  readonly owner: string;
}

/** Names libvirt keeps for the taps it names itself; one of ours must not start with them. */
const RESERVED_TAP_PREFIXES = ["vnet", "vif", "macvtap", "macvlan"];
/** libvirt's volume names in a dir pool are file names; shoal's are plain. */
const VOLUME_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

export function isVolumeName(name: string): boolean {
  return VOLUME_NAME.test(name);
}

function volume(what: string, target: string, source: Volume, readonly: boolean) {
  assertRenderable(`${what} pool`, source.pool, isVolumeName(source.pool));
  assertRenderable(`${what} volume`, source.name, isVolumeName(source.name));
  return {
    "@type": "volume",
    "@device": "disk",
    driver: {
      "@name": "qemu",
      "@type": "raw",
      ...(readonly ? {} : { "@discard": "unmap", "@detect_zeroes": "unmap" }),
    },
    source: { "@pool": source.pool, "@volume": source.name },
    target: { "@dev": target, "@bus": "virtio" },
    ...(readonly ? { readonly: "" } : {}),
    // Many domains open the base at once, each read-only.
    ...(what === "base" ? { shareable: "" } : {}),
  };
}

const builder = new XMLBuilder({
  ignoreAttributes: false,
  attributeNamePrefix: "@",
  format: true,
  suppressEmptyNode: true,
});

/**
 * The domain's XML. A guest that powers off is destroyed by libvirt and shows as `shut off
 * (shutdown)`, one whose QEMU died as `shut off (crashed)`: shoal tells the two apart from that.
 */
export function renderDomainXml(input: DomainInput): string {
  const { vm } = input;
  assertSafePaths({
    kernel: input.kernel,
    initrd: input.initrd,
    "console log": input.consoleLog,
    "console socket": input.consoleSocket,
  });
  assertRenderable("domain UUID", input.uuid, UUID_PATTERN.test(input.uuid));
  assertRenderable("MAC address", vm.mac, MAC.test(vm.mac));
  if (input.nic !== undefined) {
    const { tap, bridge } = input.nic;
    assertRenderable(
      "tap name",
      tap,
      isInterfaceName(tap) && !RESERVED_TAP_PREFIXES.some((prefix) => tap.startsWith(prefix)),
    );
    assertRenderable("bridge name", bridge, isInterfaceName(bridge));
  }
  if (vm.layer.type === "disk" && input.disks.layer === undefined) {
    throw new Error(`internal: ${vm.name} has a disk layer but no layer volume`);
  }
  const tcgCache = tcgCacheMiBFor(vm, input.tcgCacheMiB);
  const disks = [
    volume("base", "vda", input.disks.base, true),
    volume("seed", "vdb", input.disks.seed, true),
    ...(vm.layer.type === "disk" && input.disks.layer
      ? [volume("layer", "vdc", input.disks.layer, false)]
      : []),
  ];
  const domain = {
    "@type": input.accel === "kvm" ? "kvm" : "qemu",
    name: domainName(input.fleet, vm.name),
    uuid: input.uuid,
    metadata: {
      "shoal:vm": {
        "@xmlns:shoal": METADATA_NAMESPACE,
        "@owner": input.owner,
      },
    },
    memory: { "@unit": "MiB", "#text": vm.memoryMiB },
    vcpu: vm.vcpus,
    os: {
      type: { "@arch": "x86_64", "@machine": "q35", "#text": "hvm" },
      kernel: input.kernel,
      initrd: input.initrd,
      cmdline: renderKernelCmdline(LIBVIRT_GUEST_DEVICES, vm, input.boot),
    },
    features: {
      acpi: "",
      ...(input.accel === "tcg"
        ? { tcg: { "tb-cache": { "@unit": "MiB", "#text": tcgCache } } }
        : {}),
    },
    ...(input.accel === "kvm" ? { cpu: { "@mode": "host-passthrough" } } : {}),
    clock: { "@offset": "utc" },
    on_poweroff: "destroy",
    on_reboot: "restart",
    on_crash: "destroy",
    devices: {
      disk: disks,
      ...(input.nic === undefined
        ? {}
        : {
            interface: {
              "@type": "bridge",
              mac: { "@address": vm.mac },
              source: { "@bridge": input.nic.bridge },
              target: { "@dev": input.nic.tap },
              model: { "@type": "virtio" },
              // The guest's virtio-net takes it (host_mtu): frames that fit a VXLAN between hosts.
              ...(input.nic.mtu === undefined ? {} : { mtu: { "@size": input.nic.mtu } }),
            },
          }),
      // libvirt adds the <console> that stands for this serial port.
      serial: {
        "@type": "unix",
        source: { "@mode": "bind", "@path": input.consoleSocket },
        log: { "@file": input.consoleLog, "@append": "on" },
        target: { "@port": 0 },
      },
      memballoon: { "@model": "virtio", "@freePageReporting": "on" },
      // As the qemu backend's guests get it (see GuestModules.entropy).
      rng: { "@model": "virtio", backend: { "@model": "builtin" } },
    },
  };
  return builder.build({ domain });
}

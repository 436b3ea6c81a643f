import { createHash } from "node:crypto";
import { isDnsLabel } from "../names.js";
import type { Owner } from "../net.js";
import { assertRenderable, isSafePath } from "../syntax.js";

/** What a VM boots from: the image's kernel, shoal's initramfs for it (or the image's own), the shared base. */
export interface BootFiles {
  readonly kernel: string;
  readonly initrd: string;
  readonly base: string;
  /** The base image's id (sha256), which the layer records. */
  readonly baseId: string;
  /** The image boots with its own initramfs (initramfs-tools hook), which needs root= to find the base. */
  readonly ownInitramfs?: boolean;
  /** Set when the base can be mapped into the guest for DAX (see core/dax.ts): its size. */
  readonly dax?: { readonly bytes: number };
  /** The image's init says on the console when it is booted, not only when its union root is up. */
  readonly reportsBoot?: boolean;
}

/** The hypervisor-facing name of a VM; the dot cannot occur in either label, so names never clash across fleets. */
export function domainName(fleet: string, vm: string): string {
  assertRenderable("fleet name", fleet, isDnsLabel(fleet));
  assertRenderable("VM name", vm, isDnsLabel(vm));
  return `${fleet}.${vm}`;
}

/** A UUID as shoal writes and hypervisors print them: lower-case hex in 8-4-4-4-12. */
export const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * The UUID shoal gives a VM's domain under a hypervisor that names domains host-wide: derived from
 * the owner and the VM's name (an RFC 9562 version 8 UUID). Domain names are the same in every
 * state directory; the UUID is not, and tells shoal's own domain from another's of that name.
 */
export function ownedDomainUuid(hypervisor: "xl" | "libvirt", owner: Owner, vm: string): string {
  assertRenderable("fleet name", owner.fleet, isDnsLabel(owner.fleet));
  assertRenderable("VM name", vm, isDnsLabel(vm));
  assertRenderable("state directory", owner.root, isSafePath(owner.root));
  const bytes = createHash("sha256")
    .update(`${hypervisor}\0${owner.root}\0${owner.fleet}\0${vm}`)
    .digest()
    .subarray(0, 16);
  bytes[6] = ((bytes[6] ?? 0) & 0x0f) | 0x80;
  bytes[8] = ((bytes[8] ?? 0) & 0x3f) | 0x80;
  const hex = bytes.toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export function assertSafePaths(paths: Record<string, string | undefined>): void {
  for (const [what, path] of Object.entries(paths)) {
    if (path !== undefined) assertRenderable(`${what} path`, path, isSafePath(path));
  }
}

/** Linux interface names: at most 15 bytes (IFNAMSIZ 16 with the NUL), no "/" or spaces. */
export function isInterfaceName(name: string): boolean {
  return /^[A-Za-z0-9_.-]{1,15}$/.test(name) && name !== "." && name !== "..";
}

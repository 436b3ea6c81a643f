import { readFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import type { VmSpec } from "../../core/fleet.js";

/**
 * Whether this host can run the QEMU VMs about to start: their memory together within what is
 * available now, no VM with more memory than the host has, nor with more vCPUs than its CPUs
 * (software emulation runs each vCPU in a thread of its own, as KVM does). Idle guests hand back
 * what they do not use, but a busy one may touch all it was given, and QEMU itself takes more
 * (a tiny VM of 128M costs the host about 140 MiB idle here): beyond this, the kernel's
 * out-of-memory killer would pick the VMs to end.
 */
export interface HostRoom {
  readonly cpus: number;
  readonly memoryMiB: number;
  readonly availableMiB: number;
}

/** MemTotal and MemAvailable from /proc/meminfo's text, in MiB. */
export function parseMeminfo(text: string): { memoryMiB: number; availableMiB: number } {
  const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB$`, "m").exec(text)?.[1]);
  return {
    memoryMiB: Math.floor(kib("MemTotal") / 1024),
    availableMiB: Math.floor(kib("MemAvailable") / 1024),
  };
}

export async function hostRoom(): Promise<HostRoom> {
  return {
    cpus: availableParallelism(),
    ...parseMeminfo(await readFile("/proc/meminfo", "utf8")),
  };
}

/** The host's figures as messages show them. */
export function describeRoom(room: HostRoom): string {
  return `this host has ${room.cpus} CPUs and ${room.memoryMiB} MiB of memory, ${room.availableMiB} MiB of it available`;
}

/**
 * Why the host cannot start `starting`, with the fix; undefined when it can. With `overcommit`
 * (the user's choice) their memory may add up to more than is available: idle guests hand back
 * what they do not use, and KSM shares identical pages between them.
 */
export function qemuShortfall(
  starting: readonly Pick<VmSpec, "name" | "memoryMiB" | "vcpus">[],
  room: HostRoom,
  overcommit = false,
): { readonly what: string; readonly fix: string } | undefined {
  const widest = starting.reduce<(typeof starting)[number] | undefined>(
    (most, vm) => (most === undefined || vm.vcpus > most.vcpus ? vm : most),
    undefined,
  );
  if (widest !== undefined && widest.vcpus > room.cpus) {
    return {
      what: `VM ${widest.name} has ${widest.vcpus} vCPUs; ${describeRoom(room)}`,
      fix: `give it at most ${room.cpus} vcpus:`,
    };
  }
  const largest = starting.reduce<(typeof starting)[number] | undefined>(
    (most, vm) => (most === undefined || vm.memoryMiB > most.memoryMiB ? vm : most),
    undefined,
  );
  if (largest !== undefined && largest.memoryMiB > room.memoryMiB) {
    return {
      what: `VM ${largest.name} has ${largest.memoryMiB} MiB of memory; ${describeRoom(room)}`,
      fix: `give it at most ${room.memoryMiB}M of memory:`,
    };
  }
  const memoryMiB = starting.reduce((sum, vm) => sum + vm.memoryMiB, 0);
  if (!overcommit && memoryMiB > room.availableMiB) {
    return {
      what: `the ${starting.length} VMs to start have ${memoryMiB} MiB of memory together; ${describeRoom(room)}`,
      fix: "start fewer VMs (`shoal start NAME...`), give them less memory:, stop others, or `up --overcommit` (the out-of-memory killer ends VMs if they use it all)",
    };
  }
  return undefined;
}

import type { Duplex } from "node:stream";
import type { BackendName, VmSpec } from "../core/fleet.js";
import type { BootFiles } from "../core/render/boot.js";
import type { VmPaths } from "../state/layout.js";

/** One VM as a backend finds it: its fleet, its name and where its files are. */
export interface BackendVm {
  readonly fleet: string;
  readonly name: string;
  readonly paths: VmPaths;
}

/** Where a VM's network interface goes: its tap on the fleet's bridge (in the fleet's namespace). */
export interface VmNic {
  readonly tap: string;
  readonly bridge: string;
  readonly namespace?: string;
}

/**
 * What the hypervisor reports for a VM. `powered-off`: the guest shut itself down and the
 * hypervisor still holds it (QEMU paused by -no-shutdown); `crashed`: the hypervisor saw the guest
 * fail. A VM the hypervisor does not know is `absent`; whether that is a crash only shoal's record
 * can tell.
 */
export type Presence =
  | { readonly kind: "absent" }
  | { readonly kind: "running"; readonly since?: Date }
  | { readonly kind: "powered-off" }
  | { readonly kind: "crashed"; readonly reason: string };

/**
 * A hypervisor, as the fleet lifecycle drives it. Everything else (identity, layers, waiting,
 * timeouts, the record) is the same for every backend and lives outside.
 */
export interface Backend {
  readonly name: BackendName;
  /**
   * `tap`: shoal makes the VM's tap on the bridge before starting it; `vif`: the hypervisor makes
   * the VM's interface and its hotplug script puts it on the bridge.
   */
  readonly nic: "tap" | "vif";
  /**
   * Refuses, before anything is made, VMs whose host-wide names (Xen's domain names) another
   * state directory or program holds; a backend whose VMs have no such names has none.
   */
  checkNames?(vms: readonly BackendVm[]): Promise<void>;
  /**
   * Refuses, before anything is made, to start VMs the host has no room for (xl: Xen's free
   * memory, dom0's loop devices), naming the limit and the fix.
   */
  checkRoom?(
    starting: readonly { readonly spec: VmSpec; readonly boot: BootFiles }[],
  ): Promise<void>;
  /**
   * Releases what the backend holds on the host for VMs that are gone (xl: a base's loop device no
   * domain uses any more, also after a shoal killed half-way); run after each command that
   * changes VMs.
   */
  tidy?(): Promise<void>;
  /** Writes the VM's hypervisor definition (vm.qemu; xl: its hotplug scripts) from its spec and boot files. */
  define(vm: BackendVm, spec: VmSpec, boot: BootFiles, nic: VmNic): Promise<void>;
  /**
   * Starts the VM; it keeps running after shoal exits. What runs is rendered again from the spec
   * and boot files (the record's), never taken from a definition in the VM's directory, which is
   * rewritten: a planted or edited definition does not run.
   */
  start(vm: BackendVm, spec: VmSpec, boot: BootFiles, nic: VmNic): Promise<void>;
  presence(vm: BackendVm): Promise<Presence>;
  /** Presses the VM's power button (ACPI) and returns without waiting. */
  requestShutdown(vm: BackendVm): Promise<void>;
  /** Ends the VM at once, whatever its state, and waits until the hypervisor let go of it. */
  destroy(vm: BackendVm): Promise<void>;
  /** Removes what the hypervisor keeps of a destroyed VM outside the VM's directory (logs). */
  forget(vm: BackendVm): Promise<void>;
  /** The VM's serial console, both ways. */
  openConsole(vm: BackendVm): Promise<Duplex>;
}

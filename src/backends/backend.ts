import type { Duplex } from "node:stream";
import type { GuestDevices } from "../core/cmdline.js";
import type { CheckResult, ToolRequirement } from "../core/doctor.js";
import type { FleetSpec, VmSpec } from "../core/fleet.js";
import type { HostSpec } from "../core/hosts.js";
import type { GuestModules } from "../core/modules.js";
import type { BootFiles } from "../core/render/boot.js";
import type { HostUnreachable } from "../errors.js";
import type { Launcher, Runner } from "../host/runner.js";
import type { FleetNetwork } from "../net/network.js";
import type { StateLayout, VmPaths } from "../state/layout.js";

/** One VM as a backend finds it: its fleet, its name and where its files are. */
export interface BackendVm {
  readonly fleet: string;
  readonly name: string;
  readonly paths: VmPaths;
  /** The libvirt host it runs on, for a fleet over several hosts. */
  readonly host?: string;
}

/** One host's part of a fleet's network over several hosts. */
export interface HostNetwork {
  readonly host: string;
  readonly runner: Runner;
  readonly network: FleetNetwork;
}

/** Where a VM's network interface goes: its tap on the fleet's bridge (in the fleet's namespace). */
export interface VmNic {
  /** The interface's name: QEMU's tap, or the name Xen gives the VM's vif. */
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
  | {
      readonly kind: "powered-off";
      /** Nothing holds its disks any more (a shut-off libvirt domain): its layer may be read. */
      readonly disksReleased?: true;
    }
  | { readonly kind: "crashed"; readonly reason: string };

/**
 * A hypervisor, as the fleet lifecycle drives it. Everything else (identity, layers, waiting,
 * timeouts, the record) is the same for every backend and lives outside.
 */
export interface Backend {
  readonly name: string;
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
   * memory, dom0's loop devices), naming the limit and the fix. `overcommit`: the user accepts
   * VMs whose memory adds up to more than the host has free, where the hypervisor can.
   */
  checkRoom?(
    starting: readonly { readonly spec: VmSpec; readonly boot: BootFiles }[],
    overcommit: boolean,
  ): Promise<void>;
  /** For a backend over several hosts: those that cannot be reached now, each with why. */
  unreachableHosts?(): Promise<readonly HostUnreachable[]>;
  /**
   * Releases what the backend holds on the host for VMs that are gone (xl: a base's loop device no
   * domain uses any more, also after a shoal killed half-way); run after each command that
   * changes VMs.
   */
  tidy?(): Promise<void>;
  /**
   * Makes the VM's disk layer where the hypervisor keeps it (a volume on the VM's libvirt host),
   * replacing any it had, for a backend whose layers are not files in the VM's directory: blank,
   * or with the contents of the layer file `contents` here (a VM moved from another host).
   */
  createLayer?(vm: BackendVm, spec: VmSpec, contents?: string): Promise<void>;
  /** With createLayer: copies the VM's layer (sparse) to `destination` here, to be read. */
  copyLayer?(vm: BackendVm, destination: string): Promise<void>;
  /** With createLayer: the bytes the VM's layer takes where the backend keeps it. */
  layerBytes?(vm: BackendVm): Promise<number>;
  /** The bytes host `host`'s copy of base `id` takes, for a backend that copies bases to hosts. */
  baseBytes?(host: string, id: string): Promise<number>;
  /**
   * Brings the VM's serial log in its directory up to date from where the hypervisor writes it,
   * for a backend that writes it on another machine; the log there only grows.
   */
  fetchConsoleLog?(vm: BackendVm): Promise<void>;
  /**
   * Joins the VMs' hosts to the fleet's own network in `namespace` (libvirt: a bridge of the
   * fleet's on each host, linked to it), made or repaired with the network, once per command.
   */
  joinNetwork?(fleet: string, namespace: string): Promise<void>;
  /** Removes from the hosts what joinNetwork made there. */
  leaveNetwork?(fleet: string, namespace: string): Promise<void>;
  /**
   * With joinNetwork: each host's part of the fleet's network (its bridge, in the host's own
   * namespace, reached by the host's runner), where the VMs' links are and their impairments go.
   */
  hostNetworks?(fleet: string): readonly HostNetwork[];
  /**
   * Removes what the fleet has on a host it no longer uses (out of `hosts:`, no VM left there):
   * its network and impairments there, and images no VM of the state directory uses.
   */
  releaseHost?(fleet: string, host: HostSpec): Promise<void>;
  /**
   * Puts boot files where the hypervisor will read them for the VM (libvirt: the image's volumes
   * on its host, sent once per host), ahead of the VM's move to them: an upgrade stages the new
   * base before it stops any VM, so no VM is down while a base travels.
   */
  stageBoot?(vm: BackendVm, boot: BootFiles): Promise<void>;
  /** Writes the VM's hypervisor definition (vm.qemu; xl: its hotplug scripts) from its spec and boot files. */
  define(vm: BackendVm, spec: VmSpec, boot: BootFiles, nic: VmNic): Promise<void>;
  /**
   * Starts the VM; it keeps running after shoal exits. What runs is rendered again from the spec
   * and boot files (the record's), never taken from a definition in the VM's directory, which is
   * rewritten: a planted or edited definition does not run.
   */
  start(vm: BackendVm, spec: VmSpec, boot: BootFiles, nic: VmNic): Promise<void>;
  presence(vm: BackendVm): Promise<Presence>;
  /**
   * Many VMs' presence at once, for a backend that asks far fewer times than once per VM (libvirt:
   * once per host); a VM whose host cannot be reached has its HostUnreachable.
   */
  presences?(vms: readonly BackendVm[]): Promise<Map<string, Presence | HostUnreachable>>;
  /** Presses the VM's power button (ACPI) and returns without waiting. */
  requestShutdown(vm: BackendVm): Promise<void>;
  /** Ends the VM at once, whatever its state, and waits until the hypervisor let go of it. */
  destroy(vm: BackendVm): Promise<void>;
  /** Removes what the hypervisor keeps of a destroyed VM outside the VM's directory (logs). */
  forget(vm: BackendVm): Promise<void>;
  /** The VM's serial console, both ways. */
  openConsole(vm: BackendVm): Promise<Duplex>;
}

/** What a backend needs to be made: the one runner, the state directory, a way to tell the user. */
export interface BackendDeps {
  readonly runner: Launcher;
  readonly layout: StateLayout;
  /** One-line notices for the user (the accelerator chosen, ...). */
  readonly notice: (line: string) => void;
  /** QEMU's accelerator: probed (`auto`), or as the user insists. */
  readonly accel: AccelSetting;
  /** QEMU's translation cache under software emulation in MiB, when the user sets it. */
  readonly tcgCacheMiB?: number;
  /** The libvirt hosts of the fleet (backend libvirt): the fleet file's and those its record still has VMs on. */
  readonly hosts?: readonly HostSpec[];
}

export const ACCEL_SETTINGS = ["auto", "kvm", "tcg"] as const;
/** QEMU takes a translation cache of up to 2 GiB less a page; shoal's limit stays well below. */
export const MAX_TCG_CACHE_MIB = 1024;
export type AccelSetting = (typeof ACCEL_SETTINGS)[number];

/** What `shoal doctor` gives a backend's host checks. */
export interface HostCheckDeps {
  readonly runner: Runner;
  readonly layout: StateLayout;
  /** The fleet file, when there is one: checks of room are against its VMs. */
  readonly fleet: FleetSpec | undefined;
}

/**
 * Everything about one hypervisor that the rest of shoal asks of it, in its own folder
 * (src/backends/NAME/kind.ts) and listed once, in src/backends/registry.ts.
 */
export interface BackendKind {
  readonly name: string;
  /** How the guest sees its disks and console: the kernel command line names them. */
  readonly guestDevices: GuestDevices;
  /** How the guest sees them when the base is mapped for DAX, where the backend can do that. */
  readonly daxGuestDevices?: GuestDevices;
  /** The kernel modules its guests need for those disks and their network. */
  readonly guestModules: GuestModules;
  /** The OUI its VMs' MACs start with, as its tools customarily make them. */
  readonly macPrefix: string;
  /** The host tools it runs, besides the ones every backend needs; `doctor` checks them. */
  readonly tools: readonly ToolRequirement[];
  /** What `doctor` asks of the host for it beyond the tools: devices, daemons, room. */
  checkHost(deps: HostCheckDeps): Promise<CheckResult[]>;
  create(deps: BackendDeps): Backend;
}

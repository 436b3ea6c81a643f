import type { HostSpec } from "./hosts.js";
import type { GroupPatterns, ImpairmentSet } from "./impair-plan.js";
import type { Subnet } from "./ipv4.js";
import type { Mac } from "./mac.js";
import type { PlacementPolicy } from "./placement.js";

/** The resolved fleet: every default applied, every VM's identity derived. What the rest of shoal works from. */

export type LayerType = "disk" | "tmpfs";

/** What a VM's init does with a disk layer that was made over another base image. */
export type BaseChangePolicy = "keep" | "warn" | "reset";

export interface LayerSpec {
  readonly type: LayerType;
  readonly sizeBytes: number;
  readonly onBaseChange: BaseChangePolicy;
  /** Boot with a tmpfs layer (and a loud warning) when the disk layer cannot be used, instead of stopping. */
  readonly fallback: "none" | "tmpfs";
}

export interface VmIdentity {
  readonly name: string;
  readonly hostname: string;
  /** The VM's address slot in the subnet (1 = first VM address); stable, unique, short. */
  readonly index: number;
  readonly mac: Mac;
  readonly ip: string;
  /** 32 lowercase hex digits, as /etc/machine-id holds it. */
  readonly machineId: string;
}

export interface VmSpec extends VmIdentity {
  readonly image: string;
  readonly memoryMiB: number;
  readonly vcpus: number;
  readonly layer: LayerSpec;
  readonly kernelArgs: readonly string[];
  /** The host it runs on, for a fleet over several hosts (`hosts:`); placed, then recorded. */
  readonly host?: string;
}

/**
 * Where the VMs' network interfaces go: the fleet's own network (a namespace with bridge, DHCP and
 * DNS, optionally masqueraded to the outside), or a bridge of the host's that the user runs.
 */
export type NetworkMode =
  | {
      readonly kind: "isolated";
      readonly nat: boolean;
      /** `network.allow`: blocks (CIDR) a NATed fleet may reach that NAT closes by default. */
      readonly allow?: readonly string[];
    }
  | { readonly kind: "host-bridge"; readonly bridge: string };

export interface FleetSpec {
  readonly name: string;
  /** A backend src/backends/registry.ts lists (the fleet file and the record are checked against it). */
  readonly backend: string;
  readonly subnet: Subnet;
  readonly network: NetworkMode;
  readonly authorizedKeys: readonly string[];
  readonly vms: readonly VmSpec[];
  /** `groups:` and `impairments:`: the groups' patterns and what the file impairs. */
  readonly impairments: {
    readonly groups: GroupPatterns;
    readonly set: ImpairmentSet;
  };
  /** The libvirt hosts the VMs run on and how they are placed (backend libvirt only). */
  readonly hosts?: {
    readonly list: readonly HostSpec[];
    readonly placement: PlacementPolicy;
  };
}

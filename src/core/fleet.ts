import type { Subnet } from "./ipv4.js";
import type { Mac } from "./mac.js";

/** The resolved fleet: every default applied, every VM's identity derived. What the rest of shoal works from. */

export type BackendName = "qemu" | "xl";

export type LayerType = "disk" | "tmpfs";

export interface LayerSpec {
  readonly type: LayerType;
  readonly sizeBytes: number;
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
}

export interface FleetSpec {
  readonly name: string;
  readonly backend: BackendName;
  readonly subnet: Subnet;
  readonly authorizedKeys: readonly string[];
  readonly vms: readonly VmSpec[];
}

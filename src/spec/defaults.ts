import type { BackendName } from "../backends/registry.js";
import type { BaseChangePolicy, LayerType } from "../core/fleet.js";

/**
 * The built-in defaults, in one place: a fleet file with only `name:` is a complete fleet of three
 * small VMs on the tiny image. The schema shows these to editors; resolve.ts applies them.
 */
export const DEFAULTS = {
  backend: "qemu" as BackendName,
  image: "tiny",
  count: 3,
  vmName: "vm-{n}",
  memory: "128M",
  vcpus: 1,
  layerType: "disk" as LayerType,
  layerSize: { disk: "1G", tmpfs: "64M" } satisfies Record<LayerType, string>,
  onBaseChange: "warn" as BaseChangePolicy,
  fallback: "none" as "none" | "tmpfs",
  subnet: "10.77.0.0/16",
} as const;

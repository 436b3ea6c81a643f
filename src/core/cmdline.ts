import type { VmSpec } from "./fleet.js";
import { isDnsLabel } from "./names.js";
import type { BootFiles } from "./render/boot.js";
import { formatSize } from "./size.js";
import { assertRenderable, checkKernelParam } from "./syntax.js";

/**
 * How a backend presents the base, the identity seed, the layer and the console to the guest
 * (each backend's own, in src/backends/NAME/kind.ts). The seed comes before the layer so that its
 * name does not depend on whether there is a layer disk.
 */
export interface GuestDevices {
  readonly base: string;
  readonly seed: string;
  readonly layer: string;
  readonly console: string;
  /** Mount options for the base (rootflags=, which initramfs-tools and shoal's init both read). */
  readonly baseFlags?: string;
  /** What else the guest's kernel needs for these devices. */
  readonly kernelParams?: readonly string[];
}

type CmdlineVm = Pick<VmSpec, "name" | "machineId" | "layer" | "kernelArgs">;

/** A stand-in base id of the real length, for checking the command line's length before an image exists. */
export const PLACEHOLDER_BOOT: Pick<BootFiles, "baseId"> = { baseId: "0".repeat(64) };

/**
 * The kernel command line that tells shoal's union-root init where the base, the identity seed
 * and the layer are.
 * systemd.hostname and systemd.machine_id give the VM its identity before anything in the image runs.
 */
export function renderKernelCmdline(
  devices: GuestDevices,
  vm: CmdlineVm,
  boot: Pick<BootFiles, "baseId" | "ownInitramfs">,
): string {
  const layer =
    vm.layer.type === "tmpfs"
      ? ["shoal.layer=tmpfs", `shoal.layer_size=${formatSize(vm.layer.sizeBytes)}`]
      : [
          `shoal.layer=${devices.layer}`,
          `shoal.on_base_change=${vm.layer.onBaseChange}`,
          ...(vm.layer.fallback === "tmpfs" ? ["shoal.fallback=tmpfs"] : []),
        ];
  assertRenderable("base id", boot.baseId, /^[0-9a-f]{64}$/.test(boot.baseId));
  assertRenderable("VM name", vm.name, isDnsLabel(vm.name));
  assertRenderable("machine-id", vm.machineId, /^[0-9a-f]{32}$/.test(vm.machineId));
  for (const param of vm.kernelArgs) {
    assertRenderable("kernel parameter", param, checkKernelParam(param) === undefined);
  }
  return [
    `console=${devices.console}`,
    // The image's own initramfs (initramfs-tools) mounts root= read-only; shoal's ignores it.
    ...(boot.ownInitramfs ? [`root=${devices.base}`, "ro"] : []),
    ...(devices.baseFlags === undefined ? [] : [`rootflags=${devices.baseFlags}`]),
    `shoal.base=${devices.base}`,
    `shoal.base_id=${boot.baseId}`,
    `shoal.seed=${devices.seed}`,
    ...layer,
    `systemd.hostname=${vm.name}`,
    `systemd.machine_id=${vm.machineId}`,
    ...(devices.kernelParams ?? []),
    ...vm.kernelArgs,
  ].join(" ");
}

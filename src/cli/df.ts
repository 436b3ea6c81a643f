import { Command } from "@commander-js/extra-typings";
import { formatUsage } from "../core/size.js";
import { accountDisk, type ImageUsage, type VmUsage } from "../core/usage.js";
import { HostUnreachable } from "../errors.js";
import { layerAllocation } from "../fleet/layers.js";
import { allocatedBytes } from "../host/paths.js";
import { ImageStore } from "../image/store.js";
import { fleetFileOption } from "./context.js";
import { notice, withFleet } from "./fleet.js";
import { fleetNameOption } from "./options.js";
import { formatTable } from "./table.js";

export function dfCommand() {
  return new Command("df")
    .description(
      "the fleet's disk use: each base once, each VM's layer and files, the total, and what full copies of the base would take",
    )
    .addOption(fleetFileOption())
    .addOption(fleetNameOption())
    .option("--json", "print the accounting as one object for scripts")
    .action(async (options, command) => {
      await withFleet(command, options, undefined, async ({ context, session }) => {
        const store = new ImageStore(context.runner, await context.layout());
        // A layer kept on a host is not in the VM's directory here.
        const layerHere = session.backend.layerBytes === undefined;
        const baseOnHost = session.backend.baseBytes?.bind(session.backend);
        // A host that cannot be reached is left out of the sums, and said so.
        const unreachable = new Set<string>();
        const measured = async (measure: () => Promise<number>): Promise<number> => {
          try {
            return await measure();
          } catch (error) {
            if (!(error instanceof HostUnreachable)) throw error;
            unreachable.add(error.host);
            return 0;
          }
        };
        // Only VMs whose files are all made: one half made or half removed has no layer to measure.
        const names = session
          .recordedNames()
          .filter((name) => session.entry(name).phase === "created");
        const vms: VmUsage[] = await Promise.all(
          names.map(async (name) => {
            const { spec } = session.entry(name);
            const paths = session.paths.vm(name);
            const here = await allocatedBytes(paths.dir);
            const layerBytes =
              spec.layer.type !== "disk" ? 0 : await measured(() => layerAllocation(session, name));
            return {
              name,
              image: spec.image,
              layerType: spec.layer.type,
              ...(spec.host === undefined ? {} : { host: spec.host }),
              layerBytes,
              otherBytes: layerHere ? here - layerBytes : here,
            };
          }),
        );
        const images: ImageUsage[] = [];
        if (baseOnHost) {
          const copies = new Map<string, { host: string; id: string; name: string }>();
          for (const name of names) {
            const { spec, baseId } = session.entry(name);
            if (spec.host === undefined || baseId === undefined) continue;
            copies.set(`${spec.host}\0${baseId}`, {
              host: spec.host,
              id: baseId,
              name: spec.image,
            });
          }
          for (const { host, id, name } of copies.values()) {
            const bytes = await measured(() => baseOnHost(host, id));
            images.push({ name, id, host, bytes });
          }
        } else {
          for (const name of new Set(vms.map((vm) => vm.image))) {
            const image = await store.find(name);
            if (image) {
              const bytes = await allocatedBytes((await context.layout()).image(image.id).base);
              images.push({ name, id: image.id, bytes });
            }
          }
        }
        const usage = accountDisk(images, vms);
        for (const host of unreachable) {
          notice(
            `host ${host} cannot be reached: what its VMs and bases take there is counted as 0`,
          );
        }
        if (options.json) {
          context.printJson(baseOnHost ? { ...usage, unreachableHosts: [...unreachable] } : usage);
          return;
        }
        // A fleet over libvirt hosts: each base once per host, and where each VM's layer is.
        const hosts = baseOnHost !== undefined;
        context.print(
          formatTable(
            ["IMAGE", "ID", ...(hosts ? ["HOST"] : []), "BASE", "VMS"],
            usage.images.map((image) => [
              image.name,
              image.id.slice(0, 12),
              ...(hosts ? [image.host ?? "-"] : []),
              formatUsage(image.bytes),
              String(image.vms),
            ]),
          ),
        );
        context.print("");
        context.print(
          formatTable(
            ["VM", "IMAGE", ...(hosts ? ["HOST"] : []), "LAYER", "OTHER"],
            usage.vms.map((vm) => [
              vm.name,
              vm.image,
              ...(hosts ? [vm.host ?? "-"] : []),
              vm.layerType === "tmpfs" ? "tmpfs" : formatUsage(vm.layerBytes),
              formatUsage(vm.otherBytes),
            ]),
          ),
        );
        context.print("");
        context.print(
          `total ${formatUsage(usage.totalBytes)}: bases ${formatUsage(usage.basesBytes)} (each once) + ${usage.vms.length} VMs ${formatUsage(usage.vmsBytes)}`,
        );
        context.print(
          `as full copies of the base: ${formatUsage(usage.fullCopiesBytes)}${usage.ratio === undefined ? "" : ` (${usage.ratio.toFixed(1)}x what shoal takes)`}`,
        );
      });
    });
}

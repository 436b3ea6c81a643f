import { Command } from "@commander-js/extra-typings";
import { formatUsage } from "../core/size.js";
import { accountDisk, type ImageUsage, type VmUsage } from "../core/usage.js";
import { allocatedBytes } from "../host/paths.js";
import { ImageStore } from "../image/store.js";
import { fleetFileOption } from "./context.js";
import { withFleet } from "./fleet.js";
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
        const names = session.recordedNames();
        const vms: VmUsage[] = await Promise.all(
          names.map(async (name) => {
            const { spec } = session.entry(name);
            const paths = session.paths.vm(name);
            const layerBytes = spec.layer.type === "disk" ? await allocatedBytes(paths.layer) : 0;
            return {
              name,
              image: spec.image,
              layerType: spec.layer.type,
              layerBytes,
              otherBytes: (await allocatedBytes(paths.dir)) - layerBytes,
            };
          }),
        );
        const images: ImageUsage[] = [];
        for (const name of new Set(vms.map((vm) => vm.image))) {
          const image = await store.find(name);
          if (image) {
            const bytes = await allocatedBytes((await context.layout()).image(image.id).base);
            images.push({ name, id: image.id, bytes });
          }
        }
        const usage = accountDisk(images, vms);
        if (options.json) {
          context.printJson(usage);
          return;
        }
        context.print(
          formatTable(
            ["IMAGE", "ID", "BASE", "VMS"],
            usage.images.map((image) => [
              image.name,
              image.id.slice(0, 12),
              formatUsage(image.bytes),
              String(image.vms),
            ]),
          ),
        );
        context.print("");
        context.print(
          formatTable(
            ["VM", "IMAGE", "LAYER", "OTHER"],
            usage.vms.map((vm) => [
              vm.name,
              vm.image,
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

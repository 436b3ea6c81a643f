import { constants } from "node:fs";
import { Command } from "@commander-js/extra-typings";
import { formatSize } from "../core/size.js";
import { escapeLine, LogEscaper } from "../core/terminal.js";
import { UserError } from "../errors.js";
import { withStoppedLayer } from "../fleet/layers.js";
import { oneVm } from "../fleet/select.js";
import { pathExists } from "../host/paths.js";
import { committedSource, derivedSource } from "../image/derive.js";
import { buildRecipe, DEBIAN_SUITES, importSource } from "../image/sources.js";
import { bootInheritedFrom, type ImageMeta, ImageStore } from "../image/store.js";
import { fleetsUsingImage } from "../state/store.js";
import { contextOf, fleetFileOption } from "./context.js";
import { withFleet } from "./fleet.js";
import { fleetNameOption, lockWaitOption } from "./options.js";
import { step } from "./progress.js";
import { formatTable } from "./table.js";

async function storeOf(command: { optsWithGlobals(): object }) {
  const context = contextOf(command);
  return { context, store: new ImageStore(context.runner, await context.layout()) };
}

/** How QEMU VMs get the base: mapped for DAX (read from the host's page cache), or as a disk. */
function baseAttachment(image: ImageMeta): string {
  if (image.dax === undefined) return "disk (image made before shoal mapped bases for DAX)";
  // The reason is read back from the image's record: escaped like anything else read from a file.
  return image.dax.capable ? "dax" : `disk (${escapeLine(image.dax.refusal ?? "not mappable")})`;
}

function describe(image: ImageMeta): string {
  return `image ${image.name}: ${image.id.slice(0, 12)}, ${formatSize(image.size)}, kernel ${image.kernelVersion}, base ${baseAttachment(image)}`;
}

function buildCommand() {
  return new Command("build")
    .description("build an image: a Debian system with mmdebstrap, or shoal's tiny busybox image")
    .argument("<name>", "the new image's name")
    .requiredOption("--from <source>", `busybox, or debian:SUITE (${DEBIAN_SUITES.join(", ")})`)
    .option("--include <packages>", "more Debian packages, comma-separated")
    .option(
      "--hook <kind>",
      "also install the union root as an initramfs-tools script and boot with the image's own initramfs (initramfs-tools)",
    )
    .action(async (name, options, command) => {
      const { context, store } = await storeOf(command);
      const build = buildRecipe(context.runner, name, options);
      const image = await store.add(build.request, build.make, step);
      context.print(describe(image));
    });
}

function importCommand() {
  return new Command("import")
    .description("import an image: a raw ext4 image, a directory tree, a tarball or a qcow2")
    .argument("<name>", "the new image's name")
    .argument("<path>", "what to import")
    .action(async (name, path, _options, command) => {
      const { context, store } = await storeOf(command);
      let format = "";
      const image = await store.add(
        { name, source: `import ${path}` },
        async (staging) => {
          const result = await importSource(context.runner, staging, path);
          format = result.format;
          return result.raw;
        },
        step,
      );
      context.print(`${describe(image)} (imported from ${format})`);
    });
}

function listCommand() {
  return new Command("ls")
    .description("list the images")
    .option("--json", "print an array of image objects")
    .action(async (options, command) => {
      const { context, store } = await storeOf(command);
      const images = await store.list();
      if (options.json) {
        context.printJson(images);
        return;
      }
      const rows = images.map((image) => [
        image.name,
        image.id.slice(0, 12),
        formatSize(image.size),
        image.kernelVersion,
        escapeLine(image.source),
        image.created,
        baseAttachment(image),
      ]);
      context.print(
        formatTable(["NAME", "ID", "SIZE", "KERNEL", "SOURCE", "CREATED", "BASE"], rows),
      );
    });
}

function inspectCommand() {
  return new Command("inspect")
    .description("show an image's record and files, as JSON")
    .argument("<name>")
    .action(async (name, _options, command) => {
      const { context, store } = await storeOf(command);
      const image = await store.get(name);
      context.printJson({ ...image, files: (await context.layout()).image(image.id) });
    });
}

function removeCommand() {
  return new Command("rm")
    .description("remove an image (refused while a fleet uses it)")
    .argument("<name>")
    .action(async (name, _options, command) => {
      const { context, store } = await storeOf(command);
      const layout = await context.layout();
      await store.remove(name, (image) => fleetsUsingImage(layout, image));
      context.print(`removed image ${name}`);
    });
}

function deriveCommand() {
  return new Command("derive")
    .description(
      "make a new image from another: run a command or script in a copy of its root (as root, in a chroot with the host's network), then seal it",
    )
    .argument("<name>", "the new image's name")
    .requiredOption("--from <image>", "the image to start from (it is not changed)")
    .option("--run <command>", "a shell command line, run by the image's /bin/sh")
    .option("--script <file>", "a script (any interpreter the image has) copied in and run")
    .action(async (name, options, command) => {
      const { context, store } = await storeOf(command);
      if ((options.run === undefined) === (options.script === undefined)) {
        throw new UserError(
          "give exactly one of --run and --script",
          "--run 'apt-get install -y curl'",
        );
      }
      const change =
        options.run !== undefined ? { run: options.run } : { script: options.script ?? "" };
      if ("script" in change && !(await pathExists(change.script, constants.R_OK))) {
        throw new UserError(`cannot read script ${change.script}`, "give a file that exists");
      }
      const from = await store.get(options.from);
      const base = (await context.layout()).image(from.id).base;
      const image = await store.add(
        {
          name,
          source: `${from.name} (${from.id.slice(0, 12)}) + ${"run" in change ? `--run ${change.run}` : `--script ${change.script}`}`,
          ...bootInheritedFrom(from),
        },
        async (staging) => {
          // The image's own programs print this: shown, not obeyed, by the terminal.
          const shown = new LogEscaper();
          try {
            return await derivedSource(context.runner, staging, base, change, (chunk) =>
              process.stderr.write(shown.push(chunk)),
            );
          } finally {
            process.stderr.write(shown.end());
          }
        },
        step,
      );
      context.print(`${describe(image)} (derived from ${from.name})`);
    });
}

function commitCommand() {
  return new Command("commit")
    .description(
      "make a new image from a stopped VM: its layer folded into a copy of its base (its identity files left out), then sealed",
    )
    .argument("<name>", "the new image's name")
    .requiredOption("--from-vm <vm>", "the VM whose changes the new image takes")
    .addOption(fleetFileOption())
    .addOption(fleetNameOption())
    .addOption(lockWaitOption())
    .action(async (name, options, command) => {
      await withFleet(command, options, "image commit", async ({ context, session }) => {
        const vm = oneVm(session, options.fromVm);
        const image = await withStoppedLayer(session, vm, async (stopped) => {
          if (!stopped) {
            throw new UserError(
              `VM ${vm} never booted: it has no changes to commit`,
              "its image is what it would give",
            );
          }
          const store = new ImageStore(context.runner, await context.layout());
          const { baseId } = stopped;
          const from = (await store.list()).find((image) => image.id === baseId);
          return store.add(
            {
              name,
              source: `VM ${vm} of fleet ${session.fleet} over ${from?.name ?? "image"} (${baseId.slice(0, 12)})`,
              ...bootInheritedFrom(from),
            },
            (staging) => committedSource(context.runner, staging, stopped.base, stopped.layer),
            step,
          );
        });
        context.print(`${describe(image)} (from VM ${vm})`);
      });
    });
}

export function imageCommand() {
  const image = new Command("image").description(
    "build, import, list, inspect and remove base images",
  );
  for (const sub of [
    buildCommand(),
    importCommand(),
    deriveCommand(),
    commitCommand(),
    listCommand(),
    inspectCommand(),
    removeCommand(),
  ])
    image.addCommand(sub.exitOverride());
  return image;
}

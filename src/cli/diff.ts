import { Command } from "@commander-js/extra-typings";
import { formatUsage } from "../core/size.js";
import { escapeName } from "../core/terminal.js";
import { layerChanges } from "../fleet/layers.js";
import { oneVm } from "../fleet/select.js";
import { fleetFileOption } from "./context.js";
import { withFleet } from "./fleet.js";
import { fleetNameOption, lockWaitOption } from "./options.js";
import { formatTable } from "./table.js";

export function diffCommand() {
  return new Command("diff")
    .description(
      "what a stopped VM changed relative to its base: files added, modified and deleted, with sizes (identity files left out)",
    )
    .argument("<vm>", "the VM's name")
    .addOption(fleetFileOption())
    .addOption(fleetNameOption())
    .addOption(lockWaitOption())
    .option("--json", "print an array of {path, change, type, size} for scripts")
    .action(async (name, options, command) => {
      // Under the fleet's lock: reading the layer replays its journal, which no `up` may race.
      await withFleet(command, options, "diff", async ({ context, session }) => {
        const vm = oneVm(session, name);
        const changes = await layerChanges(session, vm);
        if (options.json) {
          context.printJson(changes);
          return;
        }
        if (changes.length === 0) {
          context.print(`VM ${vm} has no changes of its own`);
          return;
        }
        context.print(
          formatTable(
            ["CHANGE", "TYPE", "SIZE", "PATH"],
            changes.map((change) => [
              change.change,
              change.type,
              change.type === "file" ? formatUsage(change.size) : "-",
              // The guest chose the names: a newline or an escape sequence shows as such.
              escapeName(change.path),
            ]),
          ),
        );
      });
    });
}

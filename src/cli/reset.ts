import { Command } from "@commander-js/extra-typings";
import { UserError } from "../errors.js";
import { resetLayers } from "../fleet/layers.js";
import { selectVms } from "../fleet/select.js";
import { confirm, refuseUnaskable } from "./confirm.js";
import { fleetFileOption } from "./context.js";
import { withFleet } from "./fleet.js";
import { fleetNameOption, lockWaitOption } from "./options.js";

export function resetCommand() {
  return new Command("reset")
    .description(
      "throw away stopped VMs' changes (their disk layers start empty again); hostname, machine-id and host keys stay",
    )
    .argument("<vms...>", "VM names or patterns such as 'web-*'")
    .addOption(fleetFileOption())
    .addOption(fleetNameOption())
    .addOption(lockWaitOption())
    .option("-y, --yes", "do not ask for confirmation (needed when stdin is not a terminal)")
    .action(async (patterns, options, command) => {
      refuseUnaskable("reset", options.yes);
      await withFleet(command, options, "reset", async ({ context, session }) => {
        const names = selectVms(patterns, session.recordedNames());
        if (!options.yes) {
          if (!(await confirm(`Throw away every change of ${names.join(", ")}?`))) {
            throw new UserError("nothing reset", "pass --yes to skip this question");
          }
        }
        await resetLayers(session, names);
        context.print(`reset ${names.length} VMs; they start from their base at their next boot`);
      });
    });
}

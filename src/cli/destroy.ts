import { Command } from "@commander-js/extra-typings";
import { UserError } from "../errors.js";
import { destroyVms } from "../fleet/destroy.js";
import { selectVms } from "../fleet/select.js";
import { confirm, refuseUnaskable } from "./confirm.js";
import { fleetFileOption } from "./context.js";
import { withFleet } from "./fleet.js";
import { fleetNameOption, lockWaitOption, workersOption } from "./options.js";

export function destroyCommand() {
  return new Command("destroy")
    .description(
      "remove VMs with their layers, identities and every file and process they had; without names, the whole fleet",
    )
    .argument("[vms...]", "only these VMs (names or patterns); `shoal up` would make them afresh")
    .addOption(fleetFileOption())
    .addOption(fleetNameOption())
    .addOption(workersOption())
    .addOption(lockWaitOption())
    .option("-y, --yes", "do not ask for confirmation (needed when stdin is not a terminal)")
    .action(async (patterns, options, command) => {
      refuseUnaskable("destroy", options.yes);
      await withFleet(command, options, "destroy", async ({ context, session }) => {
        const known = [...session.recordedNames(), ...(await session.strayNames())].sort();
        const names = selectVms(patterns, known);
        const whole = patterns.length === 0;
        if (!options.yes && names.length > 0) {
          const what = whole ? `fleet ${session.fleet}` : `these VMs of fleet ${session.fleet}`;
          if (
            !(await confirm(`Destroy ${what}: ${names.length} VMs, their layers and identities?`))
          ) {
            throw new UserError("nothing destroyed", "pass --yes to skip this question");
          }
        }
        await destroyVms(session, names, { whole, workers: options.workers });
        context.print(
          names.length === 0
            ? `fleet ${session.fleet} has nothing to destroy`
            : `destroyed ${names.length} VMs${whole ? ` and fleet ${session.fleet}` : ""}`,
        );
      });
    });
}

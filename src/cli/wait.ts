import { Command } from "@commander-js/extra-typings";
import { ShoalError } from "../errors.js";
import { eachVm } from "../fleet/fan-out.js";
import { FleetReach } from "../fleet/reach.js";
import { createdVms } from "../fleet/select.js";
import { fleetFileOption } from "./context.js";
import { withFleet } from "./fleet.js";
import { fleetNameOption, timeoutOption, workersOption } from "./options.js";
import { formatTable } from "./table.js";

export function waitCommand() {
  return new Command("wait")
    .description(
      "wait until every VM (or the ones named) accepts an SSH login, so scripts can go on: shoal up && shoal wait && ...",
    )
    .argument("[vms...]", "VM names or patterns; all VMs if none")
    .addOption(timeoutOption("give up after this many seconds", 300))
    .addOption(workersOption(64))
    .addOption(fleetFileOption())
    .addOption(fleetNameOption())
    .action(async (patterns, options, command) => {
      await withFleet(command, options, undefined, async ({ context, session }) => {
        const vms = createdVms(session, patterns);
        const reach = await FleetReach.open(context.runner, session);
        const started = Date.now();
        const deadline = started + options.timeout * 1000;
        const results = await eachVm(vms, options.workers, async (name) => {
          await reach.waitForLogin(name, deadline);
          return `answers (${Math.round((Date.now() - started) / 1000)} s)`;
        });
        const outcomes = results.map((result) => ({
          name: result.name,
          ok: result.ok,
          detail: result.ok ? result.value : result.error.message,
        }));
        context.print(
          formatTable(
            ["NAME", "SSH"],
            outcomes.map((outcome) => [outcome.name, outcome.detail]),
          ),
        );
        const failed = outcomes.filter((outcome) => !outcome.ok).map((outcome) => outcome.name);
        if (failed.length > 0) {
          throw new ShoalError(
            `${failed.length} of ${outcomes.length} VMs do not accept SSH logins: ${failed.join(", ")}`,
            { hint: "`shoal logs NAME` shows a VM's console" },
          );
        }
      });
    });
}

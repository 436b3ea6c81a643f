import { Command } from "@commander-js/extra-typings";
import { stopVms } from "../fleet/power.js";
import { createdVms } from "../fleet/select.js";
import { contextOf, fleetFileOption } from "./context.js";
import { withFleet } from "./fleet.js";
import { fleetNameOption, lockWaitOption, timeoutOption, workersOption } from "./options.js";
import { reportPower } from "./report.js";

/** `down` (the whole fleet, or some VMs) and `stop` (the VMs named): the same shutdown. */
export function shutdownCommand(verb: "down" | "stop") {
  return new Command(verb)
    .description(
      verb === "down"
        ? "shut the fleet's VMs down (power button, then forced after --timeout); layers are kept"
        : "shut the named VMs down (power button, then forced after --timeout)",
    )
    .argument(verb === "down" ? "[vms...]" : "<vms...>", "VM names or patterns such as 'web-*'")
    .addOption(fleetFileOption())
    .addOption(fleetNameOption())
    .addOption(workersOption())
    .addOption(lockWaitOption())
    .addOption(timeoutOption("seconds a VM gets to shut down cleanly before it is forced", 60))
    .option("--force", "do not wait for a clean shutdown: end the VMs at once")
    .action(async (patterns, options, command) => {
      const outcomes = await withFleet(command, options, verb, async ({ session }) => {
        const names = createdVms(session, patterns);
        const timeoutMs = options.force ? 0 : options.timeout * 1000;
        return stopVms(session, names, timeoutMs, options.workers);
      });
      reportPower(contextOf(command), verb, outcomes);
    });
}

export function downCommand() {
  return shutdownCommand("down");
}

import { Command } from "@commander-js/extra-typings";
import { startVms, stopVms } from "../fleet/power.js";
import { createdVms } from "../fleet/select.js";
import { contextOf, fleetFileOption } from "./context.js";
import { withFleet } from "./fleet.js";
import { fleetNameOption, lockWaitOption, timeoutOption, workersOption } from "./options.js";
import { reportPower } from "./report.js";

/** `start` and `restart` (a clean shutdown first) of created VMs, as they were defined. */
export function powerOnCommand(verb: "start" | "restart") {
  return new Command(verb)
    .description(
      verb === "start"
        ? "start the named VMs (created ones; `shoal up` also creates and changes VMs)"
        : "shut the named VMs down cleanly and start them again",
    )
    .argument("<vms...>", "VM names or patterns such as 'web-*'")
    .addOption(fleetFileOption())
    .addOption(fleetNameOption())
    .addOption(workersOption())
    .addOption(lockWaitOption())
    .addOption(timeoutOption("seconds to wait for a VM to shut down and to boot", 300))
    .option("--no-wait", "do not wait for the VMs to boot")
    .action(async (patterns, options, command) => {
      const outcomes = await withFleet(command, options, verb, async ({ session }) => {
        const names = createdVms(session, patterns);
        const timeoutMs = options.timeout * 1000;
        const stopped =
          verb === "restart"
            ? await stopVms(session, names, timeoutMs, options.workers)
            : names.map((name) => ({ name, ok: true, detail: "" }));
        const failedToStop = stopped.filter((outcome) => !outcome.ok);
        const started = await startVms(
          session,
          stopped.filter((outcome) => outcome.ok).map((outcome) => outcome.name),
          options.wait ? timeoutMs : undefined,
          options.workers,
        );
        return [...failedToStop, ...started];
      });
      reportPower(contextOf(command), verb, outcomes);
    });
}

export function startCommand() {
  return powerOnCommand("start");
}

import { Command } from "@commander-js/extra-typings";
import { PassedOnExit } from "../errors.js";
import { FleetReach } from "../fleet/reach.js";
import { oneVm } from "../fleet/select.js";
import { fleetFileOption } from "./context.js";
import { withFleet } from "./fleet.js";
import { fleetNameOption } from "./options.js";

export function sshCommand() {
  return new Command("ssh")
    .description(
      "log in to a VM, or run one command on it, checking its host key against the fleet's known_hosts",
    )
    .argument("<vm>", "the VM's name")
    .argument("[command...]", "after --: the command to run instead of a login shell")
    .addOption(fleetFileOption())
    .addOption(fleetNameOption())
    .action(async (name, words, options, command) => {
      const code = await withFleet(command, options, undefined, async ({ context, session }) => {
        const vm = oneVm(session, name);
        const reach = await FleetReach.open(context.runner, session);
        await reach.requireRunning(vm);
        return reach.attach(vm, words);
      });
      // As with ssh itself: shoal's exit code is the remote command's.
      if (code !== 0) throw new PassedOnExit(code);
    });
}

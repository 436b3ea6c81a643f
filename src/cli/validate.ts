import { Command } from "@commander-js/extra-typings";
import { loadFleetFile } from "../spec/load.js";
import { contextOf, fleetFileOption } from "./context.js";

export function validateCommand() {
  return new Command("validate")
    .description("check a fleet file and report every problem in it, with its line and column")
    .addOption(fleetFileOption())
    .action(async (options, command) => {
      const fleet = await loadFleetFile(options.file);
      contextOf(command).print(
        `${options.file}: fleet ${fleet.name} is valid: ${fleet.vms.length} VMs on ${fleet.backend}, subnet ${fleet.subnet.cidr}`,
      );
    });
}

import { Command } from "@commander-js/extra-typings";
import { type PortForward, parsePortForward } from "../core/reach.js";
import { UserError } from "../errors.js";
import { FleetReach } from "../fleet/reach.js";
import { oneVm } from "../fleet/select.js";
import { fleetFileOption } from "./context.js";
import { notice, withFleet } from "./fleet.js";
import { fleetNameOption } from "./options.js";

export function forwardCommand() {
  return new Command("forward")
    .description(
      "forward TCP ports of this host's loopback to a VM over SSH, until Ctrl-C: `shoal forward vm-1 8080:80`",
    )
    .argument("<vm>", "the VM's name")
    .argument("<ports...>", "HOSTPORT:VMPORT, or PORT for the same on both")
    .addOption(fleetFileOption())
    .addOption(fleetNameOption())
    .action(async (name, ports, options, command) => {
      const forwards = ports.map((text): PortForward => {
        const forward = parsePortForward(text);
        if (!forward) {
          throw new UserError(
            `${JSON.stringify(text)} is not a port forward`,
            "write HOSTPORT:VMPORT (8080:80) or PORT, ports 1 to 65535",
          );
        }
        return forward;
      });
      await withFleet(command, options, undefined, async ({ context, session }) => {
        const vm = oneVm(session, name);
        const reach = await FleetReach.open(context.runner, session);
        await reach.requireRunning(vm);
        const stop = new AbortController();
        const onSignal = () => stop.abort();
        process.once("SIGINT", onSignal);
        process.once("SIGTERM", onSignal);
        try {
          for (const { hostPort, vmPort } of forwards) {
            notice(`forwarding 127.0.0.1:${hostPort} to ${vm}:${vmPort}; Ctrl-C stops`);
          }
          await reach.forward(vm, forwards, stop.signal);
        } finally {
          process.off("SIGINT", onSignal);
          process.off("SIGTERM", onSignal);
        }
      });
    });
}

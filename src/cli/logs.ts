import { open } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { Command } from "@commander-js/extra-typings";
import { UserError } from "../errors.js";
import { fleetFileOption } from "./context.js";
import { fleetNameOption, oneVm, withFleet } from "./fleet.js";

export function logsCommand() {
  return new Command("logs")
    .description("a VM's serial console log, kept on the host across boots")
    .argument("<vm>", "the VM's name")
    .addOption(fleetFileOption(false))
    .addOption(fleetNameOption())
    .option("-f, --follow", "keep printing what the VM writes, until Ctrl-C")
    .action(async (name, options, command) => {
      await withFleet(command, options, undefined, async ({ session }) => {
        const vm = oneVm(session, name);
        const log = await open(session.paths.vm(vm).serialLog, "r").catch(() => undefined);
        if (!log) {
          throw new UserError(
            `VM ${vm} has no console log yet`,
            "it is written from the VM's first boot on",
          );
        }
        let offset = 0;
        for (;;) {
          const { bytesRead, buffer } = await log.read({
            buffer: Buffer.alloc(65_536),
            position: offset,
          });
          if (bytesRead > 0) {
            offset += bytesRead;
            process.stdout.write(buffer.subarray(0, bytesRead));
          } else if (options.follow) {
            await sleep(200);
          } else {
            break;
          }
        }
        await log.close();
      });
    });
}

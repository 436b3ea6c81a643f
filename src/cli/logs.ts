import { open } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { Command } from "@commander-js/extra-typings";
import { LogEscaper } from "../core/terminal.js";
import { UserError } from "../errors.js";
import { oneVm } from "../fleet/select.js";
import { ifExists } from "../host/paths.js";
import { fleetFileOption } from "./context.js";
import { withFleet } from "./fleet.js";
import { fleetNameOption } from "./options.js";

export function logsCommand() {
  return new Command("logs")
    .description("a VM's serial console log, kept on the host across boots")
    .argument("<vm>", "the VM's name")
    .addOption(fleetFileOption(false))
    .addOption(fleetNameOption())
    .option("-f, --follow", "keep printing what the VM writes, until Ctrl-C")
    .option(
      "--raw",
      "the log's bytes as the VM wrote them, escape sequences included (by default control characters and bytes that are not UTF-8 are shown escaped, such as \\x1b)",
    )
    .action(async (name, options, command) => {
      await withFleet(command, options, undefined, async ({ session }) => {
        const vm = oneVm(session, name);
        const fetch = () => session.backend.fetchConsoleLog?.(session.vm(vm));
        await fetch();
        const log = await ifExists(open(session.paths.vm(vm).serialLog, "r"));
        if (!log) {
          throw new UserError(
            `VM ${vm} has no console log yet`,
            "it is written from the VM's first boot on",
          );
        }
        // What the guest wrote must not drive the user's terminal, unless asked for.
        const escaper = options.raw ? undefined : new LogEscaper();
        let offset = 0;
        for (;;) {
          const { bytesRead, buffer } = await log.read({
            buffer: Buffer.alloc(65_536),
            position: offset,
          });
          if (bytesRead > 0) {
            offset += bytesRead;
            const chunk = buffer.subarray(0, bytesRead);
            process.stdout.write(escaper ? escaper.push(chunk) : chunk);
          } else if (options.follow) {
            await sleep(200);
            await fetch();
          } else {
            break;
          }
        }
        if (escaper) process.stdout.write(escaper.end());
        await log.close();
      });
    });
}

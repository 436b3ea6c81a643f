import { Command } from "@commander-js/extra-typings";
import { oneVm } from "../fleet/select.js";
import { fleetFileOption } from "./context.js";
import { withFleet } from "./fleet.js";
import { fleetNameOption } from "./options.js";

/** Ctrl-], as in telnet and virsh console. */
const ESCAPE = 0x1d;
const PIPED_INPUT_GRACE_MS = 1000;

export function consoleCommand() {
  return new Command("console")
    .description("attach to a VM's serial console; Ctrl-] detaches (the VM keeps running)")
    .argument("<vm>", "the VM's name")
    .addOption(fleetFileOption())
    .addOption(fleetNameOption())
    .action(async (name, options, command) => {
      await withFleet(command, options, undefined, async ({ session }) => {
        const vm = oneVm(session, name);
        const console = await session.backend.openConsole(session.vm(vm));
        const terminal = process.stdin.isTTY === true;
        if (terminal) {
          process.stderr.write(`connected to ${vm}'s console; Ctrl-] detaches\r\n`);
          process.stdin.setRawMode(true);
        }
        // Everything the VM writes is read at once: an unread console stalls the guest.
        console.pipe(process.stdout, { end: false });
        await new Promise<void>((resolve, reject) => {
          let detached = false;
          const detach = (error?: Error) => {
            if (detached) return;
            detached = true;
            process.stdin.off("data", input);
            if (terminal) process.stdin.setRawMode(false);
            process.stdin.pause();
            console.end();
            console.destroy();
            if (error) reject(error);
            else resolve();
          };
          // A console that fails (its host's ssh ended) ends the command with why; once detached,
          // the stream's own end (a stream over ssh reports being cut short) is what was asked.
          console.on("error", (error) => detach(error));
          const input = (chunk: Buffer) => {
            const at = terminal ? chunk.indexOf(ESCAPE) : -1;
            if (at >= 0) {
              console.write(chunk.subarray(0, at));
              detach();
            } else {
              console.write(chunk);
            }
          };
          process.stdin.on("data", input);
          // Piped input: the VM's answer to the last line still gets a moment to arrive.
          process.stdin.once("end", () => setTimeout(() => detach(), PIPED_INPUT_GRACE_MS));
          console.once("close", () => detach());
          // The terminal leaves raw mode however shoal is told to stop.
          process.once("SIGTERM", () => detach()).once("SIGHUP", () => detach());
        });
        if (terminal) process.stderr.write("\r\ndetached\n");
      });
    });
}

import { Argument, Command } from "@commander-js/extra-typings";
import { ksmCheck } from "../core/doctor.js";
import { UserError } from "../errors.js";
import { KSM_DIR, readKsm, setKsm } from "../host/ksm.js";
import { contextOf } from "./context.js";

function ksmCommand() {
  return new Command("ksm")
    .description(
      "show, or turn on or off, the kernel's merging of memory pages alike in several VMs (KSM), for the whole host",
    )
    .addArgument(new Argument("[setting]", "on or off; without it, show").choices(["on", "off"]))
    .action(async (setting, _options, command) => {
      const found = await readKsm();
      if (found === undefined) {
        throw new UserError(
          `this kernel has no KSM (${KSM_DIR} is missing)`,
          "a kernel built with CONFIG_KSM has it (Debian's does)",
        );
      }
      if (setting !== undefined) await setKsm(setting === "on");
      const now = setting === undefined ? found : await readKsm();
      contextOf(command).print(`KSM: ${ksmCheck(now).detail}`);
    });
}

export function hostCommand() {
  const verb = new Command("host").description(
    "settings of this host that every fleet on it shares (shoal never changes them by itself)",
  );
  // Without its own exitOverride a subcommand's usage error would end the process with
  // commander's exit code 1 instead of reaching main, which makes it 2.
  verb.addCommand(ksmCommand().exitOverride());
  return verb;
}

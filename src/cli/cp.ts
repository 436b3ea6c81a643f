import { mkdir, stat } from "node:fs/promises";
import { Command } from "@commander-js/extra-typings";
import { parseCopyEnd } from "../core/reach.js";
import { ShoalError, UserError } from "../errors.js";
import { eachVm } from "../fleet/fan-out.js";
import { FleetReach } from "../fleet/reach.js";
import { createdVms } from "../fleet/select.js";
import { ifExists } from "../host/paths.js";
import { fleetFileOption } from "./context.js";
import { notice, withFleet } from "./fleet.js";
import { fleetNameOption, workersOption } from "./options.js";

export function cpCommand() {
  return new Command("cp")
    .description(
      "copy files and directories to or from VMs with scp: VM:/path, where VM may be a pattern ('*:/opt/' is every VM)",
    )
    .argument("<source>", "a local path, or VM:/path")
    .argument("<destination>", "VM:/path (VM a name or pattern), or a local path")
    .addOption(workersOption(16))
    .addOption(fleetFileOption())
    .addOption(fleetNameOption())
    .action(async (source, destination, options, command) => {
      const from = parseCopyEnd(source);
      const to = parseCopyEnd(destination);
      if (from.kind === to.kind) {
        throw new UserError(
          from.kind === "vm"
            ? "copy between a VM and this host, not between two VMs"
            : `neither ${JSON.stringify(source)} nor ${JSON.stringify(destination)} names a VM`,
          "write a VM's path as VM:/path",
        );
      }
      const remote = from.kind === "vm" ? from : to.kind === "vm" ? to : undefined;
      const local = from.kind === "local" ? from : to.kind === "local" ? to : undefined;
      if (!remote || !local) throw new Error("internal: cp ends");
      await withFleet(command, options, undefined, async ({ context, session }) => {
        const vms = createdVms(session, [remote.pattern]);
        const reach = await FleetReach.open(context.runner, session);
        for (const vm of vms) await reach.requireRunning(vm);
        // From a pattern (however many VMs it matches today): one directory per VM under the
        // destination, so no copy overwrites another and the layout does not depend on the count.
        const downloadOfMany =
          from.kind === "vm" && !(vms.length === 1 && vms[0] === remote.pattern);
        if (downloadOfMany) {
          const existing = await ifExists(stat(local.path));
          if (existing && !existing.isDirectory()) {
            throw new UserError(
              `${local.path} is not a directory; copies from ${vms.length} VMs go into DIR/VM/`,
            );
          }
          await mkdir(local.path, { recursive: true });
        }
        // Ctrl-C ends the copies and lets them remove what they had received but not yet placed.
        const interrupt = new AbortController();
        const onSignal = () => interrupt.abort();
        process.once("SIGINT", onSignal).once("SIGTERM", onSignal);
        const results = await eachVm(vms, options.workers, async (vm) => {
          if (interrupt.signal.aborted) throw new ShoalError("interrupted");
          const there = { target: reach.target(vm), path: remote.path };
          const signal = interrupt.signal;
          if (from.kind === "local") return reach.copy(local.path, there, { signal });
          return reach.copy(there, local.path, {
            signal,
            ...(downloadOfMany ? { subdirectory: vm } : {}),
          });
        }).finally(() => process.off("SIGINT", onSignal).off("SIGTERM", onSignal));
        if (interrupt.signal.aborted) throw new ShoalError("cp interrupted");
        const failures = results.flatMap((result) => (result.ok ? [] : [result.error.message]));
        if (failures.length > 0) {
          throw new ShoalError(
            `cp failed on ${failures.length} of ${vms.length} VMs: ${failures.join("; ")}`,
          );
        }
        if (vms.length > 1) notice(`cp: copied on all ${vms.length} VMs`);
      });
    });
}

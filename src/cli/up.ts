import { Command } from "@commander-js/extra-typings";
import type { Goal } from "../core/plan.js";
import { ShoalError } from "../errors.js";
import { converge } from "../fleet/converge.js";
import { observeAll } from "../fleet/planning.js";
import { selectVms } from "../fleet/select.js";
import { ImageStore } from "../image/store.js";
import { fleetFileOption } from "./context.js";
import { withFleet } from "./fleet.js";
import { lockWaitOption, timeoutOption, workersOption } from "./options.js";
import { formatTable } from "./table.js";

const VERBS: Record<Goal, { verb: string; description: string }> = {
  running: {
    verb: "up",
    description:
      "make the fleet match its file: create, change, start (and delete) VMs; a second `up` does nothing",
  },
  created: {
    verb: "create",
    description: "everything `up` does except starting VMs: layers, identities, definitions",
  },
};

/** `up` and `create`: one convergence, two goals. */
export function convergeCommand(goal: Goal) {
  const { verb, description } = VERBS[goal];
  return new Command(verb)
    .description(description)
    .argument(
      "[vms...]",
      "only these VMs (names or patterns such as 'web-*'); VMs removed from the file are then left alone",
    )
    .addOption(fleetFileOption())
    .addOption(workersOption())
    .addOption(lockWaitOption())
    .addOption(timeoutOption("how long a VM may take to boot, or to shut down for a change", 300))
    .option("--no-wait", "start VMs without waiting for them to boot")
    .option(
      "--overcommit",
      "start VMs whose memory adds up to more than the host has available (QEMU: idle guests give back what they do not use, KSM shares equal pages; if they use it all, the out-of-memory killer ends VMs)",
    )
    .option(
      "--reschedule",
      "make the VMs of hosts that cannot be reached again on the fleet's other hosts (libvirt), with blank layers",
    )
    .option("--json", "print the result as JSON for scripts")
    .action(async (patterns, options, command) => {
      const result = await withFleet(
        command,
        options,
        verb,

        async ({ context, session, spec }) => {
          if (!spec) throw new Error("internal: up needs the fleet file");
          const names = spec.vms.map((vm) => vm.name);
          const only = patterns.length > 0 ? new Set(selectVms(patterns, names)) : undefined;
          const bootOf = await new ImageStore(context.runner, await context.layout()).bootsFor(
            spec.vms,
          );
          const outcomes = await converge(session, spec, bootOf, {
            goal,
            workers: options.workers,
            bootTimeoutMs: options.wait && goal === "running" ? options.timeout * 1000 : undefined,
            stopTimeoutMs: options.timeout * 1000,
            overcommit: options.overcommit ?? false,
            reschedule: options.reschedule ?? false,
            ...(only ? { only } : {}),
          });
          const states = await observeAll(
            session,
            outcomes.map((outcome) => outcome.plan.name),
          );
          return { context, outcomes, states };
        },
      );
      const rows = result.outcomes.map(({ plan, ok, detail }) => ({
        name: plan.name,
        ...(plan.spec.host === undefined ? {} : { host: plan.spec.host }),
        ip: plan.spec.ip,
        state: result.states.get(plan.name)?.state ?? "missing",
        done: plan.actions,
        changes: plan.changes,
        ok,
        ...(detail === undefined ? {} : { error: detail }),
      }));
      if (options.json) {
        result.context.printJson(rows);
      } else {
        const onHosts = rows.some((row) => row.host !== undefined);
        result.context.print(
          formatTable(
            ["NAME", "STATE", ...(onHosts ? ["HOST"] : []), "IP", "DONE", "RESULT"],
            rows.map((row) => [
              row.name,
              row.state,
              ...(onHosts ? [row.host ?? "-"] : []),
              row.ip,
              row.done.join(", ") || "-",
              row.ok ? "ok" : `failed: ${row.error ?? ""}`,
            ]),
          ),
        );
      }
      const failed = rows.filter((row) => !row.ok).map((row) => row.name);
      if (failed.length > 0) {
        throw new ShoalError(
          `${failed.length} of ${rows.length} VMs failed: ${failed.join(", ")}`,
          {
            hint: "`shoal logs NAME` shows a VM's console",
          },
        );
      }
    });
}

export function upCommand() {
  return convergeCommand("running");
}

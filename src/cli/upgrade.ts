import { Command, Option } from "@commander-js/extra-typings";
import { escapeName } from "../core/terminal.js";
import { ShoalError, UserError } from "../errors.js";
import {
  CONFLICT_OUTCOMES,
  CONFLICT_POLICIES,
  conflictReports,
  type UpgradeTarget,
  upgradeCandidates,
  upgradeFleet,
} from "../fleet/upgrade.js";
import { ImageStore } from "../image/store.js";
import { contextOf, fleetFileOption } from "./context.js";
import { notice, withFleet } from "./fleet.js";
import { lockWaitOption, positiveInteger, timeoutOption } from "./options.js";
import { formatTable } from "./table.js";

export function upgradeCommand() {
  return new Command("upgrade")
    .description(
      "move the fleet's VMs to a new base a few at a time (stop, switch base, start, wait), keeping every layer; with --dry-run, only show which files each VM's layer hides from the new base",
    )
    .addOption(fleetFileOption())
    .option("--image <name>", "the new base (default: the image the fleet file names)")
    .addOption(
      new Option("--max-unavailable <n>", "how many VMs are down at once")
        .default(1)
        .argParser((value) => positiveInteger("--max-unavailable", value)),
    )
    .addOption(
      new Option(
        "--conflicts <policy>",
        "a VM whose layer hides files the new base changed: proceed (keep its versions), skip it (it stays on the old base), or reset its layer",
      )
        .choices(CONFLICT_POLICIES)
        .default("proceed" as const),
    )
    .addOption(timeoutOption("how long a VM may take to shut down, and to boot again", 300))
    .addOption(lockWaitOption())
    .option("--json", "print one object per VM for scripts")
    .action(async (options, command) => {
      const dryRun = contextOf(command).dryRun;
      // A dry run only reads (layers from copies): it needs no lock and changes nothing.
      await withFleet(
        command,
        options,
        dryRun ? undefined : "upgrade",
        async ({ context, session, spec }) => {
          if (!spec) throw new UserError("`shoal upgrade` needs the fleet file");
          const images = [...new Set(spec.vms.map((vm) => vm.image))];
          const image = options.image ?? (images.length === 1 ? images[0] : undefined);
          if (image === undefined) {
            throw new UserError(
              "the fleet's VMs use several images: say which one to move them to",
              "--image NAME",
            );
          }
          const [first] = spec.vms;
          if (!first) throw new UserError(`fleet ${spec.name} has no VMs`);
          const boot = (
            await new ImageStore(context.runner, await context.layout()).bootsFor([
              { ...first, image },
            ])
          )({ ...first, image });
          const target: UpgradeTarget = { image, boot };
          if (images.some((name) => name !== image)) {
            notice(
              `the fleet file still names image ${images.join(", ")}: change it to ${image}, or the next \`shoal up\` moves the VMs back`,
            );
          }
          const candidates = upgradeCandidates(session, spec, target);
          if (dryRun) {
            const rows = await conflictReports(session, candidates, target);
            if (options.json) {
              context.printJson(rows);
              return;
            }
            for (const row of rows) {
              const count = row.conflicts.length;
              context.print(
                row.error !== undefined
                  ? `${row.name}: its layer could not be read: ${row.error}`
                  : count === 0
                    ? `${row.name}: no conflicts`
                    : `${row.name}: its layer hides ${count === 1 ? "1 file" : `${count} files`} the new base changed (--conflicts ${options.conflicts}: ${CONFLICT_OUTCOMES[options.conflicts]}):`,
              );
              for (const conflict of row.conflicts) {
                context.print(`  ${conflict.change} ${escapeName(conflict.path)}`);
              }
            }
            const moving = rows.filter(
              (row) => options.conflicts !== "skip" || row.conflicts.length === 0,
            ).length;
            context.print(
              `would move ${moving === 1 ? "1 VM" : `${moving} VMs`} to image ${image} (${boot.baseId.slice(0, 12)}), ${options.maxUnavailable} at a time`,
            );
            return;
          }
          const reports = await upgradeFleet(session, spec, target, {
            maxUnavailable: options.maxUnavailable,
            policy: options.conflicts,
            bootTimeoutMs: options.timeout * 1000,
            stopTimeoutMs: options.timeout * 1000,
          });
          if (options.json) {
            context.printJson(reports);
          } else if (reports.length === 0) {
            context.print(`every VM of fleet ${spec.name} boots from image ${image} already`);
          } else {
            context.print(
              formatTable(
                ["NAME", "RESULT", "CONFLICTS", "DETAIL"],
                reports.map((report) => [
                  report.name,
                  report.outcome,
                  report.conflicts.map((conflict) => escapeName(conflict.path)).join(" ") || "-",
                  report.detail ?? "",
                ]),
              ),
            );
          }
          const failed = reports.find((report) => report.outcome === "failed");
          if (failed) {
            throw new ShoalError(
              `VM ${failed.name} did not come back on image ${image}: the upgrade stopped there`,
              {
                hint: "`shoal logs` shows its console; the VMs not reached are still on the old base",
              },
            );
          }
        },
      );
    });
}

import { Command } from "@commander-js/extra-typings";
import { formatUsage } from "../core/size.js";
import { ShoalError } from "../errors.js";
import { layerAllocation } from "../fleet/layers.js";
import { observeAll } from "../fleet/planning.js";
import { selectVms } from "../fleet/select.js";
import { fleetFileOption } from "./context.js";
import { withFleet } from "./fleet.js";
import { fleetNameOption } from "./options.js";
import { formatTable } from "./table.js";

function formatUptime(seconds: number): string {
  const days = Math.floor(seconds / 86_400);
  const hours = Math.floor((seconds % 86_400) / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  if (days > 0) return `${days}d${hours}h`;
  if (hours > 0) return `${hours}h${minutes}m`;
  return minutes > 0 ? `${minutes}m${seconds % 60}s` : `${seconds}s`;
}

export function psCommand() {
  return new Command("ps")
    .description("every VM of the fleet: state (from the hypervisor), IP, uptime, layer disk use")
    .argument("[vms...]", "only these VMs (names or patterns)")
    .addOption(fleetFileOption())
    .addOption(fleetNameOption())
    .option("--json", "print an array of VM objects for scripts")
    .action(async (patterns, options, command) => {
      await withFleet(command, options, undefined, async ({ context, session, spec }) => {
        const known = [
          ...new Set([...(spec?.vms.map((vm) => vm.name) ?? []), ...session.recordedNames()]),
        ];
        const names = selectVms(patterns, known);
        const states = await observeAll(session, names);
        const now = Date.now();
        const rows = await Promise.all(
          names.map(async (name) => {
            const vm =
              spec?.vms.find((candidate) => candidate.name === name) ?? session.book.vm(name)?.spec;
            const status = states.get(name) ?? { state: "missing" as const };
            const layer =
              vm?.layer.type !== "disk" ||
              status.state === "missing" ||
              status.state === "unreachable"
                ? undefined
                : // A host that stopped answering since: not shown.
                  await layerAllocation(session, name).catch((error: unknown) => {
                    if (error instanceof ShoalError) return undefined;
                    throw error;
                  });
            // Where it runs, else where `up` would put it.
            const host = session.book.vm(name)?.spec.host ?? vm?.host;
            return {
              name,
              state: status.state,
              backend: session.backend.name,
              ...(host === undefined ? {} : { host }),
              ip: vm?.ip ?? "",
              uptimeSeconds: status.since
                ? Math.max(0, Math.round((now - status.since.getTime()) / 1000))
                : null,
              layerType: vm?.layer.type ?? null,
              layerBytes: layer ?? null,
            };
          }),
        );
        if (options.json) {
          context.printJson(rows);
          return;
        }
        const onHosts = rows.some((row) => row.host !== undefined);
        context.print(
          formatTable(
            ["NAME", "STATE", "BACKEND", ...(onHosts ? ["HOST"] : []), "IP", "UPTIME", "LAYER"],
            rows.map((row) => [
              row.name,
              row.state,
              row.backend,
              ...(onHosts ? [row.host ?? "-"] : []),
              row.ip,
              row.uptimeSeconds === null ? "-" : formatUptime(row.uptimeSeconds),
              row.layerType === "tmpfs"
                ? "tmpfs"
                : row.layerBytes === null
                  ? "-"
                  : formatUsage(row.layerBytes),
            ]),
          ),
        );
      });
    });
}

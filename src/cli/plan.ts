import { Command } from "@commander-js/extra-typings";
import type { FleetSpec } from "../core/fleet.js";
import { formatIpv4 } from "../core/ipv4.js";
import type { VmAction, VmPlan } from "../core/plan.js";
import { formatSize } from "../core/size.js";
import { planChanges } from "../fleet/planning.js";
import { loadFleetFile } from "../spec/load.js";
import { checkSocketPaths } from "../state/layout.js";
import { readFleetRecord } from "../state/store.js";
import { contextOf, fleetFileOption } from "./context.js";
import { withFleet } from "./fleet.js";
import { formatTable } from "./table.js";

function planJson(plan: readonly VmPlan[]) {
  return plan.map(({ spec, state, actions, changes }) => ({
    name: spec.name,
    hostname: spec.hostname,
    index: spec.index,
    mac: spec.mac,
    ip: spec.ip,
    machineId: spec.machineId,
    image: spec.image,
    memory: `${spec.memoryMiB}M`,
    vcpus: spec.vcpus,
    layer: { type: spec.layer.type, size: formatSize(spec.layer.sizeBytes) },
    kernelArgs: spec.kernelArgs,
    ...(spec.host === undefined ? {} : { host: spec.host }),
    state,
    actions,
    changes,
  }));
}

function planTable(fleet: FleetSpec, plan: readonly VmPlan[]): string {
  const rows = plan.map(({ spec, state, actions, changes }) => {
    const changed = changes.length > 0 ? ` (${changes.join(", ")})` : "";
    const action = actions.length === 0 ? "-" : `${actions.join(", ")}${changed}`;
    const layer = `${spec.layer.type} ${formatSize(spec.layer.sizeBytes)}`;
    const host = fleet.hosts ? [spec.host ?? "-"] : [];
    return [spec.name, spec.hostname, ...host, spec.mac, spec.ip, layer, state, action];
  });
  const counts = new Map<VmAction, number>();
  for (const action of plan.flatMap((vm) => vm.actions))
    counts.set(action, (counts.get(action) ?? 0) + 1);
  const summary =
    counts.size === 0
      ? "nothing to do"
      : [...counts].map(([action, n]) => `${n} to ${action}`).join(", ");
  const gateway = formatIpv4(fleet.subnet.gateway);
  const hosts = fleet.hosts ? ` (${fleet.hosts.list.length} hosts)` : "";
  const header = `fleet ${fleet.name}: ${fleet.vms.length} VMs on ${fleet.backend}${hosts}, subnet ${fleet.subnet.cidr}, gateway ${gateway}`;
  const hostColumn = fleet.hosts ? ["HOST"] : [];
  const table = formatTable(
    ["NAME", "HOSTNAME", ...hostColumn, "MAC", "IP", "LAYER", "STATE", "ACTION"],
    rows,
  );
  return `${header}\n${table}\n${summary}`;
}

export function planCommand() {
  return new Command("plan")
    .description("show every VM's identity and what `shoal up` would do to it")
    .addOption(fleetFileOption())
    .option("--json", "print an array of VM objects for scripts")
    .action(async (options, command) => {
      const context = contextOf(command);
      const fleet = await loadFleetFile(options.file);
      const layout = await context.layout();
      checkSocketPaths(
        layout,
        fleet.name,
        fleet.vms.map((vm) => vm.name),
      );
      // A fleet never brought up has nothing to observe (and needs no working backend).
      const { plan } = (await readFleetRecord(layout, fleet.name))
        ? await withFleet(command, options, undefined, ({ session }) =>
            planChanges(session, fleet, "running"),
          )
        : await planChanges(undefined, fleet, "running");
      if (options.json) context.printJson(planJson(plan));
      else context.print(planTable(fleet, plan));
    });
}

import { Command, Option } from "@commander-js/extra-typings";
import { BACKEND_NAMES, backendKind } from "../backends/registry.js";
import { type CheckResult, impairmentCheck, toolsFor, verdict } from "../core/doctor.js";
import type { FleetSpec } from "../core/fleet.js";
import { ShoalError } from "../errors.js";
import { ownerOf } from "../fleet/session.js";
import { checkTools } from "../host/doctor.js";
import { pathExists } from "../host/paths.js";
import { impairmentSupport } from "../net/impairments.js";
import { FleetNetwork } from "../net/network.js";
import { DEFAULTS } from "../spec/defaults.js";
import { DEFAULT_FLEET_FILE, loadFleetFile } from "../spec/load.js";
import { contextOf, fleetFileOption } from "./context.js";
import { formatTable } from "./table.js";

const LEVEL_LABEL = { ok: "ok", warn: "WARN", fail: "FAIL" } as const;

/** The fleet file, when there is one: the default file may simply not exist here. */
async function fleetIfAny(file: string): Promise<FleetSpec | undefined> {
  if (file === DEFAULT_FLEET_FILE) {
    if (!(await pathExists(file))) return undefined;
  }
  return loadFleetFile(file);
}

export function doctorCommand() {
  return new Command("doctor")
    .description(
      "check that this host can run the fleet's backend: tools and versions, KVM, Xen dom0, memory; one line per check, with the fix",
    )
    .addOption(
      new Option(
        "--backend <backend>",
        "check for this backend instead of the fleet file's",
      ).choices(BACKEND_NAMES),
    )
    .addOption(fleetFileOption())
    .action(async (options, command) => {
      const context = contextOf(command);
      const fleet = await fleetIfAny(options.file);
      const backend = options.backend ?? fleet?.backend ?? DEFAULTS.backend;
      const kind = backendKind(backend);
      const results: CheckResult[] = await checkTools(context.runner, toolsFor(kind.tools));
      results.push(
        ...(await kind.checkHost({
          runner: context.runner,
          layout: await context.layout(),
          fleet,
        })),
      );
      results.push(impairmentCheck(await impairmentSupport(context.runner)));
      if (fleet) {
        const layout = await context.layout();
        const network = new FleetNetwork(
          context.runner,
          layout.fleet(fleet.name).net,
          ownerOf(layout, fleet.name),
          fleet.network,
        );
        const bridge = await network.hostBridgeCheck();
        if (bridge) results.push(bridge);
      }
      context.print(`shoal doctor: backend ${backend}${fleet ? ` (fleet ${fleet.name})` : ""}`);
      context.print(
        formatTable(
          ["CHECK", "RESULT", "DETAIL"],
          results.flatMap((result) => [
            [result.name, LEVEL_LABEL[result.level], result.detail],
            ...(result.fix && result.level !== "ok" ? [["", "", `fix: ${result.fix}`]] : []),
          ]),
        ),
      );
      if (!verdict(results)) {
        const failed = results
          .filter((result) => result.level === "fail")
          .map((result) => result.name);
        throw new ShoalError(
          `backend ${backend} cannot run VMs on this host: ${failed.join(", ")}`,
        );
      }
      context.print(`backend ${backend} can run VMs on this host`);
    });
}

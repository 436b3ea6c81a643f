import { Command, Option } from "@commander-js/extra-typings";
import { DHCP_EXPORT_FORMATS, renderReservations } from "../core/render/dhcp-export.js";
import { loadFleetFile } from "../spec/load.js";
import { contextOf, fleetFileOption } from "./context.js";

function dhcpCommand() {
  return (
    new Command("dhcp")
      .description(
        "print every VM's DHCP reservation (MAC, IP, hostname) for a DHCP server of your own",
      )
      .addOption(fleetFileOption())
      .addOption(
        new Option("--format <format>", "the DHCP server's config syntax")
          .choices(DHCP_EXPORT_FORMATS)
          .default("dnsmasq" as const),
      )
      // Works from the fleet file alone: the reservations are planned, not recorded, so this
      // runs before `shoal up`, on any host, without the state directory or the fleet's lock.
      .action(async (options, command) => {
        const fleet = await loadFleetFile(options.file);
        contextOf(command).print(
          renderReservations(options.format, {
            fleet: fleet.name,
            subnet: fleet.subnet,
            vms: fleet.vms,
          }),
        );
      })
  );
}

export function exportCommand() {
  const verb = new Command("export").description(
    "print a fleet's settings for servers of your own, which shoal does not run",
  );
  // Without its own exitOverride a subcommand's usage error would end the process with
  // commander's exit code 1 instead of reaching main, which makes it 2.
  verb.addCommand(dhcpCommand().exitOverride());
  return verb;
}

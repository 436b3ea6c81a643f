import type { VmIdentity } from "../fleet.js";
import { formatIpv4, parseCidr, parseIpv4, type Subnet } from "../ipv4.js";
import { isDnsLabel } from "../names.js";
import { assertRenderable } from "../syntax.js";
import { checkReservation } from "./dnsmasq.js";

/**
 * A fleet's DHCP reservations for a DHCP server the user runs, in host bridge mode, where shoal
 * serves no DHCP itself: VMs still boot expecting the addresses shoal planned for them.
 */

export const DHCP_EXPORT_FORMATS = ["dnsmasq", "isc"] as const;

export type DhcpExportFormat = (typeof DHCP_EXPORT_FORMATS)[number];

export interface DhcpExportInput {
  readonly fleet: string;
  readonly subnet: Subnet;
  readonly vms: readonly Pick<VmIdentity, "name" | "hostname" | "mac" | "ip">[];
}

/** The first lines of either format: whose reservations these are, and from which command. */
function header(input: DhcpExportInput, command: string): string[] {
  assertRenderable("fleet name", input.fleet, isDnsLabel(input.fleet));
  assertRenderable("subnet", input.subnet.cidr, parseCidr(input.subnet.cidr).ok);
  const gateway = formatIpv4(input.subnet.gateway);
  // formatIpv4 wraps numbers outside 32 bits silently; only a round trip shows it got a real one.
  assertRenderable("gateway", gateway, parseIpv4(gateway) === input.subnet.gateway);
  return [
    `# DHCP reservations of shoal fleet ${input.fleet}, planned in subnet ${input.subnet.cidr} with gateway ${gateway};`,
    `# from \`${command}\`: export them again whenever the fleet file changes.`,
  ];
}

/** dhcp-host lines for the user's dnsmasq, to include with conf-file= or drop into a conf-dir. */
function renderDnsmasq(input: DhcpExportInput): string {
  const lines = [
    ...header(input, "shoal export dhcp --format dnsmasq"),
    // dnsmasq ignores dhcp-host for an address no dhcp-range covers.
    `# dnsmasq serves them only with a dhcp-range over ${input.subnet.cidr} ("static" is enough).`,
  ];
  const hosts = input.vms.map((vm) => {
    checkReservation(vm);
    // Infinite, as shoal's own dnsmasq gives them: the address is the VM's for its whole life.
    return `dhcp-host=${vm.mac},${vm.ip},${vm.hostname},infinite`;
  });
  return [...lines, ...hosts, ""].join("\n");
}

/** Host declarations for the user's ISC dhcpd.conf; the subnet declaration stays theirs. */
function renderIsc(input: DhcpExportInput): string {
  const lines = [
    ...header(input, "shoal export dhcp --format isc"),
    `# They belong in a dhcpd.conf that declares subnet ${input.subnet.cidr} itself.`,
  ];
  const hosts = input.vms.map((vm) => {
    checkReservation(vm);
    assertRenderable("VM name", vm.name, isDnsLabel(vm.name));
    // Host names are global in dhcpd.conf; the fleet prefix keeps two fleets' VMs apart.
    return `  host ${input.fleet}-${vm.name} { hardware ethernet ${vm.mac}; fixed-address ${vm.ip}; option host-name "${vm.hostname}"; }`;
  });
  return [...lines, "group {", ...hosts, "}", ""].join("\n");
}

export function renderReservations(format: DhcpExportFormat, input: DhcpExportInput): string {
  switch (format) {
    case "dnsmasq":
      return renderDnsmasq(input);
    case "isc":
      return renderIsc(input);
  }
}

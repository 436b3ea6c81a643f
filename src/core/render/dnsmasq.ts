import type { VmIdentity } from "../fleet.js";
import { parseIpv4 } from "../ipv4.js";
import { parseMac } from "../mac.js";
import { isDnsLabel } from "../names.js";
import { assertRenderable } from "../syntax.js";

type Reservation = Pick<VmIdentity, "name" | "hostname" | "mac" | "ip">;

function checkReservation(vm: Reservation): void {
  assertRenderable("hostname", vm.hostname, isDnsLabel(vm.hostname));
  assertRenderable("MAC", vm.mac, parseMac(vm.mac) === vm.mac);
  assertRenderable("IPv4 address", vm.ip, parseIpv4(vm.ip) !== undefined);
}

/**
 * A dnsmasq --dhcp-hostsfile: one reservation per line, MAC -> IP -> hostname. Leases are infinite
 * because the address is the VM's for its whole life anyway.
 */
export function renderDhcpHosts(vms: readonly Reservation[]): string {
  return vms
    .map((vm) => {
      checkReservation(vm);
      return `${vm.mac},${vm.ip},${vm.hostname},infinite\n`;
    })
    .join("");
}

/** A dnsmasq --addn-hosts file, so `<vm>` and `<vm>.<fleet>` resolve inside the fleet. */
export function renderDnsHosts(fleet: string, vms: readonly Reservation[]): string {
  assertRenderable("fleet name", fleet, isDnsLabel(fleet));
  return vms
    .map((vm) => {
      checkReservation(vm);
      return `${vm.ip} ${vm.hostname}.${fleet} ${vm.hostname}\n`;
    })
    .join("");
}

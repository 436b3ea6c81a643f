import type { NatLink } from "../net.js";
import { assertRenderable } from "../syntax.js";
import { isInterfaceName } from "./boot.js";

/**
 * nftables rulesets for a fleet's outbound NAT, one table per fleet in each namespace. Each script
 * declares the table, deletes it and writes it anew, so applying it again replaces the rules in one
 * transaction instead of adding a second copy.
 */

function checkLink(link: NatLink): void {
  assertRenderable("nft table", link.table, /^shoal_[a-z0-9_]{1,63}$/.test(link.table));
  for (const name of [link.hostSide, link.fleetSide]) {
    assertRenderable("interface name", name, isInterfaceName(name));
  }
  assertRenderable(
    "transit network",
    link.transit,
    /^169\.254\.\d{1,3}\.\d{1,3}\/30$/.test(link.transit),
  );
}

/** Declaring the table first makes the delete succeed whether or not the table was there. */
function removal(link: NatLink): string[] {
  checkLink(link);
  return [`table ip ${link.table} {}`, `delete table ip ${link.table}`];
}

function table(link: NatLink, rule: string): string {
  return [
    ...removal(link),
    `table ip ${link.table} {`,
    "  chain postrouting {",
    "    type nat hook postrouting priority srcnat; policy accept;",
    `    ${rule}`,
    "  }",
    "}",
    "",
  ].join("\n");
}

/** In the fleet's namespace: VM traffic leaving by the uplink takes the uplink's address. */
export function renderFleetNat(link: NatLink): string {
  return table(link, `oifname "${link.fleetSide}" masquerade`);
}

/** In the host's namespace: the fleet's transit address takes the address of the way out. */
export function renderHostNat(link: NatLink): string {
  return table(link, `ip saddr ${link.transit} oifname != "${link.hostSide}" masquerade`);
}

/** Removes the fleet's table, whether or not it is there. */
export function renderNatRemoval(link: NatLink): string {
  return `${removal(link).join("\n")}\n`;
}

/**
 * The host's DNS servers a NATed fleet's dnsmasq forwards to: IPv4 `nameserver` lines of a
 * resolv.conf, without loopback ones, which the fleet's namespace cannot reach.
 */
export function upstreamNameservers(resolvConf: string): string[] {
  return resolvConf
    .split("\n")
    .map((line) => /^\s*nameserver\s+(\d{1,3}(?:\.\d{1,3}){3})\s*$/.exec(line)?.[1])
    .filter((address): address is string => address !== undefined && !address.startsWith("127."));
}

import { type NatLink, VXLAN_PORT } from "../net.js";
import { assertRenderable } from "../syntax.js";
import { isInterfaceName } from "./boot.js";

/**
 * nftables rulesets for a fleet's outbound NAT, one table per fleet in each namespace, carrying
 * its owner mark as the table's comment. Each script declares the table, deletes it and writes it
 * anew, so applying it again replaces the rules in one transaction instead of adding a second copy.
 */

const IPV4 = /^\d{1,3}(?:\.\d{1,3}){3}$/;
const BLOCK = /^\d{1,3}(?:\.\d{1,3}){3}\/\d{1,2}$/;

function checkLink(link: NatLink): void {
  assertRenderable("nft table", link.table, /^shoal_[a-z0-9_]{1,72}$/.test(link.table));
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

function table(link: NatLink, mark: string, chains: readonly string[]): string {
  assertRenderable("owner mark", mark, /^[ !#-[\]-~]{1,128}$/.test(mark));
  return [
    ...removal(link),
    `table ip ${link.table} {`,
    `  comment "${mark}"`,
    ...chains,
    "}",
    "",
  ].join("\n");
}

function chain(name: string, type: string, rules: readonly string[]): string[] {
  return [
    `  chain ${name} {`,
    `    ${type}; policy accept;`,
    ...rules.map((rule) => `    ${rule}`),
    "  }",
  ];
}

function addressSet(addresses: readonly string[], what: string, pattern: RegExp): string {
  for (const address of addresses) assertRenderable(what, address, pattern.test(address));
  return `{ ${addresses.join(", ")} }`;
}

/** In the fleet's namespace: VM traffic leaving by the uplink takes the uplink's address. */
export function renderFleetNat(link: NatLink, mark: string): string {
  return table(
    link,
    mark,
    chain("postrouting", "type nat hook postrouting priority srcnat", [
      `oifname "${link.fleetSide}" masquerade`,
    ]),
  );
}

export interface HostNatInput {
  readonly link: NatLink;
  /** The table's owner mark. */
  readonly mark: string;
  /** `network.allow`: address blocks the fleet may reach although they are the host's or closed. */
  readonly allow: readonly string[];
  /** The DNS servers the fleet's dnsmasq forwards to: reachable on port 53 wherever they are. */
  readonly nameservers: readonly string[];
}

/**
 * In the host's namespace: the fleet's transit address takes the address of the way out, and
 * what comes from the fleet is kept from the host itself (any of its addresses, and its broadcast
 * and multicast ones), from link-local addresses (cloud metadata, other fleets' transit links)
 * unless `allow` opens them. VXLAN never leaves, whatever `allow` says: from this machine's
 * address it would put frames of any source MAC on the bridges of fleets over hosts (VNIs are
 * not secret), past their partitions. It is decided at prerouting, before the host's own DNAT (a port
 * forwarded to a container is the host's port too), by where the packet was sent. The fleet's
 * dnsmasq, whose queries come by the same link, keeps its DNS servers.
 */
export function renderHostNat(input: HostNatInput): string {
  const { link } = input;
  const from = `iifname "${link.hostSide}"`;
  return table(link, input.mark, [
    ...chain("prerouting", "type filter hook prerouting priority mangle", [
      `${from} udp dport ${VXLAN_PORT} drop`,
      ...(input.nameservers.length === 0
        ? []
        : [
            `${from} ip daddr ${addressSet(input.nameservers, "DNS server", IPV4)} meta l4proto { tcp, udp } th dport 53 accept`,
          ]),
      ...(input.allow.length === 0
        ? []
        : [`${from} ip daddr ${addressSet(input.allow, "allowed block", BLOCK)} accept`]),
      `${from} fib daddr type { local, broadcast, multicast } drop`,
      `${from} ip daddr 169.254.0.0/16 drop`,
    ]),
    ...chain("postrouting", "type nat hook postrouting priority srcnat", [
      `ip saddr ${link.transit} oifname != "${link.hostSide}" masquerade`,
    ]),
  ]);
}

/** Removes the fleet's table, whether or not it is there. */
export function renderNatRemoval(link: NatLink): string {
  return `${removal(link).join("\n")}\n`;
}

/** The comment of table `name` in `nft list table` output; undefined if it has none. */
export function parseTableComment(
  listing: string,
  name: string,
  family: "ip" | "bridge" = "ip",
): string | undefined {
  const escaped = name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return new RegExp(`^table ${family} ${escaped} \\{\\n\\s*comment "([^"\\n]*)"\\n`).exec(
    listing,
  )?.[1];
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

import ipaddr from "ipaddr.js";
import { quoted } from "./excerpt.js";

/**
 * An IPv4 subnet with the arithmetic shoal needs: VM addresses are numbered "slots" 1..capacity,
 * the usable host addresses in order with the gateway left out. Network and broadcast addresses
 * are never slots.
 */
export interface Subnet {
  readonly cidr: string;
  readonly prefix: number;
  readonly network: number;
  readonly broadcast: number;
  readonly gateway: number;
  /** How many VM addresses the subnet holds. */
  readonly capacity: number;
}

export function parseIpv4(text: string): number | undefined {
  if (!ipaddr.IPv4.isValidFourPartDecimal(text)) return undefined;
  return ipaddr.IPv4.parse(text)
    .toByteArray()
    .reduce((value, byte) => value * 256 + byte, 0);
}

export function formatIpv4(value: number): string {
  return [value >>> 24, (value >>> 16) & 255, (value >>> 8) & 255, value & 255].join(".");
}

/** VMs need at least one address beside the gateway, so the smallest subnet is a /30. */
export const MAX_PREFIX = 30;

export type CidrResult =
  | { ok: true; network: number; prefix: number }
  | { ok: false; message: string };

/** `A.B.C.D/N` split into its parts; undefined unless both are well-formed (N at most 32). */
function splitCidr(text: string): { base: number; prefix: number } | undefined {
  const [address, prefixText, ...rest] = text.split("/");
  const base = address === undefined ? undefined : parseIpv4(address);
  if (base === undefined || prefixText === undefined || rest.length > 0) return undefined;
  if (!/^\d{1,2}$/.test(prefixText) || Number(prefixText) > 32) return undefined;
  return { base, prefix: Number(prefixText) };
}

export function parseCidr(text: string): CidrResult {
  const parts = splitCidr(text);
  if (parts === undefined) {
    return {
      ok: false,
      message: `${quoted(text)} is not an IPv4 subnet in CIDR form like 10.77.0.0/16`,
    };
  }
  const { base, prefix } = parts;
  if (prefix > MAX_PREFIX) {
    return {
      ok: false,
      message: `/${prefix} leaves no address for VMs; use /${MAX_PREFIX} or larger`,
    };
  }
  const network = networkOf(base, prefix);
  if (network !== base) {
    return {
      ok: false,
      message: `${text} has host bits set; the subnet is ${formatIpv4(network)}/${prefix}`,
    };
  }
  return { ok: true, network, prefix };
}

/**
 * Blocks a fleet's own subnet must not overlap: addresses that are not one host's on a link. A
 * fleet there would shadow the host's loopback, collide with the link-local /30s of shoal's NAT
 * links (and cloud metadata, 169.254.169.254), or hand out addresses no stack sends to.
 */
const NOT_FOR_FLEETS: readonly [string, number, string][] = [
  ["0.0.0.0", 8, "the range of this network (RFC 1122), which is no host's"],
  ["127.0.0.0", 8, "the loopback range"],
  ["169.254.0.0", 16, "the link-local range, which shoal's NAT links and cloud metadata use"],
  ["224.0.0.0", 4, "the multicast range"],
  ["240.0.0.0", 4, "the reserved range, with the broadcast address 255.255.255.255"],
];

/** Why a subnet cannot be a fleet's network, or undefined when it can. */
export function checkFleetSubnet(network: number, prefix: number): string | undefined {
  const subnet = makeSubnet(network, prefix);
  for (const [address, blockPrefix, what] of NOT_FOR_FLEETS) {
    const block = makeSubnet(parseIpv4(address) ?? 0, blockPrefix);
    if (!subnetsOverlap(subnet, block)) continue;
    const relation = prefix >= blockPrefix ? "is in" : "holds";
    return `${subnet.cidr} ${relation} ${block.cidr}, ${what}; use a private range such as 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16`;
  }
  return undefined;
}

/**
 * An address block as `network.allow` takes it: `A.B.C.D/N` (N from 0 to 32, no host bits set),
 * or a bare address, which is its /32. The result is in CIDR form.
 */
export function parseAddressBlock(
  text: string,
): { ok: true; cidr: string } | { ok: false; message: string } {
  const parts = splitCidr(text.includes("/") ? text : `${text}/32`);
  if (parts === undefined) {
    return {
      ok: false,
      message: `${quoted(text)} is not an IPv4 address or block like 192.0.2.10 or 10.0.0.0/8`,
    };
  }
  const network = networkOf(parts.base, parts.prefix);
  if (network !== parts.base) {
    return {
      ok: false,
      message: `${text} has host bits set; the block is ${formatIpv4(network)}/${parts.prefix}`,
    };
  }
  return { ok: true, cidr: `${formatIpv4(network)}/${parts.prefix}` };
}

function networkOf(address: number, prefix: number): number {
  const hostBits = 32 - prefix;
  return Math.floor(address / 2 ** hostBits) * 2 ** hostBits;
}

/** The netmask of a prefix length as a number: 24 -> 255.255.255.0. */
export function prefixMask(prefix: number): number {
  return 2 ** 32 - 2 ** (32 - prefix);
}

export function contains(network: number, prefix: number, address: number): boolean {
  return networkOf(address, prefix) === network;
}

/** The gateway defaults to the first host address, as on most routers and in libvirt. */
export function makeSubnet(network: number, prefix: number, gateway: number = network + 1): Subnet {
  const broadcast = network + 2 ** (32 - prefix) - 1;
  return {
    cidr: `${formatIpv4(network)}/${prefix}`,
    prefix,
    network,
    broadcast,
    gateway,
    capacity: broadcast - network - 2,
  };
}

/** Whether two subnets share any address (one holds the other, or they are the same). */
export function subnetsOverlap(
  a: Pick<Subnet, "network" | "broadcast">,
  b: Pick<Subnet, "network" | "broadcast">,
): boolean {
  return a.network <= b.broadcast && b.network <= a.broadcast;
}

export function slotAddress(subnet: Subnet, slot: number): number {
  const address = subnet.network + slot;
  return address >= subnet.gateway ? address + 1 : address;
}

/** The slot of a host address; undefined for the network, broadcast and gateway addresses. */
export function addressSlot(subnet: Subnet, address: number): number | undefined {
  if (address <= subnet.network || address >= subnet.broadcast || address === subnet.gateway) {
    return undefined;
  }
  return address > subnet.gateway ? address - subnet.network - 1 : address - subnet.network;
}

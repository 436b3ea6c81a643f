import ipaddr from "ipaddr.js";

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

export function parseCidr(text: string): CidrResult {
  const [address, prefixText, ...rest] = text.split("/");
  const base = address === undefined ? undefined : parseIpv4(address);
  if (
    base === undefined ||
    prefixText === undefined ||
    rest.length > 0 ||
    !/^\d{1,2}$/.test(prefixText)
  ) {
    return { ok: false, message: `"${text}" is not an IPv4 subnet in CIDR form like 10.77.0.0/16` };
  }
  const prefix = Number(prefixText);
  if (prefix > 32) {
    return { ok: false, message: `"${text}" is not an IPv4 subnet in CIDR form like 10.77.0.0/16` };
  }
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

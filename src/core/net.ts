import { createHash } from "node:crypto";
import { formatIpv4 } from "./ipv4.js";
import { isDnsLabel } from "./names.js";
import { assertRenderable } from "./syntax.js";

/**
 * Names of a fleet's isolated network. Each fleet has its own network namespace, so the bridge and
 * tap names only need to be unique inside it.
 */

/** Linux bridges take at most 1024 ports, numbered 1..1023. */
export const MAX_BRIDGE_PORTS = 1023;

export const FLEET_BRIDGE = "shoal0";

export function namespaceName(fleet: string): string {
  assertRenderable("fleet name", fleet, isDnsLabel(fleet));
  return `shoal-${fleet}`;
}

/** A VM's tap device, by its address slot: unique in the fleet and at most 15 bytes. */
export function tapName(index: number): string {
  assertRenderable(
    "address slot",
    String(index),
    Number.isInteger(index) && index > 0 && index < 2 ** 24,
  );
  return `tap${index}`;
}

/** The owner of a tap device as `ip -details -json link show` reports it (a name, or a uid). */
export function tapOwner(json: string): string | undefined {
  const links: unknown = JSON.parse(json);
  const link = Array.isArray(links) ? (links[0] as Record<string, unknown> | undefined) : undefined;
  const info = link?.linkinfo as { info_data?: { user?: unknown } } | undefined;
  const user = info?.info_data?.user;
  return typeof user === "string" || typeof user === "number" ? String(user) : undefined;
}

/** A short tag of the fleet for host-wide interface names, which take at most 15 bytes. */
export function fleetTag(fleet: string): string {
  assertRenderable("fleet name", fleet, isDnsLabel(fleet));
  return `s${createHash("sha256").update(fleet).digest("hex").slice(0, 5)}`;
}

/** A VM's tap device on a bridge of the host's: the fleet's tag and the VM's slot. */
export function hostTapName(fleet: string, index: number): string {
  return `${fleetTag(fleet)}-${tapName(index).slice("tap".length)}`;
}

/** A command run inside a fleet's network namespace, or as it is without one. */
export function inNamespace(
  namespace: string | undefined,
  argv: readonly [string, ...string[]],
): [string, ...string[]] {
  if (namespace === undefined) return [...argv];
  assertRenderable("namespace", namespace, /^shoal-[a-z0-9-]{1,63}$/.test(namespace));
  return ["ip", "netns", "exec", namespace, ...argv];
}

/**
 * A NATed fleet's link to the host: a veth pair on a link-local /30 of the fleet's own, picked by
 * a hash of its name (169.254.169.252/30, which holds cloud metadata's address, is skipped).
 */
export interface NatLink {
  /** The veth end in the host's namespace. */
  readonly hostSide: string;
  /** The veth end in the fleet's namespace. */
  readonly fleetSide: string;
  readonly hostAddress: string;
  readonly fleetAddress: string;
  /** The /30 in CIDR notation. */
  readonly transit: string;
  /** The nftables table (in both namespaces) holding the fleet's NAT rules. */
  readonly table: string;
}

const LINK_LOCAL = (169 << 24) | (254 << 16);
const METADATA_BLOCK = (169 << 8) | 252;

export function natLink(fleet: string): NatLink {
  assertRenderable("fleet name", fleet, isDnsLabel(fleet));
  const hash = createHash("sha256").update(`nat\0${fleet}`).digest();
  // Blocks 1..16382 of the 16384 /30s in 169.254.0.0/16: neither the first nor the last.
  let block = (hash.readUInt16BE(0) % 16382) + 1;
  if (block * 4 === METADATA_BLOCK) block += 1;
  const base = (LINK_LOCAL + block * 4) >>> 0;
  return {
    hostSide: `${fleetTag(fleet)}-nat`,
    fleetSide: "uplink",
    hostAddress: formatIpv4(base + 1),
    fleetAddress: formatIpv4(base + 2),
    transit: `${formatIpv4(base)}/30`,
    table: `shoal_${fleet.replaceAll("-", "_")}`,
  };
}

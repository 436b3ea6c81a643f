import { createHash } from "node:crypto";
import { formatIpv4 } from "./ipv4.js";
import { isDnsLabel } from "./names.js";
import { assertRenderable, isSafePath } from "./syntax.js";

/**
 * Names of a fleet's network and the marks that say whose it is. Each fleet has its own network
 * namespace, so the bridge and tap names only need to be unique inside it; what lives in the
 * host's own namespace (the namespace's name, the NAT veth, the NAT nft table, taps on a host
 * bridge) is named after a hash of the owner, so that the same fleet name in two state
 * directories gets two sets of names.
 */

/** Linux bridges take at most 1024 ports, numbered 1..1023. */
export const MAX_BRIDGE_PORTS = 1023;

export const FLEET_BRIDGE = "shoal0";

/**
 * A fleet's own network is one L2 of several bridges in its namespace: shoal0, with the gateway,
 * and up to 23 more, each joined to shoal0 by a veth pair. Each holds at most this many taps, so
 * that shoal0 keeps a port for every other bridge.
 */
export const TAPS_PER_BRIDGE = 1000;
export const MAX_FLEET_BRIDGES = 1 + MAX_BRIDGE_PORTS - TAPS_PER_BRIDGE;
export const MAX_FLEET_VMS = TAPS_PER_BRIDGE * MAX_FLEET_BRIDGES;

/** How many VMs a fleet's network takes, and why no more: a host bridge is one bridge. */
export function fleetVmLimit(onHostBridge: boolean): {
  readonly max: number;
  readonly why: string;
} {
  return onHostBridge
    ? { max: MAX_BRIDGE_PORTS, why: `a host bridge takes at most ${MAX_BRIDGE_PORTS} VMs` }
    : {
        max: MAX_FLEET_VMS,
        why: `a fleet's own network takes at most ${MAX_FLEET_VMS} VMs (${MAX_FLEET_BRIDGES} bridges of ${TAPS_PER_BRIDGE})`,
      };
}

function checkBridgeNumber(bridge: number): void {
  assertRenderable(
    "bridge number",
    String(bridge),
    Number.isInteger(bridge) && bridge >= 0 && bridge < MAX_FLEET_BRIDGES,
  );
}

/** The name of a bridge of a fleet's own network, by its number (0: the one with the gateway). */
export function fleetBridgeName(bridge: number): string {
  checkBridgeNumber(bridge);
  return bridge === 0 ? FLEET_BRIDGE : `shoal${bridge}`;
}

/** The veth pair joining a bridge to shoal0: one end a port of each. */
export function bridgeLink(bridge: number): { readonly own: string; readonly trunk: string } {
  checkBridgeNumber(bridge);
  if (bridge === 0) throw new Error("internal: shoal0 is the trunk, joined to nothing");
  return { own: `shoal${bridge}-up`, trunk: `shoal${bridge}-dn` };
}

/**
 * The bridges for `count` new VMs, each on the first bridge with room; `placed` holds the bridge
 * of every VM already there. Undefined when they do not fit.
 */
export function placeOnBridges(placed: readonly number[], count: number): number[] | undefined {
  const taps = new Array<number>(MAX_FLEET_BRIDGES).fill(0);
  for (const bridge of placed) taps[bridge] = (taps[bridge] ?? 0) + 1;
  const bridges: number[] = [];
  let bridge = 0;
  while (bridges.length < count) {
    while (bridge < MAX_FLEET_BRIDGES && (taps[bridge] ?? 0) >= TAPS_PER_BRIDGE) bridge++;
    if (bridge === MAX_FLEET_BRIDGES) return undefined;
    taps[bridge] = (taps[bridge] ?? 0) + 1;
    bridges.push(bridge);
  }
  return bridges;
}

/** Who a host-wide object belongs to: a fleet of one state directory (its root path). */
export interface Owner {
  readonly root: string;
  readonly fleet: string;
}

function ownerDigest(owner: Owner): Buffer {
  assertRenderable("fleet name", owner.fleet, isDnsLabel(owner.fleet));
  assertRenderable("state directory", owner.root, isSafePath(owner.root));
  return createHash("sha256").update(`${owner.root}\0${owner.fleet}`).digest();
}

/** The fleet's network namespace: `shoal-FLEET-` and 8 hex digits of the owner's hash. */
export function namespaceName(owner: Owner): string {
  return `shoal-${owner.fleet}-${ownerDigest(owner).toString("hex").slice(0, 8)}`;
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

/**
 * A short tag of the owner for interface names in the host's namespace, which take at most 15
 * bytes: room for 5 hex digits beside a slot of up to 8 digits.
 */
export function fleetTag(owner: Owner): string {
  return `s${ownerDigest(owner).toString("hex").slice(0, 5)}`;
}

/** A VM's tap device on a bridge of the host's: the owner's tag and the VM's slot. */
export function hostTapName(owner: Owner, index: number): string {
  return `${fleetTag(owner)}-${tapName(index).slice("tap".length)}`;
}

/** The ifb device carrying what a VM sends, for its impairments, in the fleet's own namespace. */
export function ifbName(index: number): string {
  return `ifb${tapName(index).slice("tap".length)}`;
}

/** The same on a bridge of the host's: the owner's tag and the VM's slot. */
export function hostIfbName(owner: Owner, index: number): string {
  return `${fleetTag(owner)}_${tapName(index).slice("tap".length)}`;
}

/** Whether a device in the host's namespace has the name of one of the owner's taps or ifbs. */
export function isHostDeviceOf(owner: Owner, device: string): boolean {
  const tag = fleetTag(owner);
  return new RegExp(`^${tag}[-_][0-9]{1,8}$`).test(device);
}

/** VXLAN's UDP port (IANA), which joins the hosts of a fleet over several. */
export const VXLAN_PORT = 4789;

/** The bridge table of a fleet's impairments in its own namespace. */
export const IMPAIR_TABLE = "shoal_impair";

/** The same in the host's namespace, beside other fleets' and programs' tables. */
export function hostImpairTable(owner: Owner): string {
  return `${IMPAIR_TABLE}_${fleetTag(owner)}`;
}

/** A command run inside a fleet's network namespace, or as it is without one. */
export function inNamespace(
  namespace: string | undefined,
  argv: readonly [string, ...string[]],
): [string, ...string[]] {
  if (namespace === undefined) return [...argv];
  assertRenderable("namespace", namespace, /^shoal-[a-z0-9-]{1,72}$/.test(namespace));
  return ["ip", "netns", "exec", namespace, ...argv];
}

/**
 * A NATed fleet's link to the host: a veth pair on a link-local /30 of the fleet's own, picked by
 * the owner's hash (169.254.169.252/30, which holds cloud metadata's address, is skipped).
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

export function natLink(owner: Owner): NatLink {
  const digest = ownerDigest(owner);
  // Blocks 1..16382 of the 16384 /30s in 169.254.0.0/16: neither the first nor the last.
  let block = (digest.readUInt16BE(4) % 16382) + 1;
  if (block * 4 === METADATA_BLOCK) block += 1;
  const base = (LINK_LOCAL + block * 4) >>> 0;
  return {
    hostSide: `${fleetTag(owner)}-nat`,
    fleetSide: "uplink",
    hostAddress: formatIpv4(base + 1),
    fleetAddress: formatIpv4(base + 2),
    transit: `${formatIpv4(base)}/30`,
    table: `shoal_${owner.fleet.replaceAll("-", "_")}_${digest.toString("hex").slice(0, 8)}`,
  };
}

/**
 * Owner marks: the text shoal puts on what it makes in the host (an interface's alias, an nft
 * table's comment) and checks before it uses or removes it. A state directory whose path does
 * not fit the place (interface aliases take 255 bytes, nft comments 128) is marked by a digest
 * of its path instead, which still tells ours from not ours but cannot name the other.
 */
export const ALIAS_MAX = 255;
export const NFT_COMMENT_MAX = 128;

export function ownerMark(owner: Owner, max: number): string {
  const named = `shoal owner=${owner.root} fleet=${owner.fleet}`;
  if (Buffer.byteLength(named) <= max) return named;
  return `shoal owner-sha256=${ownerDigest(owner).toString("hex").slice(0, 32)} fleet=${owner.fleet}`;
}

/** Whose an object is, from its mark (absent or empty: no mark). */
export type Ownership =
  | { readonly kind: "ours" }
  | { readonly kind: "unmarked" }
  | { readonly kind: "other"; readonly root?: string; readonly fleet?: string };

/** A host-wide object looked for under one of shoal's names: not there, or whose it is. */
export type Found = { readonly kind: "absent" } | Ownership;

const MARK =
  /^shoal owner(?:=(\/[A-Za-z0-9._+@~/-]*)|-sha256=[0-9a-f]{32}) fleet=([a-z0-9-]{1,63})$/;

export function ownershipOf(mark: string | undefined, owner: Owner, max: number): Ownership {
  if (mark === undefined || mark === "") return { kind: "unmarked" };
  if (mark === ownerMark(owner, max)) return { kind: "ours" };
  const [, root, fleet] = MARK.exec(mark) ?? [];
  return {
    kind: "other",
    ...(root === undefined ? {} : { root }),
    ...(fleet === undefined ? {} : { fleet }),
  };
}

/**
 * Why shoal refuses an object of one of its names that is not this state directory's: the
 * message names it and whose it is, the hint what the user can do.
 */
export function notOursProblem(
  what: string,
  ownership: Exclude<Ownership, { kind: "ours" }>,
): { readonly message: string; readonly hint: string } {
  if (ownership.kind === "unmarked") {
    return {
      message: `${what} exists without shoal's owner mark: another program made it, or a shoal before owner marks`,
      hint: "shoal neither uses nor removes it; remove it yourself if it is a leftover",
    };
  }
  const fleet = ownership.fleet === undefined ? "" : ` (fleet ${ownership.fleet})`;
  return {
    message:
      ownership.root === undefined
        ? `${what} belongs to another shoal state directory${fleet}, not this one`
        : `${what} belongs to state directory ${ownership.root}${fleet}, not this one`,
    hint:
      ownership.root === undefined
        ? "shoal neither uses nor removes it; manage it from its own state directory"
        : `shoal neither uses nor removes it; manage it with \`shoal --state-dir ${ownership.root}\``,
  };
}

/** The host's neighbour (ARP) table limits: net.ipv4.neigh.default.gc_thresh2 and gc_thresh3. */
export interface NeighbourLimits {
  readonly soft: number;
  readonly hard: number;
}

/** What Linux sets (gc_thresh2 512, gc_thresh3 1024): the room the host's own links keep. */
const NEIGHBOUR_ROOM = 1024;

/**
 * Limits that leave every VM of a fleet an entry at its gateway beside what the host had room for
 * (one table serves every namespace); undefined when the host's suffice. Never lowered.
 */
export function neighbourLimitsFor(
  vms: number,
  host: NeighbourLimits,
): NeighbourLimits | undefined {
  const hard = vms + NEIGHBOUR_ROOM;
  if (host.hard >= hard) return undefined;
  return { soft: Math.max(host.soft, Math.ceil(hard / 2)), hard };
}

import { readdir } from "node:fs/promises";
import type { NetworkMode } from "../core/fleet.js";
import {
  formatIpv4,
  makeSubnet,
  parseCidr,
  parseIpv4,
  type Subnet,
  subnetsOverlap,
} from "../core/ipv4.js";
import { fleetTag, natLink } from "../core/net.js";
import { ShoalError, UserError } from "../errors.js";
import { ifExists } from "../host/paths.js";
import { raiseNeighbourLimits } from "../net/neighbours.js";
import { type FleetRecord, readFleetRecord } from "../state/store.js";
import { applyImpairments } from "./impairments.js";
import { type FleetSession, modeOfRecord, ownerOf } from "./session.js";

/**
 * Records the fleet's network, which it is built from. Its VMs cannot move between the fleet's
 * own network and a host bridge in place (their taps and QEMU's namespace are set at creation);
 * on host bridges, whose addresses share the host's routing, fleets' subnets must not overlap.
 */
export async function recordNetwork(
  session: FleetSession,
  subnet: Subnet,
  mode: NetworkMode,
  options: { readonly willStart: boolean },
): Promise<void> {
  const network: NonNullable<FleetRecord["network"]> = {
    subnet: subnet.cidr,
    gateway: formatIpv4(subnet.gateway),
    ...(mode.kind === "host-bridge"
      ? { bridge: mode.bridge }
      : mode.nat
        ? { nat: true, ...(mode.allow === undefined ? {} : { allow: [...mode.allow] }) }
        : {}),
  };
  const recorded = session.book.record.network;
  const where = (bridge: string | undefined) =>
    bridge === undefined ? "its own network" : `host bridge ${bridge}`;
  if (recorded?.bridge !== network.bridge && Object.keys(session.book.record.vms).length > 0) {
    throw new UserError(
      `fleet ${session.fleet}'s VMs are on ${where(recorded?.bridge)}; network.bridge cannot move them to ${where(network.bridge)} in place`,
      "`shoal destroy` the fleet first, or keep network.bridge as it was",
    );
  }
  await checkOtherFleets(session, subnet, mode);
  // A missing bridge, or a namespace another state directory or program holds under the
  // fleet's names, is found before any VM is made, not when each one fails to start.
  if (options.willStart) {
    const fleetNetwork = session.networkIn(mode);
    await fleetNetwork.checkBridge();
    await fleetNetwork.checkOwned();
  }
  if (JSON.stringify(recorded) === JSON.stringify(network)) return;
  await session.book.update((record) => {
    record.network = network;
  });
}

/**
 * What this fleet puts into the host's namespace must not clash with another fleet's: subnets of
 * fleets on host bridges (shared routing), and the host-wide names and NAT links made from a
 * short hash of the fleet's name (a collision is unlikely, but would break both fleets quietly).
 */
async function checkOtherFleets(
  session: FleetSession,
  subnet: Subnet,
  mode: NetworkMode,
): Promise<void> {
  const inHost = (kind: NetworkMode) => kind.kind === "host-bridge" || kind.nat;
  if (!inHost(mode)) return;
  const owner = (fleet: string) => ownerOf(session.layout, fleet);
  const others = (await ifExists(readdir(session.layout.fleets))) ?? [];
  for (const other of others.filter((name) => name !== session.fleet).sort()) {
    const network = (await otherRecord(session, other))?.network;
    if (!network) continue;
    const theirs = modeOfRecord(network);
    const cidr = parseCidr(network.subnet);
    if (
      mode.kind === "host-bridge" &&
      theirs.kind === "host-bridge" &&
      cidr.ok &&
      subnetsOverlap(subnet, makeSubnet(cidr.network, cidr.prefix))
    ) {
      throw new UserError(
        `network.subnet ${subnet.cidr} overlaps fleet ${other}'s ${network.subnet} on host bridge ${theirs.bridge}`,
        "fleets on host bridges share the host's routing and DHCP: give each its own subnet",
      );
    }
    const clash =
      inHost(theirs) &&
      (fleetTag(owner(other)) === fleetTag(owner(session.fleet)) ||
        (mode.kind === "isolated" &&
          theirs.kind === "isolated" &&
          natLink(owner(other)).transit === natLink(owner(session.fleet)).transit));
    if (clash) {
      throw new UserError(
        `fleet names ${session.fleet} and ${other} hash to the same host interface names or NAT link`,
        "rename one of the fleets",
      );
    }
  }
}

/**
 * Another fleet's record, for the clash checks; one this shoal cannot read is that fleet's problem
 * (its own commands name it), not a reason to refuse this one, so it is passed over with a notice.
 */
async function otherRecord(session: FleetSession, other: string): Promise<FleetRecord | undefined> {
  try {
    return await readFleetRecord(session.layout, other);
  } catch (error) {
    if (!(error instanceof ShoalError)) throw error;
    session.notice(`fleet ${other} was not checked for clashes with this one: ${error.message}`);
    return undefined;
  }
}

const networkReady = new WeakMap<FleetSession, Promise<void>>();

/**
 * The fleet's network with a reservation for every VM the record holds, made or repaired once
 * per command (a host reboot removes the namespace; dnsmasq may have died).
 */
export function ensureNetwork(session: FleetSession): Promise<void> {
  let ready = networkReady.get(session);
  if (!ready) {
    ready = (async () => {
      const recorded = session.book.record.network;
      const cidr = recorded ? parseCidr(recorded.subnet) : undefined;
      const gateway = recorded ? parseIpv4(recorded.gateway) : undefined;
      if (!cidr?.ok || gateway === undefined) {
        throw new ShoalError(`fleet ${session.fleet} has no network recorded`, {
          hint: "`shoal up` with its fleet file records it",
        });
      }
      const vms = Object.values(session.book.record.vms).map((entry) => entry.spec);
      await session.network.ensure({
        fleet: session.fleet,
        subnet: makeSubnet(cidr.network, cidr.prefix, gateway),
        vms,
      });
      if (session.network.namespace !== undefined) {
        await session.backend.joinNetwork?.(session.fleet, session.network.namespace);
      }
      await applyImpairments(session);
      if (session.network.namespace !== undefined) {
        const raised = await raiseNeighbourLimits(session.runner, vms.length);
        if (raised) {
          session.notice(
            `raised this host's neighbour table to ${raised.hard} entries (net.ipv4.neigh.default.gc_thresh3) for fleet ${session.fleet}'s ${vms.length} VMs`,
          );
        }
      }
    })();
    networkReady.set(session, ready);
  }
  return ready;
}

import { createHash } from "node:crypto";
import { lookup } from "node:dns/promises";
import * as z from "zod";
import type { HostSpec } from "../core/hosts.js";
import {
  ALIAS_MAX,
  FLEET_BRIDGE,
  fleetTag,
  type Owner,
  ownerMark,
  ownershipOf,
  VXLAN_PORT,
} from "../core/net.js";
import { type HostUnreachable, ShoalError } from "../errors.js";
import { onEachHost, runnerOn } from "../host/remote.js";
import type { Runner } from "../host/runner.js";
import { ipLinks, refuseUnlessOurs } from "./network.js";

/**
 * A fleet over libvirt hosts is one L2: the fleet's own network on this machine (its namespace,
 * shoal0, dnsmasq with every VM's reservation and DNS name), and on each host a bridge of the
 * fleet's where libvirt puts the VMs' taps. A local host's bridge is joined to shoal0 by a veth
 * pair; remote hosts by VXLAN (one VNI per fleet, UDP 4789, unicast to every other end: no
 * multicast in the underlay), each end sending what it floods to all the others.
 */

/** What VXLAN over IPv4 leaves of a 1500-byte underlay: the VMs' MTU. */
export const OVERLAY_MTU = 1450;

/** The fleet's VXLAN network identifier, from its owner (24 bits, never 0). */
export function fleetVni(owner: Owner): number {
  const digest = createHash("sha256").update(`${owner.root}\0${owner.fleet}`).digest();
  return (digest.readUIntBE(0, 3) % 0xfffffe) + 1;
}

export function hostLinkNames(owner: Owner) {
  const tag = fleetTag(owner);
  return {
    /** On each host: the bridge libvirt puts the taps on. */
    bridge: `${tag}-br`,
    /** On each remote host, and in the fleet's namespace here: the VXLAN device. */
    vxlan: `${tag}-vx`,
    /** A local host's veth pair: on its bridge, and on shoal0 in the fleet's namespace. */
    hostVeth: `${tag}-lh`,
    fleetVeth: `${tag}-lf`,
  } as const;
}

const fdbEntries = z.array(z.object({ mac: z.string(), dst: z.string().optional() }));

/** Runs `ip`/`bridge` in one place: a host (over ssh unless local) or the fleet's namespace here. */
interface Place {
  readonly runner: Runner;
  readonly namespace?: string;
}

function argv(place: Place, tool: "ip" | "bridge", args: readonly string[]): [string, ...string[]] {
  return place.namespace === undefined ? [tool, ...args] : [tool, "-n", place.namespace, ...args];
}

export class FleetHostLinks {
  private readonly names: ReturnType<typeof hostLinkNames>;
  private readonly fleetPlace: Place;

  constructor(
    private readonly runner: Runner,
    private readonly owner: Owner,
    /** The fleet's own network namespace on this machine. */
    private readonly namespace: string,
    private readonly hosts: readonly HostSpec[],
  ) {
    this.names = hostLinkNames(owner);
    this.fleetPlace = { runner, namespace };
  }

  private place(host: HostSpec): Place {
    return { runner: runnerOn(this.runner, host) };
  }

  private static isLocal(host: HostSpec): boolean {
    return host.hostname === undefined;
  }

  private async link(place: Place, name: string) {
    const shown = await place.runner.run({
      argv: argv(place, "ip", ["-j", "link", "show", "dev", name]),
      probe: true,
      okCodes: [1],
    });
    return shown.code === 0 ? ipLinks.parse(JSON.parse(shown.stdout || "[]"))[0] : undefined;
  }

  private ip(place: Place, ...args: string[]) {
    return place.runner.run({ argv: argv(place, "ip", args) });
  }

  /** A link of shoal's name at `place`, made if absent (by `make`), refused if not this owner's. */
  private async ensureLink(
    place: Place,
    where: string,
    name: string,
    make: () => Promise<unknown>,
  ): Promise<void> {
    const found = await this.link(place, name);
    if (found !== undefined) {
      refuseUnlessOurs(
        `interface ${name} on ${where}`,
        ownershipOf(found.ifalias, this.owner, ALIAS_MAX),
      );
      return;
    }
    await make();
    await this.ip(place, "link", "set", "dev", name, "alias", ownerMark(this.owner, ALIAS_MAX));
  }

  /** The VXLAN endpoints' addresses: each remote host's, and this machine's as they reach it. */
  private async endpoints(): Promise<{ here: string; hosts: Map<string, string> }> {
    const hosts = new Map<string, string>();
    for (const host of this.hosts.filter((entry) => !FleetHostLinks.isLocal(entry))) {
      const address =
        host.address ??
        (await lookup(host.hostname ?? "", { family: 4 }).then(
          (found) => found.address,
          () => {
            throw new ShoalError(
              `host ${host.name}'s name ${host.hostname} has no IPv4 address here`,
              {
                hint: "give the host an address: in hosts:",
              },
            );
          },
        ));
      hosts.set(host.name, address);
    }
    const first = hosts.values().next().value;
    if (first === undefined) return { here: "", hosts };
    const route = await this.runner.run({ argv: ["ip", "-j", "route", "get", first] });
    const [found] = z.array(z.object({ prefsrc: z.string() })).parse(JSON.parse(route.stdout));
    if (found === undefined)
      throw new ShoalError(`this machine has no route to host address ${first}`);
    return { here: found.prefsrc, hosts };
  }

  /** The flood list of a VXLAN device: exactly these remote ends. */
  private async setPeers(place: Place, peers: readonly string[]): Promise<void> {
    const device = this.names.vxlan;
    const shown = await place.runner.run({
      argv: argv(place, "bridge", ["-j", "fdb", "show", "dev", device]),
    });
    const flooded = fdbEntries
      .parse(JSON.parse(shown.stdout || "[]"))
      .flatMap((entry) =>
        entry.mac === "00:00:00:00:00:00" && entry.dst !== undefined ? [entry.dst] : [],
      );
    const changes = [
      ...peers
        .filter((peer) => !flooded.includes(peer))
        .map((dst) => `fdb append 00:00:00:00:00:00 dev ${device} dst ${dst}`),
      ...flooded
        .filter((dst) => !peers.includes(dst))
        .map((dst) => `fdb del 00:00:00:00:00:00 dev ${device} dst ${dst}`),
    ];
    if (changes.length === 0) return;
    await place.runner.run({
      argv: argv(place, "bridge", ["-batch", "-"]),
      input: `${changes.join("\n")}\n`,
    });
  }

  private vxlanArgs(name: string): string[] {
    return [
      "link",
      "add",
      name,
      "type",
      "vxlan",
      "id",
      String(fleetVni(this.owner)),
      "dstport",
      String(VXLAN_PORT),
    ];
  }

  /**
   * Makes or repairs each host's bridge and its link to the fleet's network. Hosts that cannot be
   * reached are left as they are and returned, for the caller to say so.
   */
  async ensure(): Promise<HostUnreachable[]> {
    const { here, hosts } = await this.endpoints();
    const { vxlan } = this.names;
    if (hosts.size > 0) {
      // Made in this machine's namespace, where its underlay is, and moved into the fleet's: it
      // keeps sending from here.
      await this.ensureLink(this.fleetPlace, "the fleet's network", vxlan, async () => {
        const machine: Place = { runner: this.runner };
        // One a killed run made here but did not move yet is moved now.
        await this.ensureLink(machine, "this machine", vxlan, () =>
          this.ip(machine, ...this.vxlanArgs(vxlan)),
        );
        await this.ip(machine, "link", "set", vxlan, "netns", this.namespace);
      });
      await this.ip(this.fleetPlace, "link", "set", vxlan, "master", FLEET_BRIDGE, "up");
      await this.setPeers(this.fleetPlace, [...hosts.values()]);
    }
    return onEachHost(this.hosts, (host) => this.ensureOnHost(host, here, hosts));
  }

  /**
   * One host's bridge and its link to the fleet's network: its links read once, what is missing
   * made in one `ip -batch` (a command over SSH costs a session each).
   */
  private async ensureOnHost(
    host: HostSpec,
    here: string,
    endpoints: ReadonlyMap<string, string>,
  ): Promise<void> {
    const place = this.place(host);
    const { bridge, vxlan, hostVeth, fleetVeth } = this.names;
    const local = FleetHostLinks.isLocal(host);
    const link = local ? hostVeth : vxlan;
    const listed = await place.runner.run({ argv: ["ip", "-j", "link", "show"] });
    const links = ipLinks.parse(JSON.parse(listed.stdout || "[]"));
    const missing = [bridge, link].filter((name) => {
      const found = links.find((entry) => entry.ifname === name);
      if (found === undefined) return true;
      refuseUnlessOurs(
        `interface ${name} on host ${host.name}`,
        ownershipOf(found.ifalias, this.owner, ALIAS_MAX),
      );
      return false;
    });
    const mark = JSON.stringify(ownerMark(this.owner, ALIAS_MAX));
    const adds = missing.flatMap((name) => [
      name === bridge
        ? `link add ${bridge} type bridge`
        : local
          ? `link add ${hostVeth} type veth peer name ${fleetVeth} netns ${this.namespace}`
          : this.vxlanArgs(vxlan).join(" "),
      `link set dev ${name} alias ${mark}`,
    ]);
    await place.runner.run({
      argv: ["ip", "-batch", "-"],
      input: [
        ...adds,
        `link set ${bridge} mtu ${OVERLAY_MTU} up`,
        `link set ${link} master ${bridge} up`,
        "",
      ].join("\n"),
    });
    if (local) {
      await this.ip(this.fleetPlace, "link", "set", fleetVeth, "master", FLEET_BRIDGE, "up");
      return;
    }
    const own = endpoints.get(host.name);
    await this.setPeers(place, [
      here,
      ...[...endpoints.values()].filter((address) => address !== own),
    ]);
  }

  /** Removes each host's bridge and link of the fleet, where they are this owner's. */
  async remove(): Promise<void> {
    const { bridge, vxlan, hostVeth } = this.names;
    for (const host of this.hosts) {
      const place = this.place(host);
      for (const name of [hostVeth, vxlan, bridge]) {
        const found = await this.link(place, name);
        if (found && ownershipOf(found.ifalias, this.owner, ALIAS_MAX).kind === "ours") {
          await this.ip(place, "link", "del", name);
        }
      }
    }
  }
}

// Over 400 lines: one object, a fleet's network (namespace, bridge, dnsmasq, NAT, taps), whose
// parts share its ownership checks; the renderers and the pure rules are in core/.

import { mkdir, readFile, rm, stat } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import * as z from "zod";
import { QEMU_USER } from "../backends/qemu/render.js";
import type { CheckResult } from "../core/doctor.js";
import type { NetworkMode, VmIdentity } from "../core/fleet.js";
import type { Subnet } from "../core/ipv4.js";
import { formatIpv4 } from "../core/ipv4.js";
import {
  ALIAS_MAX,
  bridgeLink,
  FLEET_BRIDGE,
  type Found,
  fleetBridgeName,
  hostTapName,
  inNamespace,
  type NatLink,
  NFT_COMMENT_MAX,
  namespaceName,
  natLink,
  notOursProblem,
  type Owner,
  ownerMark,
  ownershipOf,
  tapName,
  tapOwner,
} from "../core/net.js";
import { renderDhcpHosts, renderDnsHosts, renderDnsmasqConf } from "../core/render/dnsmasq.js";
import { hostBridgeNaming, type ImpairNaming, ownNetworkNaming } from "../core/render/impair.js";
import {
  parseTableComment,
  renderFleetNat,
  renderHostNat,
  renderNatRemoval,
  upstreamNameservers,
} from "../core/render/nft.js";
import { ShoalError, UserError } from "../errors.js";
import { ifExists, ifProcessExists, pathExists, requireReachable } from "../host/paths.js";
import { CommandFailed, type Runner } from "../host/runner.js";
import { writeFileAtomic } from "../state/atomic.js";
import type { NetworkPaths } from "../state/layout.js";

const DNSMASQ_START_MS = 5000;

export interface FleetNetworkSpec {
  readonly fleet: string;
  readonly subnet: Subnet;
  readonly vms: readonly Pick<VmIdentity, "name" | "hostname" | "mac" | "ip">[];
}

/**
 * A fleet's isolated network: a network namespace of its own holding a bridge with the gateway
 * address, one tap per VM and a dnsmasq serving the fleet's reservations. Nothing of it is in the
 * host's own namespace, so the host's routing never changes and fleets cannot see each other.
 * Every step checks what is there first, so a run cut short is finished by the next.
 */
/**
 * Where the host's DNS servers are: systemd-resolved's list of its real upstream servers first
 * (the host's resolv.conf then names 127.0.0.53, which a fleet's namespace cannot reach).
 */
const RESOLV_CONFS = ["/run/systemd/resolve/resolv.conf", "/etc/resolv.conf"];

export async function hostNameservers(): Promise<string[]> {
  for (const path of RESOLV_CONFS) {
    const servers = upstreamNameservers((await ifExists(readFile(path, "utf8"))) ?? "");
    if (servers.length > 0) return servers;
  }
  return [];
}

/** Refuses a host-wide object of one of shoal's names that is there and not this state directory's. */
export function refuseUnlessOurs(what: string, found: Found): void {
  if (found.kind === "absent" || found.kind === "ours") return;
  const { message, hint } = notOursProblem(what, found);
  throw new UserError(message, hint);
}

/** `ip -j link show` / `ip -j addr show`: the fields shoal reads. */
export const ipLinks = z.array(
  z.object({
    ifname: z.string(),
    ifalias: z.string().optional(),
  }),
);

export class FleetNetwork {
  /** The fleet's own namespace; undefined on a host bridge, which is in the host's. */
  readonly namespace: string | undefined;
  /** The bridges joined to shoal0 in this command, each made once even when VMs start at once. */
  private readonly joined = new Map<number, Promise<void>>();

  constructor(
    private readonly runner: Runner,
    readonly paths: NetworkPaths,
    readonly owner: Owner,
    readonly mode: NetworkMode,
    /** `vif`: Xen's interfaces, made in the host's namespace first and named to be unique there. */
    private readonly nicKind: "tap" | "vif" = "tap",
  ) {
    this.namespace = mode.kind === "isolated" ? namespaceName(owner) : undefined;
  }

  /** A bridge of the fleet's network by its number; on a host bridge, that bridge. */
  bridgeName(bridge: number): string {
    return this.mode.kind === "isolated" ? fleetBridgeName(bridge) : this.mode.bridge;
  }

  /**
   * A bridge of the fleet's own network beside shoal0, made and joined to shoal0 if missing
   * (shoal0 itself is made with the network). All of them are one L2, without loops: taps on
   * any of them reach the gateway, DHCP and one another.
   */
  ensureBridge(bridge: number): Promise<void> {
    if (this.namespace === undefined || bridge === 0) return Promise.resolve();
    let joining = this.joined.get(bridge);
    if (joining === undefined) {
      joining = this.joinBridge(bridge);
      this.joined.set(bridge, joining);
      joining.catch(() => this.joined.delete(bridge));
    }
    return joining;
  }

  private async joinBridge(bridge: number): Promise<void> {
    const name = fleetBridgeName(bridge);
    const link = bridgeLink(bridge);
    if (!(await this.linkExists(name))) await this.ip("link", "add", name, "type", "bridge");
    // A pair half made (a shoal killed in between) is made anew.
    if (!(await this.linkExists(link.own)) || !(await this.linkExists(link.trunk))) {
      for (const end of [link.own, link.trunk]) {
        if (await this.linkExists(end)) await this.ip("link", "del", end);
      }
      await this.ip("link", "add", link.own, "type", "veth", "peer", "name", link.trunk);
    }
    await this.ip("link", "set", link.own, "master", name, "up");
    await this.ip("link", "set", link.trunk, "master", FLEET_BRIDGE, "up");
    await this.ip("link", "set", name, "up");
  }

  /** The VM's tap device (or Xen vif) by its address slot. */
  tap(index: number): string {
    return this.mode.kind === "isolated" && this.nicKind === "tap"
      ? tapName(index)
      : hostTapName(this.owner, index);
  }

  /** How the fleet's impairments name what they make on this network. */
  impairNaming(): ImpairNaming {
    return this.mode.kind === "isolated"
      ? ownNetworkNaming((slot) => this.tap(slot))
      : hostBridgeNaming(this.owner);
  }

  ipArgv(args: readonly string[]): [string, ...string[]] {
    return this.namespace === undefined ? ["ip", ...args] : ["ip", "-n", this.namespace, ...args];
  }

  private ip(...args: string[]) {
    return this.runner.run({ argv: this.ipArgv(args) });
  }

  private host(...args: string[]) {
    return this.runner.run({ argv: ["ip", ...args] });
  }

  /** Whether a link is in the fleet's network (`where: "host"`: in the host's namespace). */
  private async linkExists(name: string, where: "fleet" | "host" = "fleet"): Promise<boolean> {
    return (await this.link(name, where)) !== undefined;
  }

  /** A link as `ip -j link show` reports it; undefined if there is none of that name. */
  private async link(name: string, where: "fleet" | "host") {
    const args = ["-j", "link", "show", "dev", name];
    const result = await this.runner.run({
      argv: where === "host" ? ["ip", ...args] : this.ipArgv(args),
      probe: true,
      okCodes: [1],
    });
    return result.code === 0 ? ipLinks.parse(JSON.parse(result.stdout || "[]"))[0] : undefined;
  }

  /** Whose a link is, by the owner mark in its alias. */
  private async linkOwnership(name: string, where: "fleet" | "host"): Promise<Found> {
    const link = await this.link(name, where);
    if (link === undefined) return { kind: "absent" };
    return ownershipOf(link.ifalias, this.owner, ALIAS_MAX);
  }

  /** Marks a link shoal has just made. */
  private mark(name: string, where: "fleet" | "host") {
    const args = ["link", "set", "dev", name, "alias", ownerMark(this.owner, ALIAS_MAX)];
    return this.runner.run({ argv: where === "host" ? ["ip", ...args] : this.ipArgv(args) });
  }

  /** Whether the fleet's namespace is there (a host bridge is the user's, and always counts). */
  async exists(): Promise<boolean> {
    if (this.namespace === undefined) return true;
    return pathExists(`/run/netns/${this.namespace}`);
  }

  /** Whose the namespace of the fleet's name is: its bridge carries the mark. */
  private async namespaceOwnership(): Promise<Found> {
    if (!(await this.exists())) return { kind: "absent" };
    const bridge = await this.linkOwnership(FLEET_BRIDGE, "fleet");
    return bridge.kind === "absent" ? { kind: "unmarked" } : bridge;
  }

  /** Whose the host's nft table of this name is, by the owner mark in its comment. */
  async tableOwnership(table: string, family: "ip" | "bridge" = "ip"): Promise<Found> {
    const listed = await this.runner
      .run({ argv: ["nft", "list", "table", family, table], probe: true, okCodes: [1] })
      .catch((error: unknown) => {
        // Without nft there are no tables.
        if (error instanceof CommandFailed && error.code === null) return undefined;
        throw error;
      });
    if (listed === undefined || listed.code !== 0) return { kind: "absent" };
    return ownershipOf(
      parseTableComment(listed.stdout, table, family),
      this.owner,
      NFT_COMMENT_MAX,
    );
  }

  /**
   * Checks, without changing anything, that what the fleet's network would use in the host's
   * namespaces is absent or this state directory's: so that `up` refuses before it makes anything.
   */
  async checkOwned(): Promise<void> {
    if (this.namespace === undefined) return;
    refuseUnlessOurs(`network namespace ${this.namespace}`, await this.namespaceOwnership());
    if (this.mode.kind === "isolated" && this.mode.nat) {
      const link = natLink(this.owner);
      refuseUnlessOurs(
        `interface ${link.hostSide}`,
        await this.linkOwnership(link.hostSide, "host"),
      );
      refuseUnlessOurs(`nft table ip ${link.table}`, await this.tableOwnership(link.table));
      await this.checkTransitFree(link);
    }
  }

  /**
   * Makes the namespace, bridge and dnsmasq, or brings them in line with `spec`. A host bridge is
   * only checked: it is the user's, with the user's DHCP server.
   */
  async ensure(spec: FleetNetworkSpec): Promise<void> {
    if (this.namespace === undefined) {
      await this.checkBridge();
      return;
    }
    await mkdir(this.paths.dir, { recursive: true, mode: 0o755 });
    await this.checkReachableByOthers();
    await this.checkOwned();
    if (!(await this.exists())) {
      // The bridge, whose mark makes the namespace shoal's, comes right after it.
      await this.runner.run({ argv: ["ip", "netns", "add", this.namespace] });
      await this.ip("link", "add", FLEET_BRIDGE, "type", "bridge");
      await this.mark(FLEET_BRIDGE, "fleet");
    }
    await this.ip("link", "set", "lo", "up");
    const gateway = `${formatIpv4(spec.subnet.gateway)}/${spec.subnet.prefix}`;
    // A gateway the fleet had before goes first: added beside it, the new one would be its
    // secondary address, and deleting a primary deletes its secondaries too.
    const addresses = await this.runner.run({
      argv: this.ipArgv(["-o", "-4", "addr", "show", "dev", FLEET_BRIDGE]),
      probe: true,
    });
    for (const [, stale] of addresses.stdout.matchAll(/ inet (\S+) /g)) {
      if (stale !== undefined && stale !== gateway) {
        await this.ip("addr", "del", stale, "dev", FLEET_BRIDGE);
      }
    }
    await this.ip("addr", "replace", gateway, "dev", FLEET_BRIDGE);
    await this.ip("link", "set", FLEET_BRIDGE, "up");
    const nat = this.mode.kind === "isolated" && this.mode.nat ? this.mode : undefined;
    const upstream = nat ? await hostNameservers() : [];
    if (nat) await this.ensureNat(this.namespace, nat.allow ?? [], upstream);
    else await this.removeNat();
    await this.ensureDnsmasq(spec, upstream);
  }

  /**
   * Outbound NAT (`network.nat`): a veth pair from the fleet's namespace to the host's, VM traffic
   * masqueraded at both ends (isolated fleets may share a subnet, so the host never routes to it),
   * forwarding on in both namespaces, and the host's table keeping the fleet from the host itself
   * and from link-local, broadcast and multicast addresses but those `allow` opens. The host's own
   * routes are not touched.
   */
  private async ensureNat(
    namespace: string,
    allow: readonly string[],
    nameservers: readonly string[],
  ): Promise<void> {
    const link = natLink(this.owner);
    const hostSide = (await this.linkOwnership(link.hostSide, "host")).kind === "ours";
    if (!hostSide || !(await this.linkExists(link.fleetSide))) {
      // Half a pair (a shoal killed in between, a namespace remade) is made anew: in the fleet's
      // namespace, where it is shoal's, and moved to the host's with its mark already on.
      if (hostSide) await this.host("link", "del", link.hostSide);
      for (const end of [link.hostSide, link.fleetSide]) {
        if (await this.linkExists(end)) await this.ip("link", "del", end);
      }
      await this.ip("link", "add", link.hostSide, "type", "veth", "peer", "name", link.fleetSide);
      await this.mark(link.hostSide, "fleet");
      await this.ip("link", "set", "dev", link.hostSide, "netns", String(process.pid));
    }
    await this.host("addr", "replace", `${link.hostAddress}/30`, "dev", link.hostSide);
    await this.host("link", "set", link.hostSide, "up");
    await this.ip("addr", "replace", `${link.fleetAddress}/30`, "dev", link.fleetSide);
    await this.ip("link", "set", link.fleetSide, "up");
    await this.ip("route", "replace", "default", "via", link.hostAddress);
    const forwarding = ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"] as const;
    await this.runner.run({ argv: inNamespace(namespace, forwarding) });
    const mark = ownerMark(this.owner, NFT_COMMENT_MAX);
    await this.runner.run({
      argv: inNamespace(namespace, ["nft", "-f", "-"]),
      input: renderFleetNat(link, mark),
    });
    await this.runner.run({ argv: [...forwarding] });
    await this.runner.run({
      argv: ["nft", "-f", "-"],
      input: renderHostNat({ link, mark, allow, nameservers }),
    });
  }

  /**
   * The fleet's transit /30 must be its own on this host: another owner's link there (hashes
   * collide now and then) would take the fleet's replies.
   */
  private async checkTransitFree(link: NatLink): Promise<void> {
    const shown = await this.runner.run({
      argv: ["ip", "-j", "-4", "addr", "show", "to", link.transit],
      probe: true,
    });
    const holder = ipLinks
      .parse(JSON.parse(shown.stdout || "[]"))
      .find((other) => other.ifname !== link.hostSide);
    if (holder === undefined) return;
    const whose = await this.linkOwnership(holder.ifname, "host");
    const of =
      whose.kind === "other" && whose.root !== undefined ? ` of state directory ${whose.root}` : "";
    throw new UserError(
      `fleet ${this.owner.fleet}'s NAT link ${link.transit} is in use on this host by interface ${holder.ifname}${of}`,
      "the fleet's name and state directory pick the link: rename the fleet, or turn nat off",
    );
  }

  /** Takes a fleet's NAT away (turned off, or the fleet destroyed); nothing to do if it had none. */
  private async removeNat(): Promise<void> {
    const link = natLink(this.owner);
    // The fleet's end, and the default route through it, go with the host's end. What is not
    // this state directory's is left alone.
    if ((await this.linkOwnership(link.hostSide, "host")).kind === "ours") {
      await this.host("link", "del", link.hostSide);
    }
    // The table may outlive the veth (a shoal killed between the two).
    if ((await this.tableOwnership(link.table)).kind === "ours") {
      await this.runner.run({ argv: ["nft", "-f", "-"], input: renderNatRemoval(link) });
    }
  }

  private async ensureDnsmasq(spec: FleetNetworkSpec, upstream: readonly string[]): Promise<void> {
    const conf = renderDnsmasqConf({
      fleet: spec.fleet,
      subnet: spec.subnet,
      bridge: FLEET_BRIDGE,
      files: {
        dhcpHosts: this.paths.dhcpHosts,
        dnsHosts: this.paths.dnsHosts,
        leases: this.paths.leases,
        pid: this.paths.pid,
        log: this.paths.log,
      },
      vmCount: spec.vms.length,
      upstream,
    });
    const hosts = [renderDhcpHosts(spec.vms), renderDnsHosts(spec.fleet, spec.vms)] as const;
    const before = await Promise.all(
      [this.paths.conf, this.paths.dhcpHosts, this.paths.dnsHosts].map((path) =>
        ifExists(readFile(path, "utf8")),
      ),
    );
    // dnsmasq drops to an unprivileged user and re-reads the host files as that user on SIGHUP.
    await writeFileAtomic(this.paths.dhcpHosts, hosts[0], 0o644);
    await writeFileAtomic(this.paths.dnsHosts, hosts[1], 0o644);
    await writeFileAtomic(this.paths.conf, conf, 0o644);
    const changed = before[0] !== conf || before[1] !== hosts[0] || before[2] !== hosts[1];
    const running = await this.dnsmasqPid();
    if (!changed && running !== undefined && (await this.inNamespace(running))) return;
    // A restart, not SIGHUP: dnsmasq would keep the leases of VMs that are gone, and refuses to
    // start at all when it holds more leases than dhcp-lease-max (the fleet shrank).
    await this.stopDnsmasq();
    await this.keepLeasesOf(spec.vms.map((vm) => vm.mac));
    await rm(this.paths.pid, { force: true });
    await this.runner.run({
      argv: inNamespace(this.namespace, ["dnsmasq", `--conf-file=${this.paths.conf}`]),
    });
    const deadline = Date.now() + DNSMASQ_START_MS;
    while ((await this.dnsmasqPid()) === undefined) {
      if (Date.now() > deadline) {
        throw new ShoalError(`dnsmasq for fleet ${this.owner.fleet} did not start`, {
          hint: `see ${this.paths.log}`,
        });
      }
      await sleep(50);
    }
  }

  /** A host bridge must be there and be a bridge; the fleet's own is made when needed. */
  async checkBridge(): Promise<void> {
    if (this.mode.kind === "isolated") return;
    const bridge = this.mode.bridge;
    const shown = await this.runner.run({
      argv: ["ip", "-d", "-o", "link", "show", "dev", bridge],
      probe: true,
      okCodes: [1],
    });
    if (shown.code !== 0 || !/\\\s+bridge /.test(shown.stdout)) {
      throw new UserError(
        `network.bridge ${bridge} ${shown.code === 0 ? "is not a bridge" : "does not exist on this host"}`,
        `make it first (\`ip link add ${bridge} type bridge\`), or leave out bridge: for the fleet's own network`,
      );
    }
  }

  /** `doctor`'s line for the host bridge the fleet is on; none for a fleet's own network. */
  async hostBridgeCheck(): Promise<CheckResult | undefined> {
    if (this.mode.kind !== "host-bridge") return undefined;
    const bridge = this.mode.bridge;
    return this.checkBridge().then(
      (): CheckResult => ({ name: "bridge", level: "ok", detail: bridge }),
      (error: unknown): CheckResult => {
        if (!(error instanceof UserError)) throw error;
        return {
          name: "bridge",
          level: "fail",
          detail: error.message,
          ...(error.hint ? { fix: error.hint } : {}),
        };
      },
    );
  }

  /**
   * dnsmasq drops to user nobody and reads its host files as that user: every directory above
   * them must let others through, or the fleet's names would silently not resolve.
   */
  private async checkReachableByOthers(): Promise<void> {
    await requireReachable("dnsmasq, which runs as user nobody", this.paths.dir);
  }

  /** Drops the leases of MACs the fleet no longer has (lines: expiry mac ip hostname client-id). */
  private async keepLeasesOf(macs: readonly string[]): Promise<void> {
    const leases = await ifExists(readFile(this.paths.leases, "utf8"));
    if (leases === undefined) return;
    const known = new Set(macs);
    const kept = leases.split("\n").filter((line) => known.has(line.split(" ")[1] ?? ""));
    await writeFileAtomic(this.paths.leases, kept.map((line) => `${line}\n`).join(""), 0o644);
  }

  /** The running dnsmasq of this fleet: its pid file's process, started with this config. */
  async dnsmasqPid(): Promise<number | undefined> {
    const pid = Number(((await ifExists(readFile(this.paths.pid, "utf8"))) ?? "").trim());
    if (!Number.isInteger(pid) || pid <= 0) return undefined;
    const cmdline = (await ifProcessExists(readFile(`/proc/${pid}/cmdline`, "utf8"))) ?? "";
    return cmdline.includes(`--conf-file=${this.paths.conf}\0`) ? pid : undefined;
  }

  /** Whether a process runs in the fleet's namespace (a dnsmasq of an earlier shoal may not). */
  private async inNamespace(pid: number): Promise<boolean> {
    const [theirs, ours] = await Promise.all(
      [`/proc/${pid}/ns/net`, `/run/netns/${this.namespace}`].map((path) =>
        ifProcessExists(stat(path)),
      ),
    );
    return theirs !== undefined && theirs.ino === ours?.ino && theirs.dev === ours.dev;
  }

  private async stopDnsmasq(): Promise<void> {
    const pid = await this.dnsmasqPid();
    if (pid === undefined) return;
    process.kill(pid, "SIGTERM");
    const deadline = Date.now() + DNSMASQ_START_MS;
    while ((await this.dnsmasqPid()) === pid) {
      if (Date.now() > deadline) process.kill(pid, "SIGKILL");
      await sleep(50);
    }
  }

  /**
   * The VM's tap device on the fleet's bridge, made if missing. It belongs to the user QEMU runs
   * as, who may attach to it without privileges; one of another owner (made by an older shoal)
   * is made again: a tap's owner is set only when it is made. On a host bridge it is in the
   * host's namespace and carries the owner mark: one of its name without it is not shoal's.
   */
  async ensureTap(index: number, bridge: number): Promise<string> {
    const tap = this.tap(index);
    const shown = await this.runner.run({
      argv: this.ipArgv(["-details", "-json", "link", "show", "dev", tap]),
      probe: true,
      okCodes: [1],
    });
    const inHost = this.namespace === undefined;
    if (inHost && shown.code === 0) {
      const alias = ipLinks.parse(JSON.parse(shown.stdout))[0]?.ifalias;
      refuseUnlessOurs(`tap ${tap}`, ownershipOf(alias, this.owner, ALIAS_MAX));
    }
    const owner = shown.code === 0 ? tapOwner(shown.stdout) : undefined;
    if (owner !== QEMU_USER) {
      if (shown.code === 0) await this.ip("link", "del", tap);
      await this.ip("tuntap", "add", "dev", tap, "mode", "tap", "user", QEMU_USER);
      if (inHost) await this.mark(tap, "host");
    }
    await this.ip("link", "set", tap, "master", this.bridgeName(bridge), "up");
    return tap;
  }

  /** Removes the VM's tap, and the ifb device of its impairments, if they are this state directory's. */
  async removeTap(index: number): Promise<void> {
    const naming = this.impairNaming();
    const inOurs =
      this.namespace !== undefined && (await this.namespaceOwnership()).kind === "ours";
    for (const device of [this.tap(index), naming.ifb(index)]) {
      const ours =
        this.namespace === undefined
          ? (await this.linkOwnership(device, "host")).kind === "ours"
          : inOurs && (await this.linkExists(device));
      if (ours) await this.ip("link", "del", device);
    }
  }

  /**
   * dnsmasq, NAT, the namespace with every link in it, and the network's files; never a host
   * bridge, and nothing that is not this state directory's.
   */
  async remove(): Promise<void> {
    await this.stopDnsmasq();
    if (this.namespace !== undefined) {
      await this.removeNat();
      if ((await this.namespaceOwnership()).kind === "ours") {
        await this.runner.run({ argv: ["ip", "netns", "del", this.namespace] });
      }
    }
    await rm(this.paths.dir, { recursive: true, force: true });
  }
}

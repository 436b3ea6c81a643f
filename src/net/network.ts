import { mkdir, readFile, rm } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import type { NetworkMode, VmIdentity } from "../core/fleet.js";
import type { Subnet } from "../core/ipv4.js";
import { formatIpv4 } from "../core/ipv4.js";
import {
  FLEET_BRIDGE,
  hostTapName,
  inNamespace,
  namespaceName,
  natLink,
  tapName,
  tapOwner,
} from "../core/net.js";
import { renderDhcpHosts, renderDnsHosts, renderDnsmasqConf } from "../core/render/dnsmasq.js";
import {
  renderFleetNat,
  renderHostNat,
  renderNatRemoval,
  upstreamNameservers,
} from "../core/render/nft.js";
import { QEMU_USER } from "../core/render/qemu.js";
import { ShoalError, UserError } from "../errors.js";
import { closedToOthers, pathExists } from "../host/paths.js";
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
    const servers = upstreamNameservers(await readFile(path, "utf8").catch(() => ""));
    if (servers.length > 0) return servers;
  }
  return [];
}

export class FleetNetwork {
  /** The fleet's own namespace; undefined on a host bridge, which is in the host's. */
  readonly namespace: string | undefined;
  readonly bridge: string;

  constructor(
    private readonly runner: Runner,
    private readonly paths: NetworkPaths,
    private readonly fleet: string,
    readonly mode: NetworkMode,
  ) {
    this.namespace = mode.kind === "isolated" ? namespaceName(fleet) : undefined;
    this.bridge = mode.kind === "isolated" ? FLEET_BRIDGE : mode.bridge;
  }

  /** The VM's tap device by its address slot. */
  tap(index: number): string {
    return this.mode.kind === "isolated" ? tapName(index) : hostTapName(this.fleet, index);
  }

  private ipArgv(args: readonly string[]): [string, ...string[]] {
    return this.namespace === undefined ? ["ip", ...args] : ["ip", "-n", this.namespace, ...args];
  }

  private ip(...args: string[]) {
    return this.runner.run({ argv: this.ipArgv(args) });
  }

  /** Whether a link is in the fleet's network (`where: "host"`: in the host's namespace). */
  private async linkExists(name: string, where: "fleet" | "host" = "fleet"): Promise<boolean> {
    const args = ["link", "show", "dev", name];
    const result = await this.runner.run({
      argv: where === "host" ? ["ip", ...args] : this.ipArgv(args),
      probe: true,
      okCodes: [1],
    });
    return result.code === 0;
  }

  /** Whether the fleet's namespace is there (a host bridge is the user's, and always counts). */
  async exists(): Promise<boolean> {
    if (this.namespace === undefined) return true;
    return pathExists(`/run/netns/${this.namespace}`);
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
    if (!(await this.exists())) {
      await this.runner.run({ argv: ["ip", "netns", "add", this.namespace] });
    }
    await this.ip("link", "set", "lo", "up");
    if (!(await this.linkExists(FLEET_BRIDGE))) {
      await this.ip("link", "add", FLEET_BRIDGE, "type", "bridge");
    }
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
    if (this.mode.kind === "isolated" && this.mode.nat) await this.ensureNat(this.namespace);
    else await this.removeNat();
    await this.ensureDnsmasq(spec, this.mode.kind === "isolated" && this.mode.nat);
  }

  /**
   * Outbound NAT (`network.nat`): a veth pair from the fleet's namespace to the host's, VM traffic
   * masqueraded at both ends (isolated fleets may share a subnet, so the host never routes to it),
   * and forwarding on in both namespaces. The host's own routes are not touched.
   */
  private async ensureNat(namespace: string): Promise<void> {
    const link = natLink(this.fleet);
    const host = (...args: string[]) => this.runner.run({ argv: ["ip", ...args] });
    const hostSide = await this.linkExists(link.hostSide, "host");
    if (!hostSide || !(await this.linkExists(link.fleetSide))) {
      // Half a pair (a shoal killed in between, a namespace remade) is made anew.
      if (hostSide) await host("link", "del", link.hostSide);
      await host(
        "link",
        "add",
        link.hostSide,
        "type",
        "veth",
        "peer",
        "name",
        link.fleetSide,
        "netns",
        namespace,
      );
    }
    await host("addr", "replace", `${link.hostAddress}/30`, "dev", link.hostSide);
    await host("link", "set", link.hostSide, "up");
    await this.ip("addr", "replace", `${link.fleetAddress}/30`, "dev", link.fleetSide);
    await this.ip("link", "set", link.fleetSide, "up");
    await this.ip("route", "replace", "default", "via", link.hostAddress);
    const forwarding = ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"] as const;
    await this.runner.run({ argv: inNamespace(namespace, forwarding) });
    await this.runner.run({
      argv: inNamespace(namespace, ["nft", "-f", "-"]),
      input: renderFleetNat(link),
    });
    await this.runner.run({ argv: [...forwarding] });
    await this.runner.run({ argv: ["nft", "-f", "-"], input: renderHostNat(link) });
  }

  /** Takes a fleet's NAT away (turned off, or the fleet destroyed); nothing to do if it had none. */
  private async removeNat(): Promise<void> {
    const link = natLink(this.fleet);
    // The fleet's end, and the default route through it, go with the host's end.
    if (await this.linkExists(link.hostSide, "host")) {
      await this.runner.run({ argv: ["ip", "link", "del", link.hostSide] });
    }
    // The table may outlive the veth (a shoal killed between the two). Without nft, there is none.
    await this.runner
      .run({ argv: ["nft", "-f", "-"], input: renderNatRemoval(link) })
      .catch((error: unknown) => {
        if (!(error instanceof CommandFailed && error.code === null)) throw error;
      });
  }

  private async ensureDnsmasq(spec: FleetNetworkSpec, forwardNames: boolean): Promise<void> {
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
      upstream: forwardNames ? await hostNameservers() : [],
    });
    const hosts = [renderDhcpHosts(spec.vms), renderDnsHosts(spec.fleet, spec.vms)] as const;
    const before = await Promise.all(
      [this.paths.conf, this.paths.dhcpHosts, this.paths.dnsHosts].map((path) =>
        readFile(path, "utf8").catch(() => undefined),
      ),
    );
    // dnsmasq drops to an unprivileged user and re-reads the host files as that user on SIGHUP.
    await writeFileAtomic(this.paths.dhcpHosts, hosts[0], 0o644);
    await writeFileAtomic(this.paths.dnsHosts, hosts[1], 0o644);
    await writeFileAtomic(this.paths.conf, conf, 0o644);
    const changed = before[0] !== conf || before[1] !== hosts[0] || before[2] !== hosts[1];
    if (!changed && (await this.dnsmasqPid()) !== undefined) return;
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
        throw new ShoalError(`dnsmasq for fleet ${this.fleet} did not start`, {
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

  /**
   * dnsmasq drops to user nobody and reads its host files as that user: every directory above
   * them must let others through, or the fleet's names would silently not resolve.
   */
  private async checkReachableByOthers(): Promise<void> {
    const dir = await closedToOthers(this.paths.dir);
    if (dir !== undefined) {
      throw new UserError(
        `dnsmasq, which runs as user nobody, cannot reach ${this.paths.dir}: ${dir} is closed to other users`,
        `allow it with \`chmod o+x ${dir}\`, or choose a --state-dir under a directory others may enter`,
      );
    }
  }

  /** Drops the leases of MACs the fleet no longer has (lines: expiry mac ip hostname client-id). */
  private async keepLeasesOf(macs: readonly string[]): Promise<void> {
    const leases = await readFile(this.paths.leases, "utf8").catch(() => undefined);
    if (leases === undefined) return;
    const known = new Set(macs);
    const kept = leases.split("\n").filter((line) => known.has(line.split(" ")[1] ?? ""));
    await writeFileAtomic(this.paths.leases, kept.map((line) => `${line}\n`).join(""), 0o644);
  }

  /** The running dnsmasq of this fleet: its pid file's process, started with this config. */
  async dnsmasqPid(): Promise<number | undefined> {
    const pid = Number((await readFile(this.paths.pid, "utf8").catch(() => "")).trim());
    if (!Number.isInteger(pid) || pid <= 0) return undefined;
    const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
    return cmdline.includes(`--conf-file=${this.paths.conf}\0`) ? pid : undefined;
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
   * is made again: a tap's owner is set only when it is made.
   */
  async ensureTap(index: number): Promise<string> {
    const tap = this.tap(index);
    const shown = await this.runner.run({
      argv: this.ipArgv(["-details", "-json", "link", "show", "dev", tap]),
      probe: true,
      okCodes: [1],
    });
    const owner = shown.code === 0 ? tapOwner(shown.stdout) : undefined;
    if (owner !== QEMU_USER) {
      if (shown.code === 0) await this.ip("link", "del", tap);
      await this.ip("tuntap", "add", "dev", tap, "mode", "tap", "user", QEMU_USER);
    }
    await this.ip("link", "set", tap, "master", this.bridge, "up");
    return tap;
  }

  async removeTap(index: number): Promise<void> {
    if ((await this.exists()) && (await this.linkExists(this.tap(index)))) {
      await this.ip("link", "del", this.tap(index));
    }
  }

  /** dnsmasq, NAT, the namespace with every link in it, and the network's files; never a host bridge. */
  async remove(): Promise<void> {
    await this.stopDnsmasq();
    if (this.namespace !== undefined) await this.removeNat();
    if (this.namespace !== undefined && (await this.exists())) {
      await this.runner.run({ argv: ["ip", "netns", "del", this.namespace] });
    }
    await rm(this.paths.dir, { recursive: true, force: true });
  }
}

import { access, mkdir, readFile, rm, stat } from "node:fs/promises";
import { dirname } from "node:path";
import type { VmIdentity } from "../core/fleet.js";
import type { Subnet } from "../core/ipv4.js";
import { formatIpv4 } from "../core/ipv4.js";
import { FLEET_BRIDGE, namespaceName, tapName } from "../core/net.js";
import { renderDhcpHosts, renderDnsHosts, renderDnsmasqConf } from "../core/render/dnsmasq.js";
import { ShoalError, UserError } from "../errors.js";
import type { Runner } from "../host/runner.js";
import { writeFileAtomic } from "../state/atomic.js";
import type { NetworkPaths } from "../state/layout.js";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
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
export class FleetNetwork {
  readonly namespace: string;

  constructor(
    private readonly runner: Runner,
    private readonly paths: NetworkPaths,
    private readonly fleet: string,
  ) {
    this.namespace = namespaceName(fleet);
  }

  private ip(...args: string[]) {
    return this.runner.run({ argv: ["ip", "-n", this.namespace, ...args] });
  }

  private async linkExists(name: string): Promise<boolean> {
    const result = await this.runner.run({
      argv: ["ip", "-n", this.namespace, "link", "show", "dev", name],
      probe: true,
      okCodes: [1],
    });
    return result.code === 0;
  }

  async exists(): Promise<boolean> {
    return access(`/run/netns/${this.namespace}`).then(
      () => true,
      () => false,
    );
  }

  /** Makes the namespace, bridge and dnsmasq, or brings them in line with `spec`. */
  async ensure(spec: FleetNetworkSpec): Promise<void> {
    await mkdir(this.paths.dir, { recursive: true, mode: 0o755 });
    await this.checkReachableByOthers();
    if (!(await this.exists())) {
      await this.runner.run({ argv: ["ip", "netns", "add", this.namespace] });
    }
    await this.ip("link", "set", "lo", "up");
    if (!(await this.linkExists(FLEET_BRIDGE))) {
      await this.ip("link", "add", FLEET_BRIDGE, "type", "bridge");
    }
    await this.ip(
      "addr",
      "replace",
      `${formatIpv4(spec.subnet.gateway)}/${spec.subnet.prefix}`,
      "dev",
      FLEET_BRIDGE,
    );
    await this.ip("link", "set", FLEET_BRIDGE, "up");
    await this.ensureDnsmasq(spec);
  }

  private async ensureDnsmasq(spec: FleetNetworkSpec): Promise<void> {
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
      argv: ["ip", "netns", "exec", this.namespace, "dnsmasq", `--conf-file=${this.paths.conf}`],
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

  /**
   * dnsmasq drops to user nobody and reads its host files as that user: every directory above
   * them must let others through, or the fleet's names would silently not resolve.
   */
  private async checkReachableByOthers(): Promise<void> {
    for (let dir = this.paths.dir; dir !== dirname(dir); dir = dirname(dir)) {
      if (((await stat(dir)).mode & 0o001) === 0) {
        throw new UserError(
          `dnsmasq, which runs as user nobody, cannot reach ${this.paths.dir}: ${dir} is closed to other users`,
          `allow it with \`chmod o+x ${dir}\`, or choose a --state-dir under a directory others may enter`,
        );
      }
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

  /** The VM's tap device on the fleet's bridge, made if missing. */
  async ensureTap(index: number): Promise<string> {
    const tap = tapName(index);
    if (!(await this.linkExists(tap))) {
      await this.ip("tuntap", "add", "dev", tap, "mode", "tap");
    }
    await this.ip("link", "set", tap, "master", FLEET_BRIDGE, "up");
    return tap;
  }

  async removeTap(index: number): Promise<void> {
    if ((await this.exists()) && (await this.linkExists(tapName(index)))) {
      await this.ip("link", "del", tapName(index));
    }
  }

  /** dnsmasq, the namespace with every link in it, and the network's files. */
  async remove(): Promise<void> {
    await this.stopDnsmasq();
    if (await this.exists()) {
      await this.runner.run({ argv: ["ip", "netns", "del", this.namespace] });
    }
    await rm(this.paths.dir, { recursive: true, force: true });
  }
}

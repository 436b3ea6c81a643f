import { appendFile, stat, writeFile } from "node:fs/promises";
import type { Duplex } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import type { VmSpec } from "../../core/fleet.js";
import type { HostSpec } from "../../core/hosts.js";
import { ALIAS_MAX, hostTapName, namespaceName, type Owner, ownerMark } from "../../core/net.js";
import { type BootFiles, domainName, ownedDomainUuid } from "../../core/render/boot.js";
import { hostsNaming } from "../../core/render/impair.js";
import { HostUnreachable, ShoalError, UserError } from "../../errors.js";
import { ifExists } from "../../host/paths.js";
import { runnerOn, sshArgvFor } from "../../host/remote.js";
import { CommandFailed, type Launcher, type Runner } from "../../host/runner.js";
import { connectSocketFile } from "../../host/unix-socket.js";
import { sha256File } from "../../image/store.js";
import { FleetHostLinks, hostLinkNames, OVERLAY_MTU } from "../../net/host-links.js";
import { NetworkImpairments } from "../../net/impairments.js";
import { FleetNetwork } from "../../net/network.js";
import type { StateLayout } from "../../state/layout.js";
import { basesOnHosts } from "../../state/store.js";
import type { AccelSetting, Backend, BackendVm, HostNetwork, Presence, VmNic } from "../backend.js";
import type { Accelerator } from "../qemu/render.js";
import {
  allocationOf,
  domainStates,
  hostConsoleLog,
  hostConsoleSocket,
  imageVolumes,
  NO_DOMAIN,
  poolDir,
  poolName,
  presenceOf,
  UNREACHABLE,
  vmVolumes,
} from "./names.js";
import { renderDomainXml } from "./render.js";

const GONE_WAIT_MS = 30_000;
const POLL_MS = 250;

export interface LibvirtBackendDeps {
  readonly runner: Launcher;
  readonly layout: StateLayout;
  /** The fleet's hosts by name (the fleet file's, or as `up` recorded them). */
  readonly hosts: ReadonlyMap<string, HostSpec>;
  readonly accel: AccelSetting;
  readonly tcgCacheMiB?: number;
  readonly notice: (line: string) => void;
}

/**
 * VMs as libvirt domains on the fleet's hosts, driven through `virsh -c URI` (this machine's
 * libvirtd or a remote one over its URI); what libvirt has no call for (a host's file hashes, its
 * copy of a console log) runs on the host over SSH.
 */
export class LibvirtBackend implements Backend {
  readonly name = "libvirt";
  // libvirt makes the VM's tap on the host's bridge as it starts the domain.
  readonly nic = "vif";
  private readonly pool: string;
  /** Per host and image: the image's volumes are there and verified (once per command). */
  private readonly images = new Map<string, Promise<void>>();
  private readonly pools = new Map<string, Promise<void>>();
  private readonly accels = new Map<string, Promise<Accelerator>>();

  constructor(private readonly deps: LibvirtBackendDeps) {
    this.pool = poolName(deps.layout.root);
  }

  private host(vm: BackendVm): HostSpec {
    const host = vm.host === undefined ? undefined : this.deps.hosts.get(vm.host);
    if (host === undefined) {
      throw new ShoalError(
        `VM ${vm.name} is on host ${vm.host ?? "(none)"}, which the fleet has not`,
        {
          hint: "put the host back in hosts:, or `shoal destroy` the fleet",
        },
      );
    }
    return host;
  }

  /**
   * `virsh -c URI ARGS` on the host. A host whose daemon (or SSH) does not answer is
   * HostUnreachable, whatever the caller accepts; `okCodes: "any"` takes virsh's other failures
   * as answers.
   */
  private async virsh(host: HostSpec, args: readonly string[], okCodes?: "any") {
    const argv = ["virsh", "-q", "-c", host.uri, ...args] as const;
    const result = await this.deps.runner.run({ argv, okCodes: "any" });
    if (result.code !== 0 && UNREACHABLE.test(result.stderr)) {
      const why = result.stderr.trim().split("\n").slice(-1)[0] ?? "";
      throw new HostUnreachable(host.name, why.replace(/^error: /, ""));
    }
    if (result.code !== 0 && okCodes === undefined) {
      throw new CommandFailed(argv, result.code, result.stderr);
    }
    return result;
  }

  /** The host itself, for what virsh cannot do; this machine for a local URI. */
  private on(host: HostSpec): Runner {
    return runnerOn(this.deps.runner, host);
  }

  private owner(vm: BackendVm): Owner {
    return { root: this.deps.layout.root, fleet: vm.fleet };
  }

  private domain(vm: BackendVm): string {
    return domainName(vm.fleet, vm.name);
  }

  private once<T>(cache: Map<string, Promise<T>>, key: string, make: () => Promise<T>): Promise<T> {
    let found = cache.get(key);
    if (found === undefined) {
      found = make();
      // A failure is not remembered: the next VM tries again.
      found.catch(() => cache.delete(key));
      cache.set(key, found);
    }
    return found;
  }

  private ensurePool(host: HostSpec): Promise<void> {
    return this.once(this.pools, host.name, async () => {
      const info = await this.virsh(host, ["pool-info", this.pool], "any");
      if (info.code !== 0) {
        await this.virsh(host, [
          "pool-define-as",
          this.pool,
          "dir",
          "--target",
          poolDir(this.pool),
        ]);
        await this.virsh(host, ["pool-build", this.pool]);
      }
      if (!/^State:\s+running$/m.test(info.stdout))
        await this.virsh(host, ["pool-start", this.pool]);
      await this.virsh(host, ["pool-autostart", this.pool]);
    });
  }

  private async volumeExists(host: HostSpec, name: string): Promise<boolean> {
    const info = await this.virsh(host, ["vol-info", "--pool", this.pool, name], "any");
    return info.code === 0;
  }

  private async upload(host: HostSpec, name: string, file: string): Promise<void> {
    const { size } = await stat(file);
    await this.makeVolume(host, name, Math.max(size, 512), file);
  }

  /** A sparse raw volume of `bytes`, replacing one of that name: empty, or `contents` sent into it. */
  private async makeVolume(
    host: HostSpec,
    name: string,
    bytes: number,
    contents?: string,
  ): Promise<void> {
    await this.virsh(host, ["vol-delete", "--pool", this.pool, name], "any");
    await this.virsh(host, [
      "vol-create-as",
      this.pool,
      name,
      `${bytes}b`,
      "--format",
      "raw",
      "--allocation",
      "0",
    ]);
    if (contents !== undefined) {
      await this.virsh(host, ["vol-upload", "--pool", this.pool, name, contents, "--sparse"]);
    }
  }

  /**
   * The image's base, kernel and initramfs on the host, sent only when the host has no verified
   * copy: after an upload, the host hashes its copies, and only copies with the image's hashes
   * get the marker that later runs look for.
   */
  private ensureImage(host: HostSpec, boot: BootFiles): Promise<void> {
    return this.once(this.images, `${host.name}\0${boot.baseId}`, async () => {
      const volumes = imageVolumes(boot.baseId);
      if (await this.volumeExists(host, volumes.verified)) return;
      const files = { base: boot.base, kernel: boot.kernel, initrd: boot.initrd } as const;
      const expected = {
        base: boot.baseId,
        kernel: await sha256File(boot.kernel),
        initrd: await sha256File(boot.initrd),
      };
      for (const part of ["base", "kernel", "initrd"] as const) {
        await this.upload(host, volumes[part], files[part]);
      }
      const dir = poolDir(this.pool);
      await this.checkHashes(
        host,
        (["base", "kernel", "initrd"] as const).map((part) => ({
          path: `${dir}/${volumes[part]}`,
          sha256: expected[part],
          what: `image ${boot.baseId.slice(0, 12)}'s ${part}`,
        })),
      );
      await this.virsh(host, [
        "vol-create-as",
        this.pool,
        volumes.verified,
        "0",
        "--format",
        "raw",
      ]);
    });
  }

  /**
   * Hashes files on the host (sha256sum over SSH) and refuses those without the hash they were
   * sent with: libvirt's uploads have no checksum of their own.
   */
  private async checkHashes(
    host: HostSpec,
    files: readonly { path: string; sha256: string; what: string }[],
  ): Promise<void> {
    const sums = await this.on(host).run({
      argv: ["sha256sum", "--", ...files.map((file) => file.path)],
    });
    const found = sums.stdout
      .trim()
      .split("\n")
      .map((line) => line.split(/\s+/)[0]);
    const wrong = files.filter((file, i) => found[i] !== file.sha256).map((file) => file.what);
    if (wrong.length > 0) {
      throw new ShoalError(
        `host ${host.name}'s copy of ${wrong.join(", ")} does not have its hash`,
        {
          hint: "the upload was cut short or the host's disk is failing; the next `shoal up` sends it again",
        },
      );
    }
  }

  private accel(host: HostSpec): Promise<Accelerator> {
    if (this.deps.accel !== "auto") return Promise.resolve(this.deps.accel);
    return this.once(this.accels, host.name, async () => {
      const kvm = await this.virsh(host, ["domcapabilities", "--virttype", "kvm"], "any");
      if (kvm.code === 0) return "kvm";
      this.deps.notice(
        `host ${host.name} has no KVM: its VMs use software emulation (TCG), which is slower`,
      );
      return "tcg";
    });
  }

  private links(fleet: string, namespace: string): FleetHostLinks {
    const owner = { root: this.deps.layout.root, fleet };
    return new FleetHostLinks(this.deps.runner, owner, namespace, [...this.deps.hosts.values()]);
  }

  async joinNetwork(fleet: string, namespace: string): Promise<void> {
    for (const unreachable of await this.links(fleet, namespace).ensure()) {
      this.deps.notice(`${unreachable.message}: its bridge for the fleet is left as it is`);
    }
  }

  async leaveNetwork(fleet: string, namespace: string): Promise<void> {
    await this.links(fleet, namespace).remove();
  }

  hostNetworks(fleet: string): readonly HostNetwork[] {
    return [...this.deps.hosts.values()].map((host) => this.hostNetwork(fleet, host));
  }

  private hostNetwork(fleet: string, host: HostSpec): HostNetwork {
    const owner = { root: this.deps.layout.root, fleet };
    const paths = this.deps.layout.fleet(fleet).net;
    const runner = this.on(host);
    const network = new FleetNetwork(
      runner,
      { ...paths, impairments: paths.impairmentsOn(host.name) },
      owner,
      { kind: "host-bridge", bridge: hostLinkNames(owner).bridge },
      this.nic,
    );
    return { host: host.name, runner, network };
  }

  async releaseHost(fleet: string, host: HostSpec): Promise<void> {
    const owner = { root: this.deps.layout.root, fleet };
    const { runner, network } = this.hostNetwork(fleet, host);
    await new NetworkImpairments(runner, network, hostsNaming(owner, new Map())).remove();
    await new FleetHostLinks(this.deps.runner, owner, namespaceName(owner), [host]).remove();
    await this.tidyHost(host, await basesOnHosts(this.deps.layout));
  }

  /**
   * Removes from each host's pool the images no VM of this state directory boots from any more,
   * and the pool once it holds nothing: `destroy` leaves nothing of shoal's on a host.
   */
  async tidy(): Promise<void> {
    const keep = await basesOnHosts(this.deps.layout);
    for (const host of this.deps.hosts.values()) {
      await this.tidyHost(host, keep).catch((error: unknown) => {
        // A host that is down keeps what it has until it is back.
        if (!(error instanceof HostUnreachable)) throw error;
      });
    }
  }

  /** Removes from the host's pool the images not in `keep` (by host URI), and the pool once empty. */
  private async tidyHost(
    host: HostSpec,
    keep: Awaited<ReturnType<typeof basesOnHosts>>,
  ): Promise<void> {
    const listed = await this.virsh(host, ["vol-list", "--pool", this.pool], "any");
    // No pool there (never used, or already gone): nothing to tidy.
    if (listed.code !== 0) return;
    const volumes = listed.stdout
      .split("\n")
      .map((line) => line.trim().split(/\s+/)[0] ?? "")
      .filter((name) => name !== "");
    const used = keep.get(host.uri) ?? new Set();
    const stale = volumes.filter((name) => {
      const id = /^([0-9a-f]{64})\.(?:base|kernel|initrd|verified)$/.exec(name)?.[1];
      return id !== undefined && !used.has(id);
    });
    // The marker first: a copy half removed is never taken for a verified one.
    stale.sort((a, b) => Number(b.endsWith(".verified")) - Number(a.endsWith(".verified")));
    for (const name of stale) await this.virsh(host, ["vol-delete", "--pool", this.pool, name]);
    if (stale.length === volumes.length) {
      await this.virsh(host, ["pool-destroy", this.pool], "any");
      await this.virsh(host, ["pool-delete", this.pool], "any");
      await this.virsh(host, ["pool-undefine", this.pool]);
      this.pools.delete(host.name);
    }
    for (const key of [...this.images.keys()].filter((k) => k.startsWith(`${host.name}\0`))) {
      this.images.delete(key);
    }
  }

  async unreachableHosts(): Promise<readonly HostUnreachable[]> {
    const answers = await Promise.all(
      [...this.deps.hosts.values()].map((host) =>
        this.virsh(host, ["uri"]).then(
          () => undefined,
          (error: unknown) => {
            if (error instanceof HostUnreachable) return error;
            throw error;
          },
        ),
      ),
    );
    return answers.filter((answer) => answer !== undefined);
  }

  /**
   * Made under another name and renamed over the VM's layer on the host (a rename in the pool's
   * directory, then a pool refresh): a shoal killed meanwhile leaves the old layer or the new one,
   * never none. A layer brought from another host is checked against its hash first.
   */
  async createLayer(vm: BackendVm, spec: VmSpec, contents?: string): Promise<void> {
    const host = this.host(vm);
    await this.ensurePool(host);
    const { layer, stagedLayer } = vmVolumes(vm.fleet, vm.name);
    const dir = poolDir(this.pool);
    await this.makeVolume(host, stagedLayer, spec.layer.sizeBytes, contents);
    if (contents !== undefined) {
      await this.checkHashes(host, [
        {
          path: `${dir}/${stagedLayer}`,
          sha256: await sha256File(contents),
          what: `VM ${vm.name}'s layer`,
        },
      ]);
    }
    await this.on(host).run({
      argv: ["mv", "-f", "--", `${dir}/${stagedLayer}`, `${dir}/${layer}`],
    });
    await this.virsh(host, ["pool-refresh", this.pool]);
  }

  async copyLayer(vm: BackendVm, destination: string): Promise<void> {
    const { layer } = vmVolumes(vm.fleet, vm.name);
    await this.virsh(this.host(vm), [
      "vol-download",
      "--pool",
      this.pool,
      layer,
      destination,
      "--sparse",
    ]);
  }

  layerBytes(vm: BackendVm): Promise<number> {
    return this.allocation(this.host(vm), vmVolumes(vm.fleet, vm.name).layer);
  }

  baseBytes(host: string, id: string): Promise<number> {
    const spec = this.deps.hosts.get(host);
    if (spec === undefined) throw new Error(`internal: no host ${host}`);
    return this.allocation(spec, imageVolumes(id).base);
  }

  /** What a volume takes on its host's disk. */
  private async allocation(host: HostSpec, volume: string): Promise<number> {
    const info = await this.virsh(host, ["vol-info", "--bytes", "--pool", this.pool, volume]);
    return allocationOf(info.stdout);
  }

  private async render(vm: BackendVm, spec: VmSpec, boot: BootFiles): Promise<string> {
    const host = this.host(vm);
    const volumes = imageVolumes(boot.baseId);
    const own = vmVolumes(vm.fleet, vm.name);
    const dir = poolDir(this.pool);
    const xml = renderDomainXml({
      fleet: vm.fleet,
      uuid: ownedDomainUuid("libvirt", this.owner(vm), vm.name),
      vm: spec,
      boot,
      kernel: `${dir}/${volumes.kernel}`,
      initrd: `${dir}/${volumes.initrd}`,
      disks: {
        base: { pool: this.pool, name: volumes.base },
        seed: { pool: this.pool, name: own.seed },
        ...(spec.layer.type === "disk" ? { layer: { pool: this.pool, name: own.layer } } : {}),
      },
      nic: {
        bridge: hostLinkNames(this.owner(vm)).bridge,
        mtu: OVERLAY_MTU,
        tap: hostTapName(this.owner(vm), spec.index),
      },
      accel: await this.accel(host),
      ...(this.deps.tcgCacheMiB === undefined ? {} : { tcgCacheMiB: this.deps.tcgCacheMiB }),
      consoleLog: hostConsoleLog(vm.fleet, vm.name),
      consoleSocket: hostConsoleSocket(vm.fleet, vm.name),
      owner: ownerMark(this.owner(vm), ALIAS_MAX),
    });
    const file = `${vm.paths.dir}/domain.xml`;
    await writeFile(file, xml, { mode: 0o600 });
    return file;
  }

  async define(vm: BackendVm, spec: VmSpec, boot: BootFiles, _nic: VmNic): Promise<void> {
    const host = this.host(vm);
    // Domain names are host-wide: one of this name made by another state directory or program
    // (another UUID) is never redefined.
    const found = await this.virsh(host, ["domuuid", this.domain(vm)], "any");
    const uuid = ownedDomainUuid("libvirt", this.owner(vm), vm.name);
    if (found.code === 0 && found.stdout.trim() !== uuid) {
      throw new UserError(
        `host ${host.name} has a domain ${this.domain(vm)} that is not this state directory's (UUID ${found.stdout.trim().slice(0, 36)})`,
        "rename the fleet, or remove that domain if it is a leftover",
      );
    }
    await this.ensurePool(host);
    await this.ensureImage(host, boot);
    await this.upload(host, vmVolumes(vm.fleet, vm.name).seed, vm.paths.seed);
    await this.virsh(host, ["define", await this.render(vm, spec, boot)]);
  }

  async stageBoot(vm: BackendVm, boot: BootFiles): Promise<void> {
    const host = this.host(vm);
    await this.ensurePool(host);
    await this.ensureImage(host, boot);
  }

  async start(vm: BackendVm, spec: VmSpec, boot: BootFiles, _nic: VmNic): Promise<void> {
    const host = this.host(vm);
    await this.ensureImage(host, boot);
    await this.virsh(host, ["define", await this.render(vm, spec, boot)]);
    await this.virsh(host, ["start", this.domain(vm)]);
  }

  async presence(vm: BackendVm): Promise<Presence> {
    const domain = this.domain(vm);
    const stats = await this.virsh(this.host(vm), ["domstats", "--state", domain], "any");
    if (stats.code !== 0) {
      if (NO_DOMAIN.test(stats.stderr)) return { kind: "absent" };
      throw new CommandFailed(["virsh", "domstats", domain], stats.code, stats.stderr);
    }
    return presenceOf(domainStates(stats.stdout).get(domain));
  }

  async presences(vms: readonly BackendVm[]): Promise<Map<string, Presence | HostUnreachable>> {
    const byHost = new Map<HostSpec, BackendVm[]>();
    for (const vm of vms) {
      const host = this.host(vm);
      const onHost = byHost.get(host);
      if (onHost) onHost.push(vm);
      else byHost.set(host, [vm]);
    }
    const answers = await Promise.all(
      [...byHost].map(async ([host, onHost]) => {
        try {
          const states = domainStates((await this.virsh(host, ["domstats", "--state"])).stdout);
          return onHost.map((vm) => [vm.name, presenceOf(states.get(this.domain(vm)))] as const);
        } catch (error) {
          if (!(error instanceof HostUnreachable)) throw error;
          return onHost.map((vm) => [vm.name, error] as const);
        }
      }),
    );
    return new Map<string, Presence | HostUnreachable>(answers.flat());
  }

  async requestShutdown(vm: BackendVm): Promise<void> {
    await this.virsh(this.host(vm), ["shutdown", "--mode", "acpi", this.domain(vm)]);
  }

  async destroy(vm: BackendVm): Promise<void> {
    const host = this.host(vm);
    const ended = await this.virsh(host, ["destroy", this.domain(vm)], "any");
    if (ended.code !== 0 && !NO_DOMAIN.test(ended.stderr) && !/not running/.test(ended.stderr)) {
      throw new CommandFailed(["virsh", "destroy", this.domain(vm)], ended.code, ended.stderr);
    }
    const deadline = Date.now() + GONE_WAIT_MS;
    while ((await this.presence(vm)).kind === "running") {
      if (Date.now() > deadline) {
        throw new ShoalError(`VM ${vm.name} still runs on host ${host.name} after virsh destroy`);
      }
      await sleep(POLL_MS);
    }
  }

  async forget(vm: BackendVm): Promise<void> {
    const host = this.host(vm);
    await this.virsh(host, ["undefine", this.domain(vm)], "any");
    const own = vmVolumes(vm.fleet, vm.name);
    for (const volume of [own.seed, own.layer, own.stagedLayer]) {
      await this.virsh(host, ["vol-delete", "--pool", this.pool, volume], "any");
    }
    await this.on(host).run({ argv: ["rm", "-f", "--", hostConsoleLog(vm.fleet, vm.name)] });
  }

  /**
   * Copies what the host's log has past the copy here, as bytes (a guest may write anything): one
   * SSH session per look while the log grows (a boot wait looks twice a second). When nothing is
   * new, its size is asked too: a log shorter than the copy was rotated or made anew, and is
   * copied again whole, so the copy stays the host's log byte for byte.
   */
  async fetchConsoleLog(vm: BackendVm): Promise<void> {
    const host = this.host(vm);
    const local = vm.paths.serialLog;
    const remote = hostConsoleLog(vm.fleet, vm.name);
    const have = (await ifExists(stat(local)))?.size ?? 0;
    const fresh = await this.readConsoleLog(host, remote, have);
    if (fresh === undefined) return;
    if (fresh.length > 0) {
      await appendFile(local, fresh, { mode: 0o600 });
      return;
    }
    const size = await this.on(host).run({
      argv: ["stat", "-c", "%s", "--", remote],
      okCodes: "any",
    });
    // The host's answer, checked before it is believed.
    const length = Number(size.stdout.trim());
    if (size.code !== 0 || !Number.isSafeInteger(length) || length >= have) return;
    await writeFile(local, (await this.readConsoleLog(host, remote, 0)) ?? "", { mode: 0o600 });
  }

  /** The host's console log from byte `from` on; undefined when it has none (not started yet). */
  private async readConsoleLog(
    host: HostSpec,
    remote: string,
    from: number,
  ): Promise<Buffer | undefined> {
    const chunks: Buffer[] = [];
    const read = await this.on(host).run({
      argv: ["tail", "-c", `+${from + 1}`, "--", remote],
      okCodes: "any",
      onOutput: (stream, chunk) => {
        if (stream === "stdout") chunks.push(chunk);
      },
    });
    return read.code === 0 ? Buffer.concat(chunks) : undefined;
  }

  async openConsole(vm: BackendVm): Promise<Duplex> {
    const host = this.host(vm);
    const socket = hostConsoleSocket(vm.fleet, vm.name);
    const ssh = sshArgvFor(host.uri);
    if (ssh === undefined) return connectSocketFile(socket);
    // OpenSSH forwards its stdio to a unix socket on the host.
    const [file, ...args] = ssh;
    return this.deps.runner.connect([file, "-W", socket, ...args]);
  }
}

import { mkdir, open, readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { Backend, BackendVm, VmNic } from "../backends/backend.js";
import { quoted } from "../core/excerpt.js";
import type { FleetSpec, NetworkMode, VmSpec } from "../core/fleet.js";
import {
  formatIpv4,
  makeSubnet,
  parseCidr,
  parseIpv4,
  type Subnet,
  subnetsOverlap,
} from "../core/ipv4.js";
import { fleetTag, natLink, type Owner } from "../core/net.js";
import type { ObservedState } from "../core/plan.js";
import type { BootFiles } from "../core/render/boot.js";
import { seedFiles } from "../core/seed.js";
import { type KnownHost, renderKnownHosts } from "../core/ssh.js";
import { checkKernelParam } from "../core/syntax.js";
import { escapeLine } from "../core/terminal.js";
import { ShoalError, UserError } from "../errors.js";
import { pathExists } from "../host/paths.js";
import type { Runner } from "../host/runner.js";
import {
  type ClientKey,
  ensureClientKey,
  makeHostKey,
  readHostKey,
  writeSeed,
} from "../identity/identity.js";
import { ImageStore } from "../image/store.js";
import {
  createLayer,
  type LayerChange,
  layerBaseId,
  layerFormatted,
  listLayerChanges,
  replaceLayer,
  settleLayer,
  upgradeConflicts,
  withoutIdentity,
} from "../layer/layer.js";
import { FleetNetwork } from "../net/network.js";
import { removeStaleTempFiles, tempPathBeside, writeFileAtomic } from "../state/atomic.js";
import type { FleetPaths, StateLayout } from "../state/layout.js";
import { emptyRecord, type FleetRecord, RecordBook, readFleetRecord } from "../state/store.js";
import { checkNoLinksIn, checkOwnDirectory } from "../state/trust.js";

const POLL_MS = 250;
const PRESS_AGAIN_MS = 10_000;

/** What happens to one VM, as progress displays and logs show it. */
export type FleetPhase =
  | "created"
  | "booting"
  | "ready"
  | "failed"
  | "stopping"
  | "stopped"
  | "deleted"
  | "reset";

export interface FleetEvent {
  readonly vm: string;
  readonly phase: FleetPhase;
  readonly detail?: string;
}

export interface SessionDeps {
  readonly runner: Runner;
  readonly layout: StateLayout;
  readonly event: (event: FleetEvent) => void;
  /** One-line notices for the user. */
  readonly notice: (line: string) => void;
}

export interface VmStatus {
  readonly state: ObservedState;
  /** When it started, for a running VM. */
  readonly since?: Date;
}

/** What starting a VM came to: it reached the image's init, or why not. */
export type StartResult =
  | { readonly ready: true }
  | { readonly ready: false; readonly why: string };

/** The guest's own lines that mark a boot's outcome (printed by shoal's union-root init). */
const READY_LINE = /shoal: root is the union of base/;
const FATAL_LINE = /shoal: FATAL: ([^\r\n]*)/;

/**
 * One fleet's VMs on this host, for the duration of one command under the fleet's lock: their
 * record, their files and their hypervisor, tied together so that every step is recorded before or
 * after it happens in the order that lets a killed shoal be repaired by the next run.
 */
export class FleetSession {
  readonly paths: FleetPaths;

  private networkReady: Promise<void> | undefined;
  private clientKeyReady: Promise<ClientKey> | undefined;

  private constructor(
    private readonly deps: SessionDeps,
    readonly fleet: string,
    readonly backend: Backend,
    readonly book: RecordBook,
  ) {
    this.paths = deps.layout.fleet(fleet);
  }

  static async open(
    deps: SessionDeps,
    fleet: Pick<FleetSpec, "name" | "backend">,
    backend: Backend,
  ) {
    const paths = deps.layout.fleet(fleet.name);
    for (const dir of [deps.layout.fleets, paths.dir, paths.vms]) await checkOwnDirectory(dir);
    for (const dir of [paths.net.dir, paths.clientKeys]) await checkNoLinksIn(dir);
    for (const name of await readdir(paths.vms).catch(() => [] as string[])) {
      const vm = paths.vm(name);
      await checkNoLinksIn(vm.dir);
      await checkNoLinksIn(vm.hostKeys);
    }
    const record: FleetRecord =
      (await readFleetRecord(deps.layout, fleet.name)) ?? emptyRecord(fleet);
    if (record.backend !== backend.name) {
      throw new UserError(
        `fleet ${fleet.name} runs on ${record.backend}, the fleet file says ${backend.name}`,
        "`shoal destroy` the fleet first to move it to another backend",
      );
    }
    // A shoal killed while writing the record leaves its temporary file; the record is intact.
    await removeStaleTempFiles(paths.dir);
    return new FleetSession(deps, fleet.name, backend, new RecordBook(deps.layout, record));
  }

  /** The fleet's network as last recorded; the fleet's own, isolated one if none is. */
  get network(): FleetNetwork {
    return this.networkIn(modeOfRecord(this.book.record.network));
  }

  private networkIn(mode: NetworkMode): FleetNetwork {
    return new FleetNetwork(this.deps.runner, this.paths.net, this.owner(this.fleet), mode);
  }

  /** Who this state directory's fleet of that name is, as host-wide objects are marked. */
  private owner(fleet: string): Owner {
    return { root: this.deps.layout.root, fleet };
  }

  /** Where a VM's network interface goes. */
  nic(spec: Pick<VmSpec, "index">): VmNic {
    const network = this.network;
    const nic = { tap: network.tap(spec.index), bridge: network.bridge };
    return network.namespace === undefined ? nic : { ...nic, namespace: network.namespace };
  }

  /**
   * Records the fleet's network, which it is built from. Its VMs cannot move between the fleet's
   * own network and a host bridge in place (their taps and QEMU's namespace are set at creation);
   * on host bridges, whose addresses share the host's routing, fleets' subnets must not overlap.
   */
  async recordNetwork(
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
    const recorded = this.book.record.network;
    const where = (bridge: string | undefined) =>
      bridge === undefined ? "its own network" : `host bridge ${bridge}`;
    if (recorded?.bridge !== network.bridge && Object.keys(this.book.record.vms).length > 0) {
      throw new UserError(
        `fleet ${this.fleet}'s VMs are on ${where(recorded?.bridge)}; network.bridge cannot move them to ${where(network.bridge)} in place`,
        "`shoal destroy` the fleet first, or keep network.bridge as it was",
      );
    }
    await this.checkOtherFleets(subnet, mode);
    // A missing bridge, or a namespace another state directory or program holds under the
    // fleet's names, is found before any VM is made, not when each one fails to start.
    if (options.willStart) {
      const fleetNetwork = this.networkIn(mode);
      await fleetNetwork.checkBridge();
      await fleetNetwork.checkOwned();
    }
    if (JSON.stringify(recorded) === JSON.stringify(network)) return;
    await this.book.update((record) => {
      record.network = network;
    });
  }

  /**
   * What this fleet puts into the host's namespace must not clash with another fleet's: subnets of
   * fleets on host bridges (shared routing), and the host-wide names and NAT links made from a
   * short hash of the fleet's name (a collision is unlikely, but would break both fleets quietly).
   */
  private async checkOtherFleets(subnet: Subnet, mode: NetworkMode): Promise<void> {
    const inHost = (kind: NetworkMode) => kind.kind === "host-bridge" || kind.nat;
    if (!inHost(mode)) return;
    const others = await readdir(this.deps.layout.fleets).catch(() => [] as string[]);
    for (const other of others.filter((name) => name !== this.fleet).sort()) {
      const network = (await readFleetRecord(this.deps.layout, other).catch(() => undefined))
        ?.network;
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
        (fleetTag(this.owner(other)) === fleetTag(this.owner(this.fleet)) ||
          (mode.kind === "isolated" &&
            theirs.kind === "isolated" &&
            natLink(this.owner(other)).transit === natLink(this.owner(this.fleet)).transit));
      if (clash) {
        throw new UserError(
          `fleet names ${this.fleet} and ${other} hash to the same host interface names or NAT link`,
          "rename one of the fleets",
        );
      }
    }
  }

  /**
   * The fleet's network with a reservation for every VM the record holds, made or repaired once
   * per command (a host reboot removes the namespace; dnsmasq may have died).
   */
  ensureNetwork(): Promise<void> {
    this.networkReady ??= (async () => {
      const recorded = this.book.record.network;
      const cidr = recorded ? parseCidr(recorded.subnet) : undefined;
      const gateway = recorded ? parseIpv4(recorded.gateway) : undefined;
      if (!cidr?.ok || gateway === undefined) {
        throw new ShoalError(`fleet ${this.fleet} has no network recorded`, {
          hint: "`shoal up` with its fleet file records it",
        });
      }
      await this.network.ensure({
        fleet: this.fleet,
        subnet: makeSubnet(cidr.network, cidr.prefix, gateway),
        vms: Object.values(this.book.record.vms).map((entry) => entry.spec),
      });
    })();
    return this.networkReady;
  }

  notice(line: string): void {
    this.deps.notice(line);
  }

  vm(name: string): BackendVm {
    return { fleet: this.fleet, name, paths: this.paths.vm(name) };
  }

  recordedNames(): string[] {
    return Object.keys(this.book.record.vms).sort();
  }

  /** VM directories the record does not know: left by a shoal killed while deleting, or by hand. */
  async strayNames(): Promise<string[]> {
    const entries = await readdir(this.paths.vms).catch(() => [] as string[]);
    return entries.filter((name) => this.book.vm(name) === undefined).sort();
  }

  async status(name: string): Promise<VmStatus> {
    const recorded = this.book.vm(name);
    if (recorded?.phase !== "created") return { state: "missing" };
    const presence = await this.backend.presence(this.vm(name));
    switch (presence.kind) {
      case "running":
        return presence.since ? { state: "running", since: presence.since } : { state: "running" };
      case "crashed":
        return { state: "crashed" };
      case "powered-off":
        return { state: "stopped" };
      case "absent": {
        const defined = await pathExists(this.paths.vm(name).dir);
        if (!defined) return { state: "missing" };
        return { state: recorded.running ? "crashed" : "stopped" };
      }
    }
  }

  /**
   * Writes every file of new VMs: host key, identity seed, blank layer, hypervisor definition.
   * Recorded as `creating` before and `created` after, with one filesystem sync for the batch.
   */
  async create(
    specs: readonly VmSpec[],
    bootOf: (vm: VmSpec) => BootFiles,
    authorizedKeys: readonly string[],
    each: (work: () => Promise<void>) => Promise<void>,
  ): Promise<void> {
    if (specs.length === 0) return;
    const now = new Date().toISOString();
    await this.book.update((record) => {
      for (const spec of specs) {
        record.vms[spec.name] = {
          spec,
          createdAt: now,
          updatedAt: now,
          phase: "creating",
          running: false,
          baseId: bootOf(spec).baseId,
        };
      }
    });
    // Every worker finishes before a failure is reported: none may still write once the lock is gone.
    const written = await Promise.allSettled(
      specs.map((spec) =>
        each(async () => {
          const paths = this.paths.vm(spec.name);
          // Whatever a killed run left of this VM was never booted: start it afresh.
          await this.backend.destroy(this.vm(spec.name));
          await rm(paths.dir, { recursive: true, force: true });
          await mkdir(paths.dir, { recursive: true, mode: 0o700 });
          await makeHostKey(paths.hostKeys, `root@${spec.hostname}`);
          await this.writeIdentity(spec, authorizedKeys, "new");
          if (spec.layer.type === "disk") await createLayer(paths.layer, spec.layer.sizeBytes);
          await this.backend.define(this.vm(spec.name), spec, bootOf(spec), this.nic(spec));
        }),
      ),
    );
    const failure = written.find((result) => result.status === "rejected");
    if (failure) throw failure.reason;
    await this.sync();
    await this.book.update((record) => {
      for (const spec of specs) {
        const entry = record.vms[spec.name];
        if (entry) entry.phase = "created";
      }
    });
    for (const spec of specs) this.deps.event({ vm: spec.name, phase: "created" });
  }

  private async writeIdentity(
    spec: VmSpec,
    authorizedKeys: readonly string[],
    how: "new" | "replace",
  ): Promise<void> {
    const paths = this.paths.vm(spec.name);
    const [hostKey, clientKey] = await Promise.all([readHostKey(paths.hostKeys), this.clientKey()]);
    await writeSeed(
      paths.seed,
      seedFiles({
        vm: spec,
        fleet: this.fleet,
        hostKey,
        authorizedKeys: [clientKey.publicKey, ...authorizedKeys],
      }),
      how,
    );
  }

  /**
   * The key `shoal ssh` and `exec` log in with; every VM of the fleet authorizes it. Made on first
   * use, so only by commands that hold the fleet's lock (they write seeds).
   */
  private clientKey(): Promise<ClientKey> {
    this.clientKeyReady ??= ensureClientKey(this.paths.clientKeys, `shoal@${this.fleet}`);
    return this.clientKeyReady;
  }

  /**
   * Gives every created VM the fleet file's authorized_keys: their seeds are rewritten, and each VM
   * takes them at its next boot. Says whether they changed.
   */
  async setAuthorizedKeys(keys: readonly string[]): Promise<boolean> {
    const recorded = this.book.record.authorizedKeys;
    if (recorded !== undefined && JSON.stringify(recorded) === JSON.stringify(keys)) return false;
    const created = this.recordedNames()
      .map((name) => this.book.vm(name))
      .filter((entry) => entry?.phase === "created");
    for (const entry of created) if (entry) await this.writeIdentity(entry.spec, keys, "replace");
    if (created.length > 0) await this.sync();
    await this.book.update((record) => {
      record.authorizedKeys = [...keys];
    });
    // A fleet made before keys were recorded also gets the fleet's own key in its VMs' seeds.
    return created.length > 0;
  }

  /** Rewrites a stopped VM's definition and identity for a changed spec; its layer and host key stay. */
  async redefine(spec: VmSpec, boot: BootFiles, authorizedKeys: readonly string[]): Promise<void> {
    await this.writeIdentity(spec, authorizedKeys, "replace");
    await this.backend.define(this.vm(spec.name), spec, boot, this.nic(spec));
    await this.sync();
    await this.book.update((record) => {
      const entry = record.vms[spec.name];
      if (entry) {
        entry.spec = spec;
        entry.baseId = boot.baseId;
        entry.updatedAt = new Date().toISOString();
      }
    });
  }

  /** Records that an upgrade stopped this VM and owes it a start (or paid it). */
  async markUpgrading(name: string, upgrading: boolean): Promise<void> {
    await this.book.update((record) => {
      const entry = record.vms[name];
      if (!entry) return;
      if (upgrading) entry.upgrading = true;
      else delete entry.upgrading;
    });
  }

  /**
   * A start an upgrade owed this VM is paid once the VM is up; one that failed stays owed, so the
   * next upgrade starts the VM again (also after it powered itself off).
   */
  private async paid(name: string, result: StartResult): Promise<StartResult> {
    if (result.ready && this.book.vm(name)?.upgrading) await this.markUpgrading(name, false);
    return result;
  }

  /**
   * A scratch file or directory in the fleet's directory (beside the layers, not in a possibly
   * RAM-backed /tmp), named so that the next session removes it if this shoal is killed.
   */
  private scratchPath(purpose: string): string {
    return tempPathBeside(join(this.paths.dir, purpose));
  }

  /** Makes the files written so far durable before the record says they exist. */
  private async sync(): Promise<void> {
    await this.deps.runner.run({ argv: ["sync", "-f", this.paths.vms] });
  }

  /**
   * Starts a VM and, with `timeoutMs`, waits until its serial log shows the union root built and
   * the image's init started, or a failure.
   */
  async start(name: string, timeoutMs: number | undefined): Promise<StartResult> {
    const vm = this.vm(name);
    const presence = await this.backend.presence(vm);
    if (presence.kind === "running") return this.paid(name, { ready: true });
    // A guest that powered itself off, or crashed, is still held by the hypervisor.
    if (presence.kind !== "absent") await this.backend.destroy(vm);
    await this.book.update((record) => {
      const entry = record.vms[name];
      if (entry) entry.running = true;
    });
    const offset = await stat(vm.paths.serialLog).then(
      (info) => info.size,
      () => 0,
    );
    try {
      const entry = this.book.vm(name);
      if (!entry) throw new Error(`internal: ${name} has no record`);
      const { spec } = entry;
      checkRecordedKernelArgs(name, spec.kernelArgs);
      await this.ensureNetwork();
      if (this.backend.nic === "tap") await this.network.ensureTap(spec.index);
      const boot = await new ImageStore(this.deps.runner, this.deps.layout).recordedBoot(
        name,
        entry,
      );
      await this.backend.start(vm, spec, boot, this.nic(spec));
    } catch (error) {
      // It never ran: a VM that could not start is stopped, not crashed.
      await this.book.update((record) => {
        const entry = record.vms[name];
        if (entry) entry.running = false;
      });
      throw error;
    }
    this.deps.event({ vm: name, phase: "booting" });
    if (timeoutMs === undefined) return this.paid(name, { ready: true });
    const result = await this.waitReady(vm, offset, timeoutMs);
    this.deps.event(
      result.ready
        ? { vm: name, phase: "ready" }
        : { vm: name, phase: "failed", detail: result.why },
    );
    return this.paid(name, result);
  }

  private async waitReady(vm: BackendVm, offset: number, timeoutMs: number): Promise<StartResult> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const log = await readFrom(vm.paths.serialLog, offset);
      if (READY_LINE.test(log)) return { ready: true };
      const fatal = FATAL_LINE.exec(log);
      // The guest wrote it: shown escaped, and no longer than a line.
      if (fatal)
        return {
          ready: false,
          why: escapeLine((fatal[1] || "the VM's init failed").slice(0, 300)),
        };
      const presence = await this.backend.presence(vm);
      if (presence.kind !== "running") {
        return {
          ready: false,
          why: `it stopped while booting (${presence.kind}); see \`shoal logs ${vm.name}\``,
        };
      }
      if (Date.now() > deadline) {
        return {
          ready: false,
          why: `not booted after ${Math.round(timeoutMs / 1000)} s; it keeps running, see \`shoal logs ${vm.name}\``,
        };
      }
      await sleep(POLL_MS);
    }
  }

  /**
   * Stops a VM: the power button, then, after `timeoutMs` (0: at once), the hypervisor ends it.
   * Recorded as not meant to run first, so a stop that is cut short never reads as a crash.
   */
  async stop(
    name: string,
    timeoutMs: number,
    { cancelsUpgrade = false } = {},
  ): Promise<"clean" | "forced" | "was stopped"> {
    const vm = this.vm(name);
    const recorded = this.book.vm(name);
    if (recorded?.running || (recorded?.upgrading && cancelsUpgrade)) {
      await this.book.update((record) => {
        const entry = record.vms[name];
        if (!entry) return;
        entry.running = false;
        if (cancelsUpgrade) delete entry.upgrading;
      });
    }
    const presence = await this.backend.presence(vm);
    if (presence.kind === "absent") return "was stopped";
    this.deps.event({ vm: name, phase: "stopping" });
    let outcome: "clean" | "forced" = "forced";
    if (presence.kind === "running" && timeoutMs > 0) {
      const deadline = Date.now() + timeoutMs;
      let pressedAt = 0;
      while (Date.now() < deadline) {
        // A guest that is still booting may not listen to the button yet, and loses the press.
        if (Date.now() - pressedAt >= PRESS_AGAIN_MS) {
          const pressed = await this.backend.requestShutdown(vm).then(
            () => true,
            () => false,
          );
          if (!pressed) break;
          pressedAt = Date.now();
        }
        if ((await this.backend.presence(vm)).kind !== "running") {
          outcome = "clean";
          break;
        }
        await sleep(POLL_MS);
      }
    } else if (presence.kind === "powered-off") {
      outcome = "clean";
    }
    await this.backend.destroy(vm);
    this.deps.event({ vm: name, phase: "stopped", detail: outcome });
    return outcome;
  }

  /**
   * Ends a VM and removes it with its layer and every file. Marked `deleting` first, so that a
   * half-removed VM is never taken for one that can start; the record entry goes last.
   */
  async delete(name: string): Promise<void> {
    const vm = this.vm(name);
    await this.backend.destroy(vm);
    const index = this.book.vm(name)?.spec.index;
    if (index !== undefined && this.backend.nic === "tap") await this.network.removeTap(index);
    await this.backend.forget(vm);
    if (this.book.vm(name)) {
      await this.book.update((record) => {
        const entry = record.vms[name];
        if (entry) {
          entry.phase = "deleting";
          entry.running = false;
        }
      });
    }
    await rm(vm.paths.dir, { recursive: true, force: true });
    if (this.book.vm(name)) {
      await this.book.update((record) => {
        delete record.vms[name];
      });
    }
    this.deps.event({ vm: name, phase: "deleted" });
  }

  /**
   * A created VM's disk layer, when no hypervisor holds it: reading it from the host (or replacing
   * it) while the guest writes it would see, or cause, a torn filesystem.
   */
  private async idleDiskLayer(name: string): Promise<{ spec: VmSpec; layer: string }> {
    const entry = this.book.vm(name);
    if (entry?.phase !== "created") {
      throw new UserError(`VM ${name} is not created`, "`shoal up` creates the fleet's VMs");
    }
    if (entry.spec.layer.type !== "disk") {
      throw new UserError(
        `VM ${name} has a tmpfs layer: its changes live in its memory and go when it stops`,
        "only disk layers are kept, looked at and reset",
      );
    }
    const presence = await this.backend.presence(this.vm(name));
    if (presence.kind !== "absent") {
      throw new UserError(
        `VM ${name} is ${presence.kind}: its layer is in use`,
        `\`shoal stop ${name}\` first`,
      );
    }
    return { spec: entry.spec, layer: this.paths.vm(name).layer };
  }

  /**
   * A stopped VM's layer, settled, and the base it was made over; no layer for a VM that never
   * booted (its layer is still blank).
   */
  async stoppedLayer(
    name: string,
  ): Promise<{ layer: string; base: string; baseId: string } | undefined> {
    const { layer } = await this.idleDiskLayer(name);
    return this.settledWithBase(name, layer);
  }

  /** A layer file (the VM's, or a copy), settled, and the base it was made over. */
  private async settledWithBase(
    name: string,
    layer: string,
    copy = false,
  ): Promise<{ layer: string; base: string; baseId: string } | undefined> {
    if (!(await layerFormatted(layer))) return undefined;
    await settleLayer(this.deps.runner, layer, copy);
    const baseId = await layerBaseId(this.deps.runner, layer);
    if (baseId === undefined) {
      throw new ShoalError(`VM ${name}'s layer does not say which base it was made over`, {
        hint: "it was not made by shoal's init; `shoal reset` starts it afresh",
      });
    }
    const base = this.deps.layout.image(baseId).base;
    if (!(await pathExists(base))) {
      throw new UserError(
        `VM ${name}'s layer was made over image ${baseId.slice(0, 12)}, which is no longer in the image store`,
        "its changes cannot be told from that base's files without it",
      );
    }
    return { layer, base, baseId };
  }

  /**
   * What a stopped VM changed relative to the base its layer was made over, without its identity
   * files; nothing for a VM that never booted.
   */
  async layerChanges(name: string): Promise<LayerChange[]> {
    const stopped = await this.stoppedLayer(name);
    if (!stopped) return [];
    return withoutIdentity(await listLayerChanges(this.deps.runner, stopped.layer, stopped.base));
  }

  /**
   * A VM's changes that hide files `newBase` has otherwise than its own base. A running VM's layer
   * (or any, `readOnly`) is read from a copy, settled there: what the VM last wrote to its disk.
   */
  async conflictsWith(name: string, newBase: string, readOnly = false): Promise<LayerChange[]> {
    const entry = this.book.vm(name);
    if (entry?.phase !== "created" || entry.spec.layer.type !== "disk") return [];
    if (!readOnly && (await this.backend.presence(this.vm(name))).kind === "absent") {
      const stopped = await this.stoppedLayer(name);
      return stopped
        ? upgradeConflicts(
            this.deps.runner,
            stopped.layer,
            stopped.base,
            newBase,
            this.scratchPath("compare"),
          )
        : [];
    }
    const copy = this.scratchPath(`layer-of-${name}`);
    try {
      await this.deps.runner.run({
        argv: ["cp", "--sparse=always", this.paths.vm(name).layer, copy],
        probe: true,
      });
      const settled = await this.settledWithBase(name, copy, true);
      // Awaited here: the copy goes in `finally`.
      return settled
        ? await upgradeConflicts(
            this.deps.runner,
            copy,
            settled.base,
            newBase,
            this.scratchPath("compare"),
          )
        : [];
    } finally {
      await rm(copy, { force: true });
    }
  }

  /**
   * Throws away stopped VMs' changes; their identity (seed) stays and is applied at their next
   * boot. Every VM is checked before any layer goes.
   */
  async resetLayers(names: readonly string[]): Promise<void> {
    const layers = [];
    for (const name of names) layers.push({ name, ...(await this.idleDiskLayer(name)) });
    for (const { name, spec, layer } of layers) {
      await replaceLayer(layer, spec.layer.sizeBytes);
      this.deps.event({ vm: name, phase: "reset" });
    }
  }

  /** The fleet's known_hosts: every created VM by name, name.fleet and address. */
  async writeKnownHosts(): Promise<void> {
    const entries: KnownHost[] = [];
    for (const name of this.recordedNames()) {
      const entry = this.book.vm(name);
      if (entry?.phase !== "created") continue;
      const key = await readHostKey(this.paths.vm(name).hostKeys).catch(() => undefined);
      if (!key)
        throw new ShoalError(`VM ${name} has lost its host key (${this.paths.vm(name).hostKeys})`);
      entries.push({
        hosts: [name, `${name}.${this.fleet}`, entry.spec.ip],
        publicKey: key.publicKey,
      });
    }
    await writeFileAtomic(this.paths.knownHosts, renderKnownHosts(entries));
  }
}

async function readFrom(path: string, offset: number): Promise<string> {
  const handle = await open(path, "r").catch(() => undefined);
  if (!handle) return "";
  try {
    const { size } = await handle.stat();
    const buffer = Buffer.alloc(Math.max(0, size - offset));
    await handle.read(buffer, 0, buffer.length, offset);
    return buffer.toString("utf8");
  } finally {
    await handle.close();
  }
}

/** The network mode a fleet's record holds; the fleet's own, isolated network if none. */
function modeOfRecord(network: FleetRecord["network"]): NetworkMode {
  return network?.bridge === undefined
    ? {
        kind: "isolated",
        nat: network?.nat ?? false,
        ...(network?.allow === undefined ? {} : { allow: network.allow }),
      }
    : { kind: "host-bridge", bridge: network.bridge };
}

/**
 * A VM made by an earlier shoal may carry a kernel parameter shoal now refuses (`console=`,
 * `init=`): its definition is rendered again at every start, so it is named here with the fix.
 */
function checkRecordedKernelArgs(name: string, kernelArgs: readonly string[]): void {
  for (const param of kernelArgs) {
    const problem = checkKernelParam(param);
    if (problem !== undefined) {
      throw new UserError(
        `VM ${name} was made with kernel_args ${quoted(param)}, which shoal no longer takes: ${problem}`,
        "take it out of the fleet file's kernel_args and run `shoal up`, which redefines the VM",
      );
    }
  }
}

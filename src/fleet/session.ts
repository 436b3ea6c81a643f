import { readdir } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import pLimit, { type LimitFunction } from "p-limit";
import type { Backend, BackendVm, VmNic } from "../backends/backend.js";
import type { FleetSpec, NetworkMode, VmSpec } from "../core/fleet.js";
import type { Owner } from "../core/net.js";
import { UserError } from "../errors.js";
import { ifExists } from "../host/paths.js";
import type { Runner } from "../host/runner.js";
import { FleetNetwork } from "../net/network.js";
import { removeStaleTempFiles, tempPathBeside } from "../state/atomic.js";
import type { FleetPaths, StateLayout } from "../state/layout.js";
import {
  emptyRecord,
  type FleetRecord,
  RecordBook,
  readFleetRecord,
  type VmRecord,
} from "../state/store.js";
import { checkNoLinksIn, checkOwnDirectory } from "../state/trust.js";

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
  /** How many VMs may boot at once; unset: twice the host's CPUs (see FleetSession.admitBoot). */
  readonly bootSlots?: number;
}

/** A VM name the fleet's record does not hold. */
export class UnknownVmError extends UserError {
  constructor(fleet: string, name: string) {
    super(`fleet ${fleet} has no VM ${name}`, "`shoal ps` lists its VMs");
  }
}

/**
 * One fleet's VMs on this host, for the duration of one command under the fleet's lock: their
 * record, their files and their hypervisor. The steps done to them (fleet/lifecycle.ts, layers.ts,
 * identity.ts, network-policy.ts) record each change before or after it happens, in the order
 * that lets a killed shoal be repaired by the next run.
 */
export class FleetSession {
  readonly paths: FleetPaths;
  readonly runner: Runner;
  readonly layout: StateLayout;
  /**
   * Boot admission: every start in this command, whichever verb asked for it, waits for one of
   * these slots and keeps it until the VM booted, so that a fleet of hundreds is not booted all at
   * once by `--workers` that are meant for lighter work. Twice the host's CPUs: a boot also waits
   * on disks and on shoal itself. Measured here (2 CPUs, 12 tiny VMs): 8 at once 59.7 s, 4 at
   * once 51.0 s, 2 at once 61.3 s.
   */
  readonly admitBoot: LimitFunction;

  private constructor(
    private readonly deps: SessionDeps,
    readonly fleet: string,
    readonly backend: Backend,
    readonly book: RecordBook,
  ) {
    this.paths = deps.layout.fleet(fleet);
    this.runner = deps.runner;
    this.layout = deps.layout;
    this.admitBoot = pLimit(deps.bootSlots ?? 2 * availableParallelism());
  }

  static async open(
    deps: SessionDeps,
    fleet: Pick<FleetSpec, "name" | "backend">,
    backend: Backend,
  ) {
    const paths = deps.layout.fleet(fleet.name);
    for (const dir of [deps.layout.fleets, paths.dir, paths.vms]) await checkOwnDirectory(dir);
    for (const dir of [paths.net.dir, paths.clientKeys]) await checkNoLinksIn(dir);
    for (const name of (await ifExists(readdir(paths.vms))) ?? []) {
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

  event(event: FleetEvent): void {
    this.deps.event(event);
  }

  notice(line: string): void {
    this.deps.notice(line);
  }

  /** A VM of the record; a name it does not hold is the user's mistake, named. */
  entry(name: string): VmRecord {
    const entry = this.book.vm(name);
    if (!entry) throw new UnknownVmError(this.fleet, name);
    return entry;
  }

  vm(name: string): BackendVm {
    const host = this.book.vm(name)?.spec.host;
    return {
      fleet: this.fleet,
      name,
      paths: this.paths.vm(name),
      ...(host === undefined ? {} : { host }),
    };
  }

  recordedNames(): string[] {
    return Object.keys(this.book.record.vms).sort();
  }

  /** VMs whose files are all made: the ones that can start, stop, be reached and looked at. */
  createdNames(): string[] {
    return this.recordedNames().filter((name) => this.book.vm(name)?.phase === "created");
  }

  /** VM directories the record does not know: left by a shoal killed while deleting, or by hand. */
  async strayNames(): Promise<string[]> {
    const entries = (await ifExists(readdir(this.paths.vms))) ?? [];
    return entries.filter((name) => this.book.vm(name) === undefined).sort();
  }

  /** The fleet's network as last recorded; the fleet's own, isolated one if none is. */
  get network(): FleetNetwork {
    return this.networkIn(modeOfRecord(this.book.record.network));
  }

  networkIn(mode: NetworkMode): FleetNetwork {
    return new FleetNetwork(
      this.runner,
      this.paths.net,
      ownerOf(this.layout, this.fleet),
      mode,
      this.backend.nic,
    );
  }

  /** Where a VM's network interface goes. */
  nic(spec: Pick<VmSpec, "index" | "name">): VmNic {
    const network = this.network;
    const bridge = network.bridgeName(this.book.record.vms[spec.name]?.bridge ?? 0);
    const nic = { tap: network.tap(spec.index), bridge };
    return network.namespace === undefined ? nic : { ...nic, namespace: network.namespace };
  }

  /**
   * A scratch file or directory in the fleet's directory (beside the layers, not in a possibly
   * RAM-backed /tmp), named so that the next session removes it if this shoal is killed.
   */
  scratchPath(purpose: string): string {
    return tempPathBeside(join(this.paths.dir, purpose));
  }

  /** Makes the files written so far durable before the record says they exist. */
  async sync(): Promise<void> {
    await this.runner.run({ argv: ["sync", "-f", this.paths.vms] });
  }
}

/** Who a state directory's fleet of that name is, as host-wide objects are marked. */
export function ownerOf(layout: StateLayout, fleet: string): Owner {
  return { root: layout.root, fleet };
}

/** The network mode a fleet's record holds; the fleet's own, isolated network if none. */
export function modeOfRecord(network: FleetRecord["network"]): NetworkMode {
  return network?.bridge === undefined
    ? {
        kind: "isolated",
        nat: network?.nat ?? false,
        ...(network?.allow === undefined ? {} : { allow: network.allow }),
      }
    : { kind: "host-bridge", bridge: network.bridge };
}

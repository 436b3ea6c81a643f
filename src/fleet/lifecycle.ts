import { mkdir, rm, stat } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import type { Presence } from "../backends/backend.js";
import { quoted } from "../core/excerpt.js";
import type { VmSpec } from "../core/fleet.js";
import { placeOnBridges } from "../core/net.js";
import type { ObservedState } from "../core/plan.js";
import type { BootFiles } from "../core/render/boot.js";
import { checkKernelParam } from "../core/syntax.js";
import { HostUnreachable, ShoalError, UserError } from "../errors.js";
import { type BootOutcome, waitForBoot } from "../guest/boot-wait.js";
import { ifExists, pathExists } from "../host/paths.js";
import { makeHostKey } from "../identity/identity.js";
import { ImageStore } from "../image/store.js";
import { createLayer } from "../layer/layer.js";
import type { VmRecord } from "../state/store.js";
import { eachVm, throwFirstFailure, type VmResult } from "./fan-out.js";
import { writeIdentity } from "./identity.js";
import { applyVmImpairments } from "./impairments.js";
import { ensureNetwork } from "./network-policy.js";
import type { FleetSession } from "./session.js";

const POLL_MS = 250;
const PRESS_AGAIN_MS = 10_000;

export interface VmStatus {
  readonly state: ObservedState;
  /** When it started, for a running VM. */
  readonly since?: Date;
}

/**
 * A VM's state: the hypervisor's word (asked now, or `observed` already), and for one it does not
 * hold, the record's.
 */
export async function vmStatus(
  session: FleetSession,
  name: string,
  observed?: Presence | HostUnreachable,
): Promise<VmStatus> {
  const recorded = session.book.vm(name);
  if (recorded?.phase !== "created") return { state: "missing" };
  let presence: Presence | HostUnreachable;
  try {
    presence = observed ?? (await session.backend.presence(session.vm(name)));
  } catch (error) {
    if (error instanceof HostUnreachable) return { state: "unreachable" };
    throw error;
  }
  if (presence instanceof HostUnreachable) return { state: "unreachable" };
  switch (presence.kind) {
    case "running":
      return presence.since ? { state: "running", since: presence.since } : { state: "running" };
    case "crashed":
      return { state: "crashed" };
    case "powered-off":
      return { state: "stopped" };
    case "absent": {
      const defined = await pathExists(session.paths.vm(name).dir);
      if (!defined) return { state: "missing" };
      return { state: recorded.running ? "crashed" : "stopped" };
    }
  }
}

/**
 * Writes every file of new VMs: host key, identity seed, blank layer, hypervisor definition.
 * Recorded as `creating` before and `created` after, with one filesystem sync for the batch.
 */
export async function createVms(
  session: FleetSession,
  specs: readonly VmSpec[],
  bootOf: (vm: VmSpec) => BootFiles,
  authorizedKeys: readonly string[],
  workers: number,
): Promise<void> {
  if (specs.length === 0) return;
  const now = new Date().toISOString();
  await session.book.update((record) => {
    const making = new Set(specs.map((spec) => spec.name));
    const others = Object.values(record.vms).filter((entry) => !making.has(entry.spec.name));
    // A host bridge is one bridge, which takes them all (the fleet file is checked for that).
    const bridges =
      session.network.namespace === undefined
        ? specs.map(() => 0)
        : placeOnBridges(
            others.map((entry) => entry.bridge ?? 0),
            specs.length,
          );
    if (bridges === undefined) throw new Error("internal: more VMs than the fleet's bridges take");
    specs.forEach((spec, i) => {
      // A copy of an earlier VM of this name elsewhere is still to be removed.
      const before = record.vms[spec.name];
      const leftOn = hostsLeft(before?.leftOn, before?.spec.host, spec.host);
      record.vms[spec.name] = {
        ...(leftOn ? { leftOn } : {}),
        spec,
        createdAt: now,
        updatedAt: now,
        phase: "creating",
        running: false,
        baseId: bootOf(spec).baseId,
        bridge: bridges[i] ?? 0,
      };
    });
  });
  const written = await eachVm(specs, workers, async (spec) => {
    const paths = session.paths.vm(spec.name);
    // Whatever a killed run left of this VM was never booted: start it afresh.
    await session.backend.destroy(session.vm(spec.name));
    await rm(paths.dir, { recursive: true, force: true });
    await mkdir(paths.dir, { recursive: true, mode: 0o700 });
    await makeHostKey(paths.hostKeys, `root@${spec.hostname}`);
    await writeIdentity(session, spec, authorizedKeys, "new");
    if (spec.layer.type === "disk") {
      if (session.backend.createLayer)
        await session.backend.createLayer(session.vm(spec.name), spec);
      else await createLayer(paths.layer, spec.layer.sizeBytes);
    }
    await session.backend.define(session.vm(spec.name), spec, bootOf(spec), session.nic(spec));
  });
  throwFirstFailure(written);
  await session.sync();
  await session.book.update((record) => {
    for (const spec of specs) {
      const entry = record.vms[spec.name];
      if (entry) entry.phase = "created";
    }
  });
  for (const spec of specs) session.event({ vm: spec.name, phase: "created" });
}

/** Rewrites a stopped VM's definition and identity for a changed spec; its layer and host key stay. */
export async function redefineVm(
  session: FleetSession,
  spec: VmSpec,
  boot: BootFiles,
  authorizedKeys: readonly string[],
): Promise<void> {
  await writeIdentity(session, spec, authorizedKeys, "replace");
  await session.backend.define(session.vm(spec.name), spec, boot, session.nic(spec));
  await session.sync();
  await session.book.update((record) => {
    const entry = record.vms[spec.name];
    if (entry) {
      entry.spec = spec;
      entry.baseId = boot.baseId;
      entry.updatedAt = new Date().toISOString();
    }
  });
}

/** `leftOn` with `add` in it and `current` (where the VM is) not: undefined for none. */
function hostsLeft(
  leftOn: readonly string[] | undefined,
  add: string | undefined,
  current: string | undefined,
): string[] | undefined {
  const left = [...new Set([...(leftOn ?? []), ...(add === undefined ? [] : [add])])].filter(
    (host) => host !== current,
  );
  return left.length > 0 ? left : undefined;
}

/** Writes `leftOn` into a VM's record entry; none takes the field away. */
function putLeftOn(entry: VmRecord, leftOn: string[] | undefined): void {
  if (leftOn) entry.leftOn = leftOn;
  else delete entry.leftOn;
}

async function setLeftOn(session: FleetSession, name: string, leftOn: string[] | undefined) {
  await session.book.update((record) => {
    const entry = record.vms[name];
    if (entry) putLeftOn(entry, leftOn);
  });
}

/**
 * Makes a VM again on the host its spec now names (a fleet over libvirt hosts), stopped. From a
 * host that answers, its layer goes with it and its old domain and volumes are removed; from one
 * that does not (`up --reschedule`), it gets a blank layer, and its old copy is removed once that
 * host answers again (removeLeftovers). Its identity stays: the same seed, host key, MAC and IP.
 * The new host is recorded among those that may hold a copy before anything is made there, so a
 * move cut short leaves nothing the next run does not know of.
 */
export async function moveVm(
  session: FleetSession,
  spec: VmSpec,
  boot: BootFiles,
  authorizedKeys: readonly string[],
  { fromReachable, stopTimeoutMs }: { fromReachable: boolean; stopTimeoutMs: number },
): Promise<void> {
  const from = session.vm(spec.name);
  const to = { ...from, ...(spec.host === undefined ? {} : { host: spec.host }) };
  const recorded = session.entry(spec.name);
  await setLeftOn(session, spec.name, hostsLeft(recorded.leftOn, spec.host, from.host));
  const carried = session.scratchPath(`layer-of-${spec.name}`);
  try {
    let contents: string | undefined;
    if (fromReachable) {
      await stopVm(session, spec.name, stopTimeoutMs);
      if (spec.layer.type === "disk" && session.backend.copyLayer) {
        await session.backend.copyLayer(from, carried);
        contents = carried;
      }
    }
    if (spec.layer.type === "disk") await session.backend.createLayer?.(to, spec, contents);
    await writeIdentity(session, spec, authorizedKeys, "replace");
    await session.backend.define(to, spec, boot, session.nic(spec));
  } finally {
    await rm(carried, { force: true });
  }
  // The copy of its console log here follows the new host's, which starts empty.
  await rm(from.paths.serialLog, { force: true });
  await session.sync();
  await session.book.update((record) => {
    const entry = record.vms[spec.name];
    if (!entry) return;
    putLeftOn(entry, hostsLeft(entry.leftOn, from.host, spec.host));
    entry.spec = spec;
    entry.baseId = boot.baseId;
    entry.running = false;
    entry.updatedAt = new Date().toISOString();
  });
  if (fromReachable) await removeLeftovers(session, spec.name);
}

/**
 * Removes what a moved VM left on the hosts it was moved off (never on the host it is on now)
 * that answer now; the others keep it until they do, and one that fails otherwise is said and
 * kept for the next run. Returns the hosts it was removed from.
 */
export async function removeLeftovers(
  session: FleetSession,
  name: string,
  down: ReadonlySet<string> = new Set(),
): Promise<string[]> {
  const entry = session.book.vm(name);
  const removed: string[] = [];
  for (const host of entry?.leftOn ?? []) {
    if (down.has(host) || host === entry?.spec.host) continue;
    const there = { ...session.vm(name), host };
    try {
      await session.backend.destroy(there);
      await session.backend.forget(there);
      removed.push(host);
    } catch (error) {
      if (!(error instanceof ShoalError)) throw error;
      if (!(error instanceof HostUnreachable)) {
        session.notice(
          `VM ${name}'s old copy on host ${host} stays for the next run: ${error.message}`,
        );
      }
    }
  }
  const left = entry?.leftOn?.filter((host) => !removed.includes(host));
  if (removed.length > 0)
    await setLeftOn(session, name, hostsLeft(left, undefined, entry?.spec.host));
  return removed;
}

/** Records that an upgrade stopped this VM and owes it a start (or paid it). */
export async function markUpgrading(
  session: FleetSession,
  name: string,
  upgrading: boolean,
): Promise<void> {
  await session.book.update((record) => {
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
async function paid(session: FleetSession, name: string, result: BootOutcome) {
  if (result.ready && session.book.vm(name)?.upgrading) await markUpgrading(session, name, false);
  return result;
}

async function setRunning(session: FleetSession, name: string, running: boolean): Promise<void> {
  await session.book.update((record) => {
    const entry = record.vms[name];
    if (entry) entry.running = running;
  });
}

/**
 * Starts a VM and, with `timeoutMs`, waits until its serial log shows the union root built and
 * the image's init started (for shoal's own images: until the image says it is booted), or a
 * failure.
 */
export function startVm(
  session: FleetSession,
  name: string,
  timeoutMs: number | undefined,
): Promise<BootOutcome> {
  return session.admitBoot(() => startAdmitted(session, name, timeoutMs));
}

async function startAdmitted(
  session: FleetSession,
  name: string,
  timeoutMs: number | undefined,
): Promise<BootOutcome> {
  const vm = session.vm(name);
  const entry = session.entry(name);
  const presence = await session.backend.presence(vm);
  if (presence.kind === "running") return paid(session, name, { ready: true });
  // A guest that powered itself off, or crashed, is still held by the hypervisor.
  if (presence.kind !== "absent") await session.backend.destroy(vm);
  await setRunning(session, name, true);
  await session.backend.fetchConsoleLog?.(vm);
  const offset = (await ifExists(stat(vm.paths.serialLog)))?.size ?? 0;
  let untilBooted = false;
  try {
    const { spec } = entry;
    checkRecordedKernelArgs(name, spec.kernelArgs);
    await ensureNetwork(session);
    const bridge = entry.bridge ?? 0;
    await session.network.ensureBridge(bridge);
    if (session.backend.nic === "tap") {
      await session.network.ensureTap(spec.index, bridge);
      await applyVmImpairments(session, name);
    }
    const boot = await new ImageStore(session.runner, session.layout).recordedBoot(name, entry);
    untilBooted = boot.reportsBoot === true;
    await session.backend.start(vm, spec, boot, session.nic(spec));
  } catch (error) {
    // It never ran: a VM that could not start is stopped, not crashed.
    await setRunning(session, name, false);
    throw error;
  }
  // Xen makes the vif as it creates the domain; one that cannot take them fails a running VM.
  if (session.backend.nic === "vif") await applyVmImpairments(session, name);
  session.event({ vm: name, phase: "booting" });
  if (timeoutMs === undefined) return paid(session, name, { ready: true });
  const result = await waitForBoot({
    vm: name,
    serialLog: vm.paths.serialLog,
    ...(session.backend.fetchConsoleLog
      ? { fetch: () => session.backend.fetchConsoleLog?.(vm) ?? Promise.resolve() }
      : {}),
    offset,
    timeoutMs,
    untilBooted,
    stopped: async () => {
      const now = await session.backend.presence(vm);
      return now.kind === "running" ? undefined : now.kind;
    },
  });
  session.event(
    result.ready ? { vm: name, phase: "ready" } : { vm: name, phase: "failed", detail: result.why },
  );
  return paid(session, name, result);
}

/**
 * Stops a VM: the power button, then, after `timeoutMs` (0: at once), the hypervisor ends it.
 * Recorded as not meant to run first, so a stop that is cut short never reads as a crash.
 */
export async function stopVm(
  session: FleetSession,
  name: string,
  timeoutMs: number,
  { cancelsUpgrade = false } = {},
): Promise<"clean" | "forced" | "timed out" | "was stopped"> {
  const vm = session.vm(name);
  const recorded = session.book.vm(name);
  if (recorded?.running || (recorded?.upgrading && cancelsUpgrade)) {
    await session.book.update((record) => {
      const entry = record.vms[name];
      if (!entry) return;
      entry.running = false;
      if (cancelsUpgrade) delete entry.upgrading;
    });
  }
  const presence = await session.backend.presence(vm);
  if (presence.kind === "absent") return "was stopped";
  session.event({ vm: name, phase: "stopping" });
  let outcome: "clean" | "forced" | "timed out" = "forced";
  if (presence.kind === "running" && timeoutMs > 0) {
    const deadline = Date.now() + timeoutMs;
    outcome = "timed out";
    let pressedAt = 0;
    while (Date.now() < deadline) {
      // A guest that is still booting may not listen to the button yet, and loses the press.
      if (Date.now() - pressedAt >= PRESS_AGAIN_MS) {
        const pressed = await session.backend.requestShutdown(vm).then(
          () => true,
          () => false,
        );
        // A button that cannot be pressed at all (QEMU's monitor gone) leaves the forced end.
        // Pressed again, it may fail because the guest went down since it was last looked at (xl
        // no longer knows a domain its monitor destroyed): what became of it is looked at below.
        if (!pressed && pressedAt === 0) {
          outcome = "forced";
          break;
        }
        pressedAt = Date.now();
      }
      if ((await session.backend.presence(vm)).kind !== "running") {
        outcome = "clean";
        break;
      }
      await sleep(POLL_MS);
    }
  } else if (presence.kind === "powered-off") {
    outcome = "clean";
  }
  await session.backend.destroy(vm);
  session.event({ vm: name, phase: "stopped", detail: outcome });
  return outcome;
}

/**
 * Ends VMs and removes each with its layer and every file, `workers` at a time. All are marked
 * `deleting` first, so that a half-removed VM is never taken for one that can start; the entries
 * of those removed go last. Two record writes for the batch, however many VMs.
 */
export async function deleteVms(
  session: FleetSession,
  names: readonly string[],
  workers: number,
  options: {
    readonly withNetwork?: boolean;
    /** Hosts known not to answer: what VMs left there is not looked for now. */
    readonly down?: ReadonlySet<string>;
  } = {},
): Promise<VmResult<void>[]> {
  const recorded = names.filter((name) => session.book.vm(name) !== undefined);
  if (recorded.length > 0) {
    await session.book.update((record) => {
      for (const name of recorded) {
        const entry = record.vms[name];
        if (entry) {
          entry.phase = "deleting";
          entry.running = false;
        }
      }
    });
  }
  // Removed with the fleet's network, the namespace takes every tap along at once.
  const tapsGoAlone = !options.withNetwork || session.network.namespace === undefined;
  const results = await eachVm(names, workers, async (name) => {
    const vm = session.vm(name);
    await session.backend.destroy(vm);
    const index = session.book.vm(name)?.spec.index;
    if (index !== undefined && tapsGoAlone) {
      await session.network.removeTap(index);
    }
    await session.backend.forget(vm);
    await removeLeftovers(session, name, options.down);
    // A copy left on a host that cannot be reached keeps the VM in the record until it answers.
    const unreached = session.book.vm(name)?.leftOn?.[0];
    if (unreached !== undefined) {
      throw new HostUnreachable(unreached, `VM ${name}'s old copy there is not removed yet`);
    }
    await rm(vm.paths.dir, { recursive: true, force: true });
  });
  const removed = results.filter((result) => result.ok).map((result) => result.name);
  if (removed.some((name) => session.book.vm(name) !== undefined)) {
    await session.book.update((record) => {
      for (const name of removed) delete record.vms[name];
    });
  }
  for (const name of removed) session.event({ vm: name, phase: "deleted" });
  return results;
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

import { readFileSync } from "node:fs";
import { appendFile, mkdir, writeFile } from "node:fs/promises";
import type { Duplex } from "node:stream";
import type { Backend, BackendVm, Presence } from "../../src/backends/backend.js";
import type { FleetSpec, VmSpec } from "../../src/core/fleet.js";
import type { BootFiles } from "../../src/core/render/boot.js";
import { type ConvergeOptions, converge } from "../../src/fleet/converge.js";
import { FleetSession } from "../../src/fleet/session.js";
import {
  type Command,
  type CommandResult,
  ProcessRunner,
  type Runner,
} from "../../src/host/runner.js";
import { type StateLayout, stateLayout } from "../../src/state/layout.js";
import { readFleetRecord } from "../../src/state/store.js";
import { fleetOf } from "./fleet.js";
import { RecordingRunner } from "./recording-runner.js";

/** What a fake guest does when it is started. */
export type GuestBehaviour = "boots" | "fails" | "powers off" | "hangs";

/** A shoal killed at this point: the fake hypervisor keeps what it had, shoal's process is gone. */
export class Killed extends Error {}

interface FakeVm {
  state: "running" | "powered-off" | "crashed";
  baseId: string;
}

/**
 * A hypervisor in memory for lifecycle tests that need no VM: VMs start, stop, crash and power
 * off on demand, and what each did is kept as a list of calls. A guest "boots" by writing the
 * line shoal's init writes to its serial log.
 */
export class FakeBackend implements Backend {
  readonly name = "qemu";
  readonly nic = "vif" as const;
  readonly running = new Map<string, FakeVm>();
  readonly calls: string[] = [];
  /** What each VM's guest does at its starts (default: boots). */
  readonly guests = new Map<string, GuestBehaviour>();
  /** A guest that ignores the power button. */
  readonly deaf = new Set<string>();
  /**
   * A guest slow to go down: it is gone by the time the button is pressed again, and that press
   * fails, as `xl shutdown` fails on a domain that went away since it was last looked at.
   */
  readonly slow = new Set<string>();
  /** A VM whose power button cannot be pressed (QEMU's monitor gone). */
  readonly buttonless = new Set<string>();
  /**
   * Throws `Killed` at the call named `step VM` (once). A killed shoal runs none of its error
   * handling, so what the fleet's record held at that instant is kept for `afterKill`.
   */
  killAt: string | undefined;
  /** How long a booting guest takes to write its boot line (0: at its start). */
  bootMs = 0;
  /** The most guests that were booting at one time. */
  mostBooting = 0;
  private booting = 0;
  private recordAtKill: { path: string; text: Buffer } | undefined;

  constructor(private readonly recordPath?: string) {}

  private call(step: string, vm: BackendVm): void {
    const call = `${step} ${vm.name}`;
    this.calls.push(call);
    if (this.killAt === call) {
      this.killAt = undefined;
      if (this.recordPath)
        this.recordAtKill = { path: this.recordPath, text: readFileSync(this.recordPath) };
      throw new Killed(`killed at ${call}`);
    }
  }

  /** Puts back the record as the kill left it (the thrown Killed unwound shoal's handlers). */
  async afterKill(): Promise<void> {
    if (!this.recordAtKill) throw new Error("no kill happened");
    await writeFile(this.recordAtKill.path, this.recordAtKill.text);
    this.recordAtKill = undefined;
  }

  async define(vm: BackendVm): Promise<void> {
    this.call("define", vm);
  }

  async start(vm: BackendVm, _spec: unknown, boot: BootFiles): Promise<void> {
    this.call("start", vm);
    const guest = this.guests.get(vm.name) ?? "boots";
    this.running.set(vm.name, {
      state: guest === "powers off" ? "powered-off" : "running",
      baseId: boot.baseId,
    });
    await mkdir(vm.paths.dir, { recursive: true });
    const line =
      guest === "boots"
        ? "shoal: root is the union of base and layer\n"
        : guest === "fails"
          ? "shoal: FATAL: the fake guest fails\n"
          : "";
    if (guest !== "boots" || this.bootMs === 0) {
      await appendFile(vm.paths.serialLog, line);
      return;
    }
    this.booting += 1;
    this.mostBooting = Math.max(this.mostBooting, this.booting);
    setTimeout(() => {
      this.booting -= 1;
      void appendFile(vm.paths.serialLog, line);
    }, this.bootMs);
  }

  async presence(vm: BackendVm): Promise<Presence> {
    const found = this.running.get(vm.name);
    if (!found) return { kind: "absent" };
    if (found.state === "crashed") return { kind: "crashed", reason: "the fake crashed" };
    return found.state === "running" ? { kind: "running" } : { kind: "powered-off" };
  }

  async requestShutdown(vm: BackendVm): Promise<void> {
    this.call("shutdown", vm);
    const found = this.running.get(vm.name);
    if (this.buttonless.has(vm.name)) throw new Error(`${vm.name}'s monitor is gone`);
    if (this.slow.has(vm.name)) {
      if (this.calls.filter((call) => call === `shutdown ${vm.name}`).length === 1) return;
      this.running.delete(vm.name);
      throw new Error(`${vm.name} is an invalid domain identifier`);
    }
    if (found && !this.deaf.has(vm.name)) found.state = "powered-off";
  }

  async destroy(vm: BackendVm): Promise<void> {
    if (this.running.has(vm.name)) this.call("destroy", vm);
    this.running.delete(vm.name);
  }

  async forget(): Promise<void> {}

  async openConsole(): Promise<Duplex> {
    throw new Error("the fake backend has no consoles");
  }

  /** The guest dies, as a kernel panic or an OOM kill would end it. */
  crash(name: string): void {
    const found = this.running.get(name);
    if (found) found.state = "crashed";
  }

  /** The hypervisor loses the VM (its process killed, the host rebooted). */
  lose(name: string): void {
    this.running.delete(name);
  }

  /** The base each running VM booted from. */
  baseOf(name: string): string | undefined {
    return this.running.get(name)?.baseId;
  }
}

/** The bridge fake fleets sit on, so that no network of their own is made. */
export const FAKE_BRIDGE = "br-fake";

/** How the host answers the check that the fake fleets' bridge is there. */
function fakeBridgeAnswer(command: Command): CommandResult | undefined {
  return command.argv.join(" ") === `ip -d -o link show dev ${FAKE_BRIDGE}`
    ? {
        code: 0,
        stdout: `7: ${FAKE_BRIDGE}: <BROADCAST,UP> mtu 1500 \\    bridge forward_delay 0\n`,
        stderr: "",
      }
    : undefined;
}

/** A runner that runs nothing and says the fake fleets' bridge is there. */
export function fakeHostRunner(): RecordingRunner {
  return new RecordingRunner((command) => fakeBridgeAnswer(command) ?? {});
}

/**
 * A runner that runs every command for real (debugfs, e2fsck, cp on real layer files), but for
 * the check that the fake fleets' bridge is there.
 */
export function realToolsRunner(): Runner {
  const real = new ProcessRunner();
  return {
    run: async (command) => fakeBridgeAnswer(command) ?? real.run(command),
  };
}

/** An image in the store as far as a VM's start reads it: its record, under a made-up id. */
export async function fakeImage(layout: StateLayout, name: string, idDigit: string) {
  const id = idDigit.repeat(64);
  const paths = layout.image(id);
  await mkdir(paths.dir, { recursive: true });
  await writeFile(
    paths.meta,
    JSON.stringify({
      name,
      id,
      size: 1,
      kernelVersion: "6.1.0-fake",
      source: "fake",
      created: "t",
      boot: "shoal-initramfs",
      sealed: { removed: [], emptied: [] },
    }),
  );
  const boot: BootFiles = {
    kernel: paths.kernel,
    initrd: paths.initrd,
    base: paths.base,
    baseId: id,
  };
  return { name, image: name, id, boot };
}

/** A session on a state directory, as each shoal command opens one (a new one after a kill). */
export function openSession(
  stateDir: string,
  fleet: FleetSpec,
  backend: FakeBackend,
  runner: Runner = fakeHostRunner(),
  bootSlots?: number,
) {
  const events: string[] = [];
  return FleetSession.open(
    {
      runner,
      layout: stateLayout(stateDir),
      event: (event) => events.push(`${event.phase} ${event.vm}`),
      notice: () => {},
      ...(bootSlots === undefined ? {} : { bootSlots }),
    },
    fleet,
    backend,
  ).then((session) => ({ session, events }));
}

/** Fleet "fake" of `count` VMs on the fake bridge (small layers: some tests read them whole). */
export const fakeFleet = (count: number, image = "tiny") =>
  fleetOf(
    `name: fake\nimage: ${image}\ncount: ${count}\nvm: { layer: { size: 64M } }\nnetwork: { bridge: ${FAKE_BRIDGE}, managed: false }\n`,
  );

const UP: ConvergeOptions = {
  goal: "running",
  workers: 4,
  bootTimeoutMs: 5_000,
  stopTimeoutMs: 1_000,
};

/** A state directory with images "tiny" and "next", as `up` and `upgrade` find them. */
export async function stateWithImages(dir: string) {
  const layout = stateLayout(dir);
  const tiny = await fakeImage(layout, "tiny", "a");
  const next = await fakeImage(layout, "next", "b");
  const bootOf = (vm: Pick<VmSpec, "image">) => (vm.image === "next" ? next.boot : tiny.boot);
  return { dir, layout, tiny, next, bootOf };
}

/** One `shoal up`: a fresh session on the state directory, as a new shoal process opens it. */
export async function upOnFake(
  dir: string,
  fleet: FleetSpec,
  backend: FakeBackend,
  bootOf: (vm: VmSpec) => BootFiles,
  options: Partial<ConvergeOptions> = {},
  runner?: Runner,
) {
  const { session, events } = await openSession(dir, fleet, backend, runner);
  const outcomes = await converge(session, fleet, bootOf, { ...UP, ...options });
  return { session, events, outcomes };
}

/** Fleet "fake"'s record as the last command left it. */
export async function fakeRecord(dir: string) {
  const record = await readFleetRecord(stateLayout(dir), "fake");
  if (!record) throw new Error("no record");
  return record;
}

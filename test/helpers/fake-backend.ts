import { readFileSync } from "node:fs";
import { appendFile, mkdir, writeFile } from "node:fs/promises";
import type { Duplex } from "node:stream";
import type { Backend, BackendVm, Presence } from "../../src/backends/backend.js";
import type { FleetSpec } from "../../src/core/fleet.js";
import type { BootFiles } from "../../src/core/render/boot.js";
import { FleetSession } from "../../src/fleet/session.js";
import { type StateLayout, stateLayout } from "../../src/state/layout.js";
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
   * Throws `Killed` at the call named `step VM` (once). A killed shoal runs none of its error
   * handling, so what the fleet's record held at that instant is kept for `afterKill`.
   */
  killAt: string | undefined;
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
    await appendFile(vm.paths.serialLog, line);
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

/** A runner that runs nothing and says the fake fleets' bridge is there. */
export function fakeHostRunner(): RecordingRunner {
  return new RecordingRunner((command) =>
    command.argv.join(" ") === `ip -d -o link show dev ${FAKE_BRIDGE}`
      ? { stdout: `7: ${FAKE_BRIDGE}: <BROADCAST,UP> mtu 1500 \\    bridge forward_delay 0\n` }
      : {},
  );
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
export function openSession(stateDir: string, fleet: FleetSpec, backend: FakeBackend) {
  const events: string[] = [];
  const runner = fakeHostRunner();
  return FleetSession.open(
    {
      runner,
      layout: stateLayout(stateDir),
      event: (event) => events.push(`${event.phase} ${event.vm}`),
      notice: () => {},
    },
    fleet,
    backend,
  ).then((session) => ({ session, events, runner }));
}

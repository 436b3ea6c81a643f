import { Option } from "@commander-js/extra-typings";
import picomatch from "picomatch";
import { ACCEL_SETTINGS, type AccelSetting, backendFor } from "../backends/registry.js";
import type { BackendName, FleetSpec, VmSpec } from "../core/fleet.js";
import { isDnsLabel } from "../core/names.js";
import type { BootFiles } from "../core/render/boot.js";
import { escapeText } from "../core/terminal.js";
import { ShoalError, UserError } from "../errors.js";
import type { PowerOutcome } from "../fleet/power.js";
import { FleetSession } from "../fleet/session.js";
import { ImageStore, imageBoot } from "../image/store.js";
import { loadFleetFile } from "../spec/load.js";
import { checkSocketPaths } from "../state/layout.js";
import { withLock } from "../state/lock.js";
import { readFleetRecord } from "../state/store.js";
import { type Context, contextOf } from "./context.js";
import { FleetProgress } from "./progress.js";
import { formatTable } from "./table.js";

/** The plumbing every fleet verb shares: which fleet, its lock, its backend, which VMs. */

export function fleetNameOption() {
  return new Option(
    "--fleet <name>",
    "act on a fleet by name, without reading its fleet file (for a file that is gone or broken)",
  );
}

export function workersOption(defaultCount = 8) {
  return new Option("--workers <n>", "how many VMs to work on at once")
    .default(defaultCount)
    .argParser((value) => positiveInteger("--workers", value));
}

export function timeoutOption(what: string, seconds: number) {
  return new Option("--timeout <seconds>", what)
    .default(seconds)
    .argParser((value) => positiveInteger("--timeout", value));
}

export function positiveInteger(flag: string, value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < 1) {
    throw new UserError(`${flag} ${JSON.stringify(value)} is not a positive whole number`);
  }
  return n;
}

/** A day: a wait longer than that is a mistake in the script, not patience. */
export const MAX_LOCK_WAIT_S = 86_400;

/** `--lock-wait SECONDS`, for every verb that takes the fleet's lock. */
export function lockWaitOption() {
  return new Option(
    "--lock-wait <seconds>",
    "when another shoal command holds the fleet's lock, wait this long for it before giving up (exit 3)",
  )
    .default(0)
    .argParser((value) => {
      const n = Number(value);
      if (!/^\d+$/.test(value) || n > MAX_LOCK_WAIT_S) {
        throw new UserError(
          `--lock-wait ${JSON.stringify(value)} is not a number of seconds from 0 to ${MAX_LOCK_WAIT_S}`,
          "--lock-wait 60 waits up to a minute for the command holding the lock",
        );
      }
      return n;
    });
}

export interface FleetTarget {
  readonly file: string;
  readonly fleet?: string;
  /** Seconds to wait for the fleet's lock (`lockWaitOption`); every verb that locks has it. */
  readonly lockWait?: number;
}

export interface OpenFleet {
  readonly context: Context;
  readonly session: FleetSession;
  /** The fleet file, when the verb was given one (not with --fleet). */
  readonly spec: FleetSpec | undefined;
}

/** SHOAL_ACCEL: `kvm` or `tcg` skips the KVM probe on a host whose answer the user knows. */
function accelSetting(value: string | undefined): AccelSetting {
  if (value === undefined || value === "") return "auto";
  const setting = ACCEL_SETTINGS.find((known) => known === value);
  if (!setting) {
    throw new UserError(
      `SHOAL_ACCEL=${JSON.stringify(value)} is not one of ${ACCEL_SETTINGS.join(", ")}`,
    );
  }
  return setting;
}

/** Where progress and notices go: stderr, so stdout stays the result (tables, JSON). */
export function notice(line: string): void {
  process.stderr.write(`shoal: ${escapeText(line)}\n`);
}

async function fleetOf(
  context: Context,
  target: FleetTarget,
): Promise<{ name: string; backend: BackendName; spec: FleetSpec | undefined }> {
  if (target.fleet !== undefined) {
    if (!isDnsLabel(target.fleet)) {
      throw new UserError(`--fleet ${JSON.stringify(target.fleet)} is not a fleet name`);
    }
    const record = await readFleetRecord(await context.layout(), target.fleet);
    if (!record)
      throw new UserError(
        `there is no fleet ${target.fleet} on this host`,
        "`shoal ps --fleet NAME` needs a fleet shoal created",
      );
    return { name: target.fleet, backend: record.backend, spec: undefined };
  }
  const spec = await loadFleetFile(target.file);
  return { name: spec.name, backend: spec.backend, spec };
}

/**
 * Opens a fleet for a verb: reads its file (or takes --fleet), and with `lock` holds the fleet's
 * lock while `work` runs, so two shoal commands never change one fleet at once.
 */
export async function withFleet<T>(
  command: { optsWithGlobals(): object },
  target: FleetTarget,
  lock: string | undefined,
  work: (open: OpenFleet) => Promise<T>,
): Promise<T> {
  const context = contextOf(command);
  if (lock !== undefined && context.dryRun) {
    // Fleet verbs change files and processes, not only run commands; a partial dry run would mislead.
    throw new UserError(
      `--dry-run does not apply to \`shoal ${lock}\``,
      "`shoal plan` shows what `shoal up` would do to each VM",
    );
  }
  const layout = await context.layout();
  const fleet = await fleetOf(context, target);
  if (fleet.spec) {
    checkSocketPaths(
      layout,
      fleet.name,
      fleet.spec.vms.map((vm) => vm.name),
    );
  }
  const backend = backendFor(fleet.backend, {
    runner: context.runner,
    layout,
    notice,
    accel: accelSetting(process.env.SHOAL_ACCEL),
  });
  // Verbs that change VMs show their progress; the others have no events.
  const progress = lock === undefined ? undefined : new FleetProgress(`shoal ${lock}`);
  const run = async () => {
    const session = await FleetSession.open(
      { runner: context.runner, layout, event: progress?.onEvent ?? (() => {}), notice },
      { name: fleet.name, backend: fleet.backend },
      backend,
    );
    try {
      return await work({ context, session, spec: fleet.spec });
    } finally {
      // After a failure too: a VM that did not start holds nothing on the host.
      if (lock !== undefined) {
        await backend.tidy?.().catch((error: unknown) => {
          if (!(error instanceof ShoalError)) throw error;
          notice(`what stopped VMs held on the host stays for the next command: ${error.message}`);
        });
      }
      progress?.finish();
    }
  };
  if (lock === undefined) return run();
  if (target.lockWait === undefined) {
    throw new Error(`internal: \`shoal ${lock}\` takes the fleet's lock but has no --lock-wait`);
  }
  return withLock(
    context.runner,
    layout.fleet(fleet.name).lock,
    {
      subject: `fleet ${fleet.name}`,
      command: lock,
      waitSeconds: target.lockWait,
      onWait: (holder) => {
        const who = holder
          ? `shoal ${holder.command} (pid ${holder.pid})`
          : "another shoal command";
        notice(`fleet ${fleet.name} is busy: waiting up to ${target.lockWait}s for ${who}`);
      },
      hint:
        target.lockWait === 0
          ? "wait for it to finish, or give --lock-wait SECONDS to wait for it"
          : "wait for it to finish, or give a longer --lock-wait",
    },
    run,
  );
}

/**
 * The VMs named on the command line, by name or glob pattern (`web-*`); every pattern must match
 * one of `known`. No patterns: all of `known`.
 */
export function selectVms(patterns: readonly string[], known: readonly string[]): string[] {
  if (patterns.length === 0) return [...known];
  const selected = new Set<string>();
  for (const pattern of patterns) {
    const isMatch = picomatch(pattern);
    const matches = known.filter((name) => isMatch(name));
    if (matches.length === 0) {
      throw new UserError(
        `no VM of this fleet matches ${JSON.stringify(pattern)}`,
        "`shoal ps` lists them",
      );
    }
    for (const name of matches) selected.add(name);
  }
  return known.filter((name) => selected.has(name));
}

/** The one VM a verb like `console` or `ssh` acts on: a name, not a pattern. */
export function oneVm(session: FleetSession, name: string): string {
  const [vm] = selectVms([name], session.recordedNames());
  if (vm === undefined || vm !== name)
    throw new UserError(`give one VM name, not ${JSON.stringify(name)}`);
  return vm;
}

/** Every image the fleet file names, found before anything changes; a missing one is bad input. */
export async function bootFilesOf(
  context: Context,
  vms: readonly VmSpec[],
): Promise<(vm: VmSpec) => BootFiles> {
  const store = new ImageStore(context.runner, await context.layout());
  const boots = new Map<string, BootFiles>();
  for (const name of new Set(vms.map((vm) => vm.image))) {
    boots.set(name, imageBoot(await context.layout(), await store.get(name)));
  }
  return (vm) => {
    const boot = boots.get(vm.image);
    if (!boot) throw new Error(`internal: image ${vm.image} of ${vm.name} was not looked up`);
    return boot;
  };
}

/** The VMs a power verb may act on: created ones, by name or pattern. */
export function createdVms(session: FleetSession, patterns: readonly string[]): string[] {
  const created = session
    .recordedNames()
    .filter((name) => session.book.vm(name)?.phase === "created");
  // `down` of a fleet never brought up has nothing to do; naming VMs of it is a mistake.
  if (created.length === 0 && patterns.length > 0) {
    throw new UserError(`fleet ${session.fleet} has no VMs yet`, "`shoal up` creates them");
  }
  return selectVms(patterns, created);
}

/** Prints what a power verb did to each VM and fails (exit 1) if any VM failed. */
export function reportPower(
  context: Context,
  verb: string,
  outcomes: readonly PowerOutcome[],
): void {
  context.print(
    formatTable(
      ["NAME", "RESULT"],
      outcomes.map((outcome) => [
        outcome.name,
        outcome.ok ? outcome.detail : `failed: ${outcome.detail}`,
      ]),
    ),
  );
  const failed = outcomes.filter((outcome) => !outcome.ok).map((outcome) => outcome.name);
  if (failed.length > 0) {
    throw new ShoalError(
      `${verb} failed for ${failed.length} of ${outcomes.length} VMs: ${failed.join(", ")}`,
      {
        hint: "`shoal logs NAME` shows a VM's console",
      },
    );
  }
}

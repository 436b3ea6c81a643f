import { ACCEL_SETTINGS, type AccelSetting, MAX_TCG_CACHE_MIB } from "../backends/backend.js";
import { backendFor } from "../backends/registry.js";
import type { FleetSpec } from "../core/fleet.js";
import { isDnsLabel } from "../core/names.js";
import { MiB, parseSize } from "../core/size.js";
import { escapeText } from "../core/terminal.js";
import { ShoalError, UserError } from "../errors.js";
import { fleetHosts } from "../fleet/hosts.js";
import { FleetSession } from "../fleet/session.js";
import { loadFleetFile } from "../spec/load.js";
import { checkSocketPaths } from "../state/layout.js";
import { withLock } from "../state/lock.js";
import { type FleetRecord, readFleetRecord } from "../state/store.js";
import { type Context, contextOf } from "./context.js";
import { FleetProgress } from "./progress.js";

/** The composition root of every fleet verb: which fleet, its backend, its session, its lock. */

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

/** SHOAL_TCG_CACHE: software emulation's translation cache per VM (for example 32M), instead of shoal's. */
function tcgCacheSetting(value: string | undefined): number | undefined {
  if (value === undefined || value === "") return undefined;
  const bytes = parseSize(value);
  const mib = bytes === undefined ? undefined : bytes / MiB;
  if (mib === undefined || !Number.isInteger(mib) || mib < 1 || mib > MAX_TCG_CACHE_MIB) {
    throw new UserError(
      `SHOAL_TCG_CACHE=${JSON.stringify(value)} is not a size from 1M to ${MAX_TCG_CACHE_MIB}M in whole MiB`,
      "for example SHOAL_TCG_CACHE=32M, or leave it unset for shoal's default",
    );
  }
  return mib;
}

/** Where progress and notices go: stderr, so stdout stays the result (tables, JSON). */
export function notice(line: string): void {
  process.stderr.write(`shoal: ${escapeText(line)}\n`);
}

async function fleetOf(
  context: Context,
  target: FleetTarget,
): Promise<{
  name: string;
  backend: string;
  spec: FleetSpec | undefined;
  record: FleetRecord | undefined;
}> {
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
    return { name: target.fleet, backend: record.backend, spec: undefined, record };
  }
  const spec = await loadFleetFile(target.file);
  const record = await readFleetRecord(await context.layout(), spec.name);
  return { name: spec.name, backend: spec.backend, spec, record };
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
  const tcgCacheMiB = tcgCacheSetting(process.env.SHOAL_TCG_CACHE);
  const backend = backendFor(fleet.backend, {
    ...(tcgCacheMiB === undefined ? {} : { tcgCacheMiB }),
    runner: context.runner,
    layout,
    notice,
    accel: accelSetting(process.env.SHOAL_ACCEL),
    hosts: fleetHosts(fleet.spec, fleet.record),
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

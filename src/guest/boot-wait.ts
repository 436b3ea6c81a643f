import { open } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { escapeLine } from "../core/terminal.js";
import { ifExists } from "../host/paths.js";

const POLL_MS = 500;
/**
 * How often the hypervisor is asked whether the VM still runs: the console log is read far more
 * often, but asking Xen is a dom0 process per VM, and hundreds of VMs booting at once would keep
 * dom0 busy listing them instead of setting up and serving their devices.
 */
const STOPPED_POLL_MS = 5_000;

/** The lines union-root.sh (beside this file) prints on the serial console when the boot is decided. */
const READY_LINE = /shoal: root is the union of base/;
const FATAL_LINE = /shoal: FATAL: ([^\r\n]*)/;
/** What the guest's kernel prints when it panics; without panic= it then waits there forever. */
const PANIC_LINE = /Kernel panic - not syncing: ([^\r\n]*)/;
/** What shoal's images print once booted, SSH up (tiny/rcS, debian/report-identity). */
const BOOTED_LINE = /shoal-identity: /;

/** What a boot came to: the image's init runs, or why not. */
export type BootOutcome =
  | { readonly ready: true }
  | { readonly ready: false; readonly why: string };

export interface BootWatch {
  readonly vm: string;
  /** The VM's serial log, and where this boot's output starts in it. */
  readonly serialLog: string;
  /** Brings the serial log up to date first, where the hypervisor writes it on another machine. */
  readonly fetch?: () => Promise<void>;
  readonly offset: number;
  readonly timeoutMs: number;
  /**
   * The image says when it is booted: the wait goes on past the union root until it does, so that
   * boot admission keeps the VM's slot while its init is busiest. Reaching the timeout after the
   * union root is still a boot: the image's init runs, only slowly.
   */
  readonly untilBooted?: boolean;
  /** Why the VM is no longer running (its hypervisor's word), or undefined while it runs. */
  readonly stopped: () => Promise<string | undefined>;
}

/**
 * Waits until the guest's init says its union root is up (and, for images that say so, that it is
 * booted), or that it failed, or gives up.
 */
export async function waitForBoot(watch: BootWatch): Promise<BootOutcome> {
  const deadline = Date.now() + watch.timeoutMs;
  let asked = Number.NEGATIVE_INFINITY;
  for (;;) {
    await watch.fetch?.();
    const log = await readFrom(watch.serialLog, watch.offset);
    const rooted = READY_LINE.exec(log);
    if (rooted && !watch.untilBooted) return { ready: true };
    if (rooted && BOOTED_LINE.test(log.slice(rooted.index))) return { ready: true };
    const fatal = FATAL_LINE.exec(log);
    // The guest wrote it: shown escaped, and no longer than a line.
    if (fatal) {
      return { ready: false, why: escapeLine((fatal[1] || "the VM's init failed").slice(0, 300)) };
    }
    const panic = PANIC_LINE.exec(log);
    if (panic) {
      return {
        ready: false,
        why: `its kernel panicked: ${escapeLine((panic[1] ?? "").slice(0, 200))}; it keeps running, see \`shoal logs ${watch.vm}\``,
      };
    }
    const overdue = Date.now() > deadline;
    let stopped: string | undefined;
    if (overdue || Date.now() - asked >= STOPPED_POLL_MS) {
      asked = Date.now();
      stopped = await watch.stopped();
    }
    if (stopped !== undefined) {
      return {
        ready: false,
        why: `it stopped while booting (${stopped}); see \`shoal logs ${watch.vm}\``,
      };
    }
    if (overdue && rooted) return { ready: true };
    if (overdue) {
      return {
        ready: false,
        why: `not booted after ${Math.round(watch.timeoutMs / 1000)} s; it keeps running, see \`shoal logs ${watch.vm}\``,
      };
    }
    await sleep(POLL_MS);
  }
}

async function readFrom(path: string, offset: number): Promise<string> {
  const handle = await ifExists(open(path, "r"));
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

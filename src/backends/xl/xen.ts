import * as z from "zod";
import type { VmSpec } from "../../core/fleet.js";
import type { Owner, Ownership } from "../../core/net.js";
import { ownedDomainUuid, UUID_PATTERN } from "../../core/render/boot.js";

/**
 * What xl and xenconsoled say, read without I/O: a domain's state from `xl list`, its uptime from
 * `xl uptime`, and where xenconsoled writes guest consoles; and how shoal tells its own domains
 * from others of the same name.
 */

/**
 * A domain as `xl list NAME` reports it. xl prints six state letters `rbpscd`: running, blocked,
 * paused, shut down, the shutdown reason (`-` power off, `r` reboot, `s` suspend, `c` crash,
 * `w` watchdog, `S` soft reset) and dying.
 */
export type XlDomainState =
  | { readonly kind: "running" }
  | { readonly kind: "shut-down" }
  | { readonly kind: "crashed"; readonly reason: string }
  | { readonly kind: "dying" };

const STATE_LETTERS = /^[r-][b-][p-][s-][-rscwS?][d-]$/;

export function parseXlList(text: string, domain: string): XlDomainState | undefined {
  for (const line of text.split("\n")) {
    const fields = line.trim().split(/\s+/);
    if (fields[0] !== domain) continue;
    const state = fields.find((field) => STATE_LETTERS.test(field));
    if (state === undefined) return undefined;
    if (state[5] === "d") return { kind: "dying" };
    if (state[3] === "s") {
      if (state[4] === "c") return { kind: "crashed", reason: "Xen reports a crash" };
      if (state[4] === "w") return { kind: "crashed", reason: "the watchdog fired" };
      // A reboot or soft reset is carried out by xl's monitor at once: the guest goes on.
      if (state[4] === "r" || state[4] === "S") return { kind: "running" };
      return { kind: "shut-down" };
    }
    // `xl create` builds a domain paused and unpauses it last: one left paused was cut short
    // there (or paused by hand), and does not run shoal's VM.
    if (state[2] === "p") return { kind: "crashed", reason: "it is paused (a start cut short?)" };
    return { kind: "running" };
  }
  return undefined;
}

/** `xl uptime NAME`: `Name ID Uptime` with an uptime of `[D day[s], ]H:MM:SS`. */
export function parseXlUptimeSeconds(text: string, domain: string): number | undefined {
  for (const line of text.split("\n")) {
    const trimmed = line.trim();
    if (!trimmed.startsWith(`${domain} `)) continue;
    const match = /(?:(\d+) days?, )?\s*(\d+):(\d\d):(\d\d)$/.exec(trimmed);
    if (!match) return undefined;
    const [, days = "0", hours = "0", minutes = "0", seconds = "0"] = match;
    return ((Number(days) * 24 + Number(hours)) * 60 + Number(minutes)) * 60 + Number(seconds);
  }
  return undefined;
}

/**
 * Whether `xl create` failed only because dom0 set up a device too slowly: libxl gives a device's
 * backend 10 s to appear in dom0's kernel (and its hotplug script 40 s), hard-coded, and a dom0
 * busy creating and serving other domains can miss that. libxl has taken the domain away again.
 */
export function isDeviceSetupTimeout(stderr: string): boolean {
  return /unable to add (disk|vif|nic) devices|killing execution of .* because of timeout/.test(
    stderr,
  );
}

/** Where xenconsoled was built to write logs when given no `--log-dir`. */
export const XENCONSOLED_DEFAULT_LOG_DIR = "/var/log/xen/console";

/**
 * Whether a running xenconsoled (its argv) writes each guest's console to `DIR/guest-NAME.log`,
 * and where: it does with `--log=guest` or `--log=all` (these two have no short forms; a value may
 * also be the next argument). Abbreviations such as `--log-d` are not recognised.
 */
export function xenconsoledGuestLogDir(argv: readonly string[]): string | undefined {
  let log = "none";
  let dir = XENCONSOLED_DEFAULT_LOG_DIR;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    const next = argv[i + 1];
    const value = (option: string): string | undefined => {
      if (arg.startsWith(`${option}=`)) return arg.slice(option.length + 1);
      if (arg === option && next !== undefined) {
        i++;
        return next;
      }
      return undefined;
    };
    const logValue = value("--log");
    if (logValue !== undefined) log = logValue;
    const dirValue = value("--log-dir");
    if (dirValue !== undefined) dir = dirValue;
  }
  return log === "guest" || log === "all" ? dir : undefined;
}

/** xenconsoled's file for a domain's console. */
export function guestConsoleLog(logDir: string, domain: string): string {
  return `${logDir.replace(/\/+$/, "")}/guest-${domain}.log`;
}

/**
 * The UUID shoal gives a VM's Xen domain (see ownedDomainUuid), so that `xl list -v` shows whose
 * a domain is.
 */
export function domainUuid(owner: Owner, vm: string): string {
  return ownedDomainUuid("xl", owner, vm);
}

/** A domain's id and UUID from `xl list -v [NAME]`; undefined when the domain is not listed. */
export function parseXlListIdentity(
  text: string,
  domain: string,
): { readonly domid: number; readonly uuid?: string } | undefined {
  for (const line of text.split("\n")) {
    const fields = line.trim().split(/\s+/);
    if (fields[0] !== domain || !/^\d+$/.test(fields[1] ?? "")) continue;
    const uuid = fields.find((field) => UUID_PATTERN.test(field));
    return { domid: Number(fields[1]), ...(uuid === undefined ? {} : { uuid }) };
  }
  return undefined;
}

/** The UUIDs of every domain `xl list -v` shows. */
export function parseXlListUuids(text: string): Set<string> {
  const uuids = new Set<string>();
  for (const line of text.split("\n")) {
    const fields = line.trim().split(/\s+/);
    if (!/^\d+$/.test(fields[1] ?? "")) continue;
    const uuid = fields.find((field) => UUID_PATTERN.test(field));
    if (uuid !== undefined) uuids.add(uuid);
  }
  return uuids;
}

/** `xl list -l NAME` in JSON: the disks' paths of each domain's configuration. */
const xlLongListing = z.array(
  z.object({
    config: z.object({
      disks: z.array(z.object({ pdev_path: z.string().optional() })).optional(),
    }),
  }),
);

export function parseXlDiskPaths(json: string): string[] | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch {
    // Not JSON: xl.conf asks for SXP output.
    return undefined;
  }
  const listing = xlLongListing.safeParse(parsed);
  if (!listing.success || listing.data.length === 0) return undefined;
  return listing.data.flatMap((domain) =>
    (domain.config.disks ?? []).flatMap((disk) => (disk.pdev_path ? [disk.pdev_path] : [])),
  );
}

/** The state directory and fleet a path of a VM's file (`ROOT/fleets/F/vms/V/FILE`) is under. */
function stateDirOf(path: string, file: string): { root: string; fleet: string } | undefined {
  const match =
    /^(\/[A-Za-z0-9._+@~/-]*)\/fleets\/([a-z0-9-]{1,63})\/vms\/[a-z0-9-]{1,63}\/([^/]+)$/.exec(
      path,
    );
  if (!match || match[3] !== file || match[1] === undefined || match[2] === undefined) {
    return undefined;
  }
  return { root: match[1], fleet: match[2] };
}

/**
 * Whose a domain of one of shoal's names is, by its disks, for domains without shoal's UUID: ours
 * when it boots from this VM's identity seed (made by a shoal before domain UUIDs), another state
 * directory's when from one of its seeds, or another program's.
 */
export function domainOwnership(disks: readonly string[], seed: string): Ownership {
  if (disks.includes(seed)) return { kind: "ours" };
  for (const disk of disks) {
    const other = stateDirOf(disk, "identity.tar");
    if (other) return { kind: "other", ...other };
  }
  return { kind: "unmarked" };
}

/**
 * Whose xenconsoled's log of a domain's console is: shoal's link to this VM's serial.log is ours;
 * a link to another state directory's VM is that one's; anything else (a file xenconsoled wrote
 * for a domain shoal did not start) is no one's shoal knows.
 */
export function consoleLogOwnership(linkTarget: string | undefined, serialLog: string): Ownership {
  if (linkTarget === serialLog) return { kind: "ours" };
  const other = linkTarget === undefined ? undefined : stateDirOf(linkTarget, "serial.log");
  return other ? { kind: "other", ...other } : { kind: "unmarked" };
}

/**
 * How many loop devices the kernel can make: each takes 2^part_shift minor numbers of the 20 bits
 * a device number has (part_shift from the loop module's max_part). Kernels since 3.1 make them on
 * demand (/dev/loop-control), so max_loop, which the seed raised, no longer limits them.
 */
export function loopDeviceLimit(maxPart: number): number {
  const partShift = maxPart > 0 ? Math.floor(Math.log2(maxPart)) + 1 : 0;
  return 2 ** Math.max(0, 20 - partShift);
}

/** What starting domUs takes from the host: memory in Xen, and loop devices in dom0. */
export interface XenNeeds {
  readonly memoryMiB: number;
  /** Each domU's seed and disk layer, and one for each base that is not attached yet. */
  readonly loopDevices: number;
}

export function xenNeeds(
  starting: readonly Pick<VmSpec, "memoryMiB" | "layer">[],
  basesToAttach: number,
): XenNeeds {
  return {
    memoryMiB: starting.reduce((sum, vm) => sum + vm.memoryMiB, 0),
    loopDevices:
      starting.reduce((sum, vm) => sum + (vm.layer.type === "disk" ? 2 : 1), 0) +
      (starting.length > 0 ? basesToAttach : 0),
  };
}

/** What a Xen host has room for: Xen's free memory, the loop devices dom0 has and can make. */
export interface XenRoom {
  readonly xenVersion: string;
  readonly freeMemoryMiB: number;
  readonly loopDevicesAttached: number;
  readonly loopDeviceLimit: number;
}

/** Why the host cannot start what `needs` asks for, with the fix; undefined when it can. */
export function xenShortfall(
  needs: XenNeeds,
  room: XenRoom,
):
  | { readonly short: "memory" | "loop devices"; readonly what: string; readonly fix: string }
  | undefined {
  if (needs.memoryMiB > room.freeMemoryMiB) {
    return {
      short: "memory",
      what: `the domUs to start need ${needs.memoryMiB} MiB and Xen has ${room.freeMemoryMiB} MiB free`,
      fix: "fewer or smaller VMs (memory:), other domUs stopped, or a smaller dom0_mem",
    };
  }
  const free = room.loopDeviceLimit - room.loopDevicesAttached;
  if (needs.loopDevices > free) {
    return {
      short: "loop devices",
      what: `the domUs to start need ${needs.loopDevices} loop devices and dom0 can make ${free} more (${room.loopDevicesAttached} attached, at most ${room.loopDeviceLimit})`,
      fix: "fewer VMs, tmpfs layers (one loop device less each), or the loop module loaded with a smaller max_part",
    };
  }
  return undefined;
}

/** dom0's memory and vCPUs from `xl list 0`. */
export function parseDom0(text: string): { memoryMiB: number; vcpus: number } | undefined {
  for (const line of text.split("\n")) {
    const fields = line.trim().split(/\s+/);
    if (fields[1] !== "0") continue;
    const memoryMiB = Number(fields[2]);
    const vcpus = Number(fields[3]);
    if (Number.isInteger(memoryMiB) && Number.isInteger(vcpus)) return { memoryMiB, vcpus };
  }
  return undefined;
}

/** `xl info`'s `key : value` lines. */
export function parseXlInfo(text: string): Map<string, string> {
  const fields = new Map<string, string>();
  for (const line of text.split("\n")) {
    const match = /^(\w+)\s*:\s*(.*)$/.exec(line.trim());
    if (match?.[1] !== undefined) fields.set(match[1], match[2] ?? "");
  }
  return fields;
}

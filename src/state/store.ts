import { mkdir, readdir, readFile } from "node:fs/promises";
import * as z from "zod";
import { isBackendName } from "../backends/registry.js";
import type { FleetSpec, VmSpec } from "../core/fleet.js";
import { parseLibvirtUri } from "../core/hosts.js";
import { MAX_DELAY_US, MAX_RATE, MIN_RATE, PPM } from "../core/impair.js";
import { MAX_GROUPS, VM_PATTERN } from "../core/impair-plan.js";
import { PRINTED_MAC } from "../core/mac.js";
import { isDnsLabel } from "../core/names.js";
import { MAX_FLEET_BRIDGES } from "../core/net.js";
import { ShoalError } from "../errors.js";
import { ifExists } from "../host/paths.js";
import { writeFileAtomic } from "./atomic.js";
import { parseJsonOrUndefined } from "./json.js";
import { IMAGE_ID, type StateLayout } from "./layout.js";

/**
 * The recorded state of a fleet: which VMs shoal made and the spec each was made from. It is what
 * the planner compares the fleet file with; what actually runs is observed separately.
 */

const STATE_VERSION = 1;

const vmSpecRecord = z.object({
  name: z.string(),
  hostname: z.string(),
  index: z.int(),
  // Rendered into nft rules on every host of a fleet over several.
  mac: z.string().regex(PRINTED_MAC),
  ip: z.string(),
  machineId: z.string(),
  image: z.string(),
  memoryMiB: z.int(),
  vcpus: z.int(),
  layer: z.object({
    type: z.enum(["disk", "tmpfs"]),
    sizeBytes: z.int(),
    onBaseChange: z.enum(["keep", "warn", "reset"]),
    fallback: z.enum(["none", "tmpfs"]),
  }),
  kernelArgs: z.array(z.string()).readonly(),
  host: z.string().refine(isDnsLabel).exactOptional(),
});

/** A libvirt host as `up` last recorded it, for commands that run without the fleet file. */
const hostRecord = z.object({
  name: z.string().refine(isDnsLabel),
  uri: z.string().refine((uri) => parseLibvirtUri(uri).ok),
  address: z.string().optional(),
});

const impairmentRecord = z.strictObject({
  delay: z.int().min(0).max(MAX_DELAY_US).optional(),
  jitter: z.int().min(0).max(MAX_DELAY_US).optional(),
  loss: z.int().min(0).max(PPM).optional(),
  rate: z.int().min(MIN_RATE).max(MAX_RATE).optional(),
  corrupt: z.int().min(0).max(PPM).optional(),
  duplicate: z.int().min(0).max(PPM).optional(),
});
const dnsLabelKey = z.string().refine(isDnsLabel);
const impairmentSetRecord = z.object({
  vms: z.record(
    dnsLabelKey,
    z.strictObject({ out: impairmentRecord.optional(), in: impairmentRecord.optional() }),
  ),
  paths: z.record(z.string().regex(/^[a-z0-9-]{1,63}>[a-z0-9-]{1,63}$/), impairmentRecord),
});

const fleetRecord = z.object({
  version: z.literal(STATE_VERSION),
  fleet: z.string(),
  backend: z.string().refine((name): boolean => isBackendName(name)),
  /**
   * The fleet network as the fleet file last set it, for commands that run without the file: its
   * subnet and gateway, and the host bridge its VMs are on or whether its own network is NATed.
   */
  network: z
    .object({
      subnet: z.string(),
      gateway: z.string(),
      bridge: z.string().optional(),
      nat: z.boolean().optional(),
      /** `network.allow` of a NATed fleet, in CIDR form. */
      allow: z.array(z.string()).optional(),
    })
    .optional(),
  /**
   * The fleet's groups and impairments: the fleet file's as `up` last recorded them, the live
   * changes of `shoal net` over them, and the groups `shoal net partition` cut apart.
   */
  impair: z
    .object({
      groups: z
        .record(dnsLabelKey, z.array(z.string().regex(VM_PATTERN)).min(1))
        .refine((groups) => Object.keys(groups).length <= MAX_GROUPS),
      file: impairmentSetRecord,
      live: impairmentSetRecord,
      partition: z.array(dnsLabelKey),
    })
    .optional(),
  /** The libvirt hosts the fleet's VMs run on (backend libvirt). */
  hosts: z.array(hostRecord).optional(),
  /** `ssh.authorized_keys` as the VMs' identity seeds hold them. */
  authorizedKeys: z.array(z.string()).optional(),
  vms: z.record(
    z.string(),
    z.object({
      spec: vmSpecRecord,
      createdAt: z.string(),
      updatedAt: z.string(),
      /**
       * `creating` is written before any of the VM's files, `created` once they are all on disk:
       * a VM left `creating` by a killed shoal is made afresh by the next run. `deleting` is
       * written before a VM's files go; the entry itself goes last.
       */
      phase: z.enum(["creating", "created", "deleting"]).default("created"),
      /** Whether shoal last started it (and did not stop it): a VM meant to run that is gone crashed. */
      running: z.boolean().default(false),
      /**
       * Which bridge of the fleet's own network its interface is on (0: shoal0, also for records
       * older than fleets of several bridges); placed at creation, kept for the VM's life.
       */
      bridge: z
        .int()
        .min(0)
        .max(MAX_FLEET_BRIDGES - 1)
        .optional(),
      /** The id of the base its definition boots from (absent in records older than upgrades). */
      baseId: z.string().regex(IMAGE_ID).optional(),
      /**
       * Set while an upgrade has stopped it to move it to another base, cleared once it runs
       * again: a VM left so by a killed upgrade is started by the next one.
       */
      upgrading: z.boolean().optional(),
      /**
       * Hosts it was moved off while they could not be reached (`up --reschedule`): its old domain
       * and volumes are there still, and removed once such a host answers again.
       */
      leftOn: z.array(z.string().refine(isDnsLabel)).optional(),
    }),
  ),
});

export type FleetRecord = z.infer<typeof fleetRecord>;
export type VmRecord = FleetRecord["vms"][string];

export function emptyRecord(fleet: Pick<FleetSpec, "name" | "backend">): FleetRecord {
  return { version: STATE_VERSION, fleet: fleet.name, backend: fleet.backend, vms: {} };
}

export async function readFleetRecord(
  layout: StateLayout,
  fleet: string,
): Promise<FleetRecord | undefined> {
  const path = layout.fleet(fleet).state;
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
  const result = fleetRecord.safeParse(parseJsonOrUndefined(text));
  // Names become paths and host-wide names: one shoal would not have written is never used.
  const foreign =
    result.success &&
    (result.data.fleet !== fleet ||
      Object.entries(result.data.vms).some(
        ([name, vm]) => !isDnsLabel(name) || vm.spec.name !== name,
      ));
  if (!result.success || foreign) {
    throw new ShoalError(`the state file ${path} is not one shoal can read`, {
      hint: "it was written by another shoal version or edited by hand; restore it: it is the index of the fleet's VMs and their layers",
    });
  }
  return result.data;
}

/**
 * The bases the state directory's libvirt fleets boot their VMs from, by host URI: what each
 * host's pool must keep.
 */
export async function basesOnHosts(layout: StateLayout): Promise<Map<string, Set<string>>> {
  const bases = new Map<string, Set<string>>();
  for (const fleet of (await ifExists(readdir(layout.fleets))) ?? []) {
    if (!isDnsLabel(fleet)) continue;
    const record = await readFleetRecord(layout, fleet);
    const uris = new Map((record?.hosts ?? []).map((host) => [host.name, host.uri]));
    for (const vm of Object.values(record?.vms ?? {})) {
      const uri = vm.spec.host === undefined ? undefined : uris.get(vm.spec.host);
      if (uri === undefined || vm.baseId === undefined) continue;
      bases.set(uri, (bases.get(uri) ?? new Set()).add(vm.baseId));
    }
  }
  return bases;
}

/** The fleets of the state directory whose recorded VMs use an image. */
export async function fleetsUsingImage(layout: StateLayout, image: string): Promise<string[]> {
  const fleets = (await ifExists(readdir(layout.fleets))) ?? [];
  const users: string[] = [];
  for (const fleet of fleets) {
    const record = await readFleetRecord(layout, fleet);
    if (Object.values(record?.vms ?? {}).some((vm) => vm.spec.image === image)) users.push(fleet);
  }
  return users;
}

export async function writeFleetRecord(layout: StateLayout, record: FleetRecord): Promise<void> {
  const dir = layout.fleet(record.fleet).dir;
  await mkdir(dir, { recursive: true });
  await writeFileAtomic(layout.fleet(record.fleet).state, `${JSON.stringify(record, null, 2)}\n`);
}

export function recordedSpecs(record: FleetRecord | undefined): Map<string, VmSpec> {
  return new Map(Object.entries(record?.vms ?? {}).map(([name, vm]) => [name, vm.spec]));
}

/**
 * A fleet's record held in memory while a command works on it, written through after every change.
 * Writes are queued, so that VMs worked on in parallel never write an older record over a newer;
 * changes made while a write waits its turn share it (it writes the record as it is when it
 * starts), so a command on thousands of VMs writes the record far fewer than thousands of times.
 */
export class RecordBook {
  private queue: Promise<void> = Promise.resolve();
  /** The write that has not started yet, which every change made meanwhile waits for. */
  private waiting: Promise<void> | undefined;

  constructor(
    private readonly layout: StateLayout,
    readonly record: FleetRecord,
  ) {}

  vm(name: string): VmRecord | undefined {
    return this.record.vms[name];
  }

  update(change: (record: FleetRecord) => void): Promise<void> {
    change(this.record);
    if (this.waiting) return this.waiting;
    const write = this.queue.then(() => {
      this.waiting = undefined;
      return writeFleetRecord(this.layout, this.record);
    });
    this.waiting = write;
    // The queue outlives a failed write (its callers get the failure); the next write goes on.
    this.queue = write.catch(() => {});
    return write;
  }
}

import { createHash } from "node:crypto";
import type { VmIdentity } from "./fleet.js";
import { addressSlot, formatIpv4, type Subnet, slotAddress } from "./ipv4.js";
import { type Mac, macFromBytes } from "./mac.js";

/**
 * Every VM's identity comes from the fleet file alone: the same file gives the same names,
 * addresses and ids on every run and every machine, with no state to lose.
 *
 * - VMs made from the name pattern take address slot n, so raising `count` leaves the existing
 *   VMs alone. VMs listed by name hash their name to a home slot and probe linearly from there,
 *   so removing a VM from the list moves nobody (only a VM that had lost a hash collision to the
 *   removed one can move, and then only into its own home slot).
 * - MACs and machine-ids hash the fleet and VM name. A collision is settled deterministically:
 *   VMs are taken in name order and a later one rehashes with an attempt counter.
 * - Explicit `ip:` and `mac:` values are claimed first; clashing with each other or with a
 *   pattern VM's slot is an error, never a silent share.
 */

export interface IdentityRequest {
  readonly name: string;
  /** The pattern counter n, for VMs made from the name pattern. */
  readonly counter?: number;
  readonly ip?: number;
  readonly mac?: Mac;
}

export interface IdentityProblem {
  /** Index into the requests. */
  readonly request: number;
  readonly field: "ip" | "mac";
  readonly message: string;
}

export interface IdentityResult {
  readonly identities: VmIdentity[];
  readonly problems: IdentityProblem[];
}

function digest(...parts: (string | number)[]): Buffer {
  return createHash("sha256").update(parts.join("\0")).digest();
}

/**
 * Takes the items in `order` and gives each the first candidate (attempt 0, 1, ...) that is not
 * taken yet. `candidate` may return undefined to skip an attempt (a reserved value).
 */
function assignUnique<T>(
  order: readonly number[],
  taken: Set<T>,
  candidate: (item: number, attempt: number) => T | undefined,
  assigned: Map<number, T>,
): void {
  for (const item of order) {
    for (let attempt = 0; ; attempt++) {
      const value = candidate(item, attempt);
      if (value === undefined || taken.has(value)) continue;
      taken.add(value);
      assigned.set(item, value);
      break;
    }
  }
}

function byName(requests: readonly IdentityRequest[], items: number[]): number[] {
  return items.sort((a, b) => {
    const nameA = requests[a]?.name ?? "";
    const nameB = requests[b]?.name ?? "";
    return nameA < nameB ? -1 : nameA > nameB ? 1 : 0;
  });
}

function assignSlots(
  fleet: string,
  subnet: Subnet,
  requests: readonly IdentityRequest[],
  problems: IdentityProblem[],
) {
  const slots = new Map<number, number>();
  const owner = new Map<number, number>();
  requests.forEach((request, item) => {
    if (request.ip === undefined && request.counter !== undefined) {
      slots.set(item, request.counter);
      owner.set(request.counter, item);
    }
  });
  requests.forEach((request, item) => {
    if (request.ip === undefined) return;
    const slot = addressSlot(subnet, request.ip);
    const ip = formatIpv4(request.ip);
    if (request.ip < subnet.network || request.ip > subnet.broadcast) {
      problems.push({
        request: item,
        field: "ip",
        message: `${ip} is outside network.subnet ${subnet.cidr}`,
      });
    } else if (slot === undefined) {
      const role =
        request.ip === subnet.gateway
          ? "gateway"
          : request.ip === subnet.network
            ? "network"
            : "broadcast";
      problems.push({
        request: item,
        field: "ip",
        message: `${ip} is the subnet's ${role} address`,
      });
    } else if (owner.has(slot)) {
      const other = requests[owner.get(slot) ?? -1]?.name;
      problems.push({ request: item, field: "ip", message: `${ip} is already ${other}'s address` });
    } else {
      slots.set(item, slot);
      owner.set(slot, item);
    }
  });
  const named = requests.flatMap((request, item) =>
    request.ip === undefined && request.counter === undefined ? [item] : [],
  );
  const home = (item: number) =>
    digest("slot", fleet, requests[item]?.name ?? "").readUInt32BE(0) % subnet.capacity;
  assignUnique(
    byName(requests, named),
    new Set(owner.keys()),
    (item, attempt) => ((home(item) + attempt) % subnet.capacity) + 1,
    slots,
  );
  return slots;
}

function assignMacs(
  fleet: string,
  macPrefix: string,
  requests: readonly IdentityRequest[],
  problems: IdentityProblem[],
) {
  const macs = new Map<number, Mac>();
  const owner = new Map<Mac, number>();
  requests.forEach((request, item) => {
    if (request.mac === undefined) return;
    const other = owner.get(request.mac);
    if (other !== undefined) {
      problems.push({
        request: item,
        field: "mac",
        message: `${request.mac} is already ${requests[other]?.name}'s MAC`,
      });
      return;
    }
    owner.set(request.mac, item);
    macs.set(item, request.mac);
  });
  const derived = requests.flatMap((request, item) => (request.mac === undefined ? [item] : []));
  assignUnique(
    byName(requests, derived),
    new Set(owner.keys()),
    (item, attempt) => {
      const suffix = digest("mac", fleet, requests[item]?.name ?? "", attempt).subarray(0, 3);
      // All-zero and all-one NIC parts look like placeholders to some tools; skip them.
      const value = suffix.readUIntBE(0, 3);
      return value === 0 || value === 0xffffff ? undefined : macFromBytes(macPrefix, suffix);
    },
    macs,
  );
  return macs;
}

/** A version 4 UUID's bits, as systemd and dbus generate machine-ids. */
function machineIdCandidate(fleet: string, name: string, attempt: number): string {
  const bytes = digest("machine-id", fleet, name, attempt).subarray(0, 16);
  bytes[6] = ((bytes[6] ?? 0) & 0x0f) | 0x40;
  bytes[8] = ((bytes[8] ?? 0) & 0x3f) | 0x80;
  return bytes.toString("hex");
}

/** `macPrefix`: the OUI the backend's MACs customarily start with (its kind.ts). */
export function deriveIdentities(
  fleet: string,
  macPrefix: string,
  subnet: Subnet,
  requests: readonly IdentityRequest[],
): IdentityResult {
  if (
    requests.length > subnet.capacity ||
    requests.some((r) => (r.counter ?? 0) > subnet.capacity)
  ) {
    throw new Error(
      `internal: ${requests.length} VMs do not fit ${subnet.cidr}; capacity is checked before`,
    );
  }
  const problems: IdentityProblem[] = [];
  const slots = assignSlots(fleet, subnet, requests, problems);
  const macs = assignMacs(fleet, macPrefix, requests, problems);
  const machineIds = new Map<number, string>();
  const all = requests.map((_, item) => item);
  assignUnique(
    byName(requests, all),
    new Set<string>(),
    (item, attempt) => machineIdCandidate(fleet, requests[item]?.name ?? "", attempt),
    machineIds,
  );
  if (problems.length > 0) return { identities: [], problems };
  const identities = requests.map((request, item): VmIdentity => {
    const slot = slots.get(item) ?? 0;
    return {
      name: request.name,
      hostname: request.name,
      index: slot,
      mac: macs.get(item) ?? "",
      ip: formatIpv4(slotAddress(subnet, slot)),
      machineId: machineIds.get(item) ?? "",
    };
  });
  return { identities, problems };
}

import type { FleetSpec } from "../core/fleet.js";
import { type HostSpec, hostSpec } from "../core/hosts.js";
import { HostUnreachable } from "../errors.js";
import type { FleetRecord } from "../state/store.js";
import type { FleetSession } from "./session.js";

/**
 * The hosts a command on a libvirt fleet works with: the fleet file's, and those the record still
 * has VMs on (a host dropped from the file keeps its VMs until `up` moves or deletes them), or
 * copies of VMs moved off it while it could not be reached.
 */
export function fleetHosts(
  spec: FleetSpec | undefined,
  record: FleetRecord | undefined,
): HostSpec[] {
  const listed = spec?.hosts?.list ?? [];
  const names = new Set(listed.map((host) => host.name));
  const used = hostsInUse(record);
  const kept = (record?.hosts ?? [])
    .filter((host) => !names.has(host.name) && used.has(host.name))
    .map((host) => hostSpec(host));
  return [...listed, ...kept];
}

/** The hosts the record has VMs on, or copies of VMs moved off them. */
export function hostsInUse(record: FleetRecord | undefined): Set<string> {
  return new Set(
    Object.values(record?.vms ?? {}).flatMap((vm) => [
      ...(vm.spec.host === undefined ? [] : [vm.spec.host]),
      ...(vm.leftOn ?? []),
    ]),
  );
}

/**
 * Records the hosts `fleetHosts` would give, for the commands that run without the file. A host
 * the record forgets (out of `hosts:`, no VM left there) is released first: what the fleet made
 * there goes with it. One that cannot be reached stays recorded, to be released once it answers.
 */
export async function recordHosts(session: FleetSession, fleet: FleetSpec): Promise<void> {
  if (fleet.hosts === undefined) return;
  const hosts: NonNullable<FleetRecord["hosts"]> = fleetHosts(fleet, session.book.record).map(
    (host) => ({
      name: host.name,
      uri: host.uri,
      ...(host.address === undefined ? {} : { address: host.address }),
    }),
  );
  const kept = new Set(hosts.map((host) => host.name));
  for (const gone of (session.book.record.hosts ?? []).filter((host) => !kept.has(host.name))) {
    try {
      await session.backend.releaseHost?.(session.fleet, hostSpec(gone));
      session.notice(
        `host ${gone.name} is no host of fleet ${session.fleet} any more: what it had of it was removed`,
      );
    } catch (error) {
      if (!(error instanceof HostUnreachable)) throw error;
      session.notice(
        `${error.message}: what it has of fleet ${session.fleet} is removed once it answers`,
      );
      hosts.push(gone);
    }
  }
  if (JSON.stringify(hosts) === JSON.stringify(session.book.record.hosts)) return;
  await session.book.update((record) => {
    record.hosts = hosts;
  });
}

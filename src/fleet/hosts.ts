import type { FleetSpec } from "../core/fleet.js";
import { type HostSpec, hostSpec } from "../core/hosts.js";
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

/** Records the hosts `fleetHosts` would give, for the commands that run without the file. */
export async function recordHosts(session: FleetSession, fleet: FleetSpec): Promise<void> {
  if (fleet.hosts === undefined) return;
  const hosts = fleetHosts(fleet, session.book.record).map((host) => ({
    name: host.name,
    uri: host.uri,
    ...(host.address === undefined ? {} : { address: host.address }),
  }));
  if (JSON.stringify(hosts) === JSON.stringify(session.book.record.hosts)) return;
  await session.book.update((record) => {
    record.hosts = hosts;
  });
}

import picomatch from "picomatch";
import type { FleetSpec } from "../core/fleet.js";
import { type HostSpec, hostSpec } from "../core/hosts.js";
import { type PlacementPolicy, placeVms } from "../core/placement.js";
import { MiB, parseSize } from "../core/size.js";
import type { FieldPath, PathProblem } from "./resolve.js";
import type { FleetFile } from "./schema.js";

/** The backend that runs VMs on the hosts of `hosts:`. */
export const HOSTS_BACKEND = "libvirt";

/** A libvirt fleet without `hosts:` runs on this machine's own daemon. */
export const LOCAL_HOST: HostSpec = {
  name: "local",
  uri: "qemu:///system",
  driver: "qemu",
  capacity: {},
};

const asList = (patterns: string | readonly string[]) =>
  typeof patterns === "string" ? [patterns] : [...patterns];

function hostSpecs(file: Partial<FleetFile>, problems: PathProblem[]): HostSpec[] {
  const byName = new Map<string, number>();
  const byUri = new Map<string, number>();
  const specs: HostSpec[] = [];
  (file.hosts ?? []).forEach((entry, index) => {
    const twice = (field: string, first: number) =>
      problems.push({
        path: ["hosts", index, field],
        message: `${JSON.stringify(entry[field === "name" ? "name" : "uri"])} is listed twice (also hosts[${first}])`,
      });
    const sameName = byName.get(entry.name);
    if (sameName === undefined) byName.set(entry.name, index);
    else twice("name", sameName);
    const sameUri = byUri.get(entry.uri);
    if (sameUri === undefined) byUri.set(entry.uri, index);
    else twice("uri", sameUri);
    const memory = entry.capacity?.memory;
    specs.push(
      hostSpec({
        ...entry,
        capacity: {
          ...(entry.capacity?.vms === undefined ? {} : { vms: entry.capacity.vms }),
          ...(memory === undefined ? {} : { memoryMiB: (parseSize(memory) ?? 0) / MiB }),
        },
      }),
    );
  });
  return specs;
}

function placementPolicy(
  file: Partial<FleetFile>,
  hosts: readonly HostSpec[],
  vms: readonly string[],
  problems: PathProblem[],
): PlacementPolicy {
  const given = file.placement ?? "spread";
  if (typeof given === "string") return { mode: given, pins: [] };
  const names = hosts.map((host) => host.name);
  const pins = (given.pin ?? []).map((pin, index) => {
    const at = (...path: FieldPath) => ["placement", "pin", index, ...path];
    if (!names.includes(pin.host)) {
      problems.push({
        path: at("host"),
        message: `${JSON.stringify(pin.host)} is not a host of hosts: (${names.join(", ")})`,
      });
    }
    const patterns = asList(pin.vms);
    patterns.forEach((pattern, i) => {
      const isMatch = picomatch(pattern);
      if (vms.some((vm) => isMatch(vm))) return;
      const path = typeof pin.vms === "string" ? at("vms") : at("vms", i);
      problems.push({ path, message: `${JSON.stringify(pattern)} matches no VM of the fleet` });
    });
    return { vms: patterns, host: pin.host };
  });
  // A VM two pins name for different hosts: which one holds would not be obvious.
  const matchers = pins.map((pin) => picomatch(pin.vms));
  for (const vm of vms) {
    const matching = matchers.flatMap((isMatch, i) => (isMatch(vm) ? [i] : []));
    const other = matching.find((i) => pins[i]?.host !== pins[matching[0] ?? 0]?.host);
    if (other !== undefined) {
      problems.push({
        path: ["placement", "pin", other],
        message: `pins VM ${vm} to ${pins[other]?.host}, and placement.pin[${matching[0]}] to ${pins[matching[0] ?? 0]?.host}`,
      });
      break;
    }
  }
  return { mode: given.mode ?? "spread", pins };
}

/**
 * The hosts and placement of a libvirt fleet, checked: names and URIs once each, pins naming hosts
 * and VMs there are, and the whole fleet fitting the hosts' capacity (placed as a new fleet would be,
 * so that an impossible file fails before anything is made on any host).
 */
export function resolveHosts(
  file: Partial<FleetFile>,
  backend: string,
  vms: readonly { readonly name: string; readonly memoryMiB: number }[],
  problems: PathProblem[],
):
  | {
      readonly hosts: NonNullable<FleetSpec["hosts"]>;
      readonly hostOf: ReadonlyMap<string, string>;
    }
  | undefined {
  if (backend !== HOSTS_BACKEND) {
    for (const key of ["hosts", "placement"] as const) {
      if (file[key] !== undefined)
        problems.push({
          path: [key],
          message: `places VMs on libvirt hosts; add backend: ${HOSTS_BACKEND}`,
        });
    }
    return undefined;
  }
  const before = problems.length;
  const list = file.hosts === undefined ? [LOCAL_HOST] : hostSpecs(file, problems);
  const names = vms.map((vm) => vm.name);
  const policy = placementPolicy(file, list, names, problems);
  if (problems.length > before) return undefined;
  const placed = placeVms({ hosts: list, policy, vms });
  if (!placed.ok) {
    const index = list.findIndex((host) => host.name === placed.host);
    problems.push({
      path: index === -1 ? ["hosts"] : ["hosts", index, "capacity"],
      message: placed.message,
    });
    return undefined;
  }
  return { hosts: { list, placement: policy }, hostOf: placed.hostOf };
}

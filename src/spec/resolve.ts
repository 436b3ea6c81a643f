import { backendKind } from "../backends/registry.js";
import { PLACEHOLDER_BOOT, renderKernelCmdline } from "../core/cmdline.js";
import type { FleetSpec, LayerSpec, VmSpec } from "../core/fleet.js";
import { deriveIdentities, type IdentityRequest } from "../core/identity.js";
import {
  contains,
  makeSubnet,
  parseAddressBlock,
  parseCidr,
  parseIpv4,
  type Subnet,
} from "../core/ipv4.js";
import { parseMac } from "../core/mac.js";
import { DNS_LABEL_RULE, expandNamePattern, isDnsLabel, parseNamePattern } from "../core/names.js";
import { fleetVmLimit } from "../core/net.js";
import { withHosts } from "../core/placement.js";
import { MiB, parseSize } from "../core/size.js";
import { KERNEL_CMDLINE_MAX } from "../core/syntax.js";
import { DEFAULTS } from "./defaults.js";
import { resolveHosts } from "./hosts.js";
import { resolveImpairments } from "./impairments.js";
import { type FleetFile, tooManyVms, type VmEntry, type VmSettings } from "./schema.js";

export type FieldPath = readonly (string | number)[];

export interface PathProblem {
  readonly path: FieldPath;
  readonly message: string;
}

/**
 * A fleet file as far as it passed the schema: sections that failed are absent and listed in
 * `failed`, entries of `vms` that failed are undefined. Rules run on whatever is there, so a user
 * sees every problem at once.
 */
export interface CheckedFleetFile {
  readonly file: Partial<FleetFile>;
  readonly failed: ReadonlySet<keyof FleetFile>;
  readonly vms: readonly (VmEntry | undefined)[];
  /** The valid names in `vms`, also of entries that failed otherwise, so duplicates are still found. */
  readonly vmNames: readonly (string | undefined)[];
}

interface PlannedVm {
  readonly request: IdentityRequest;
  /** Where the VM's own settings come from, when it has any. */
  readonly entry?: { readonly index: number; readonly value: VmEntry };
}

/**
 * Defaults -> `vm:` -> `vms[i]`, in this one place: each key set on a VM replaces the fleet's value,
 * except `layer`, which merges key by key (a VM may change only its layer's size).
 */
function resolveSettings(file: Partial<FleetFile>, entry: VmSettings | undefined) {
  const fleetVm = file.vm ?? {};
  const type = entry?.layer?.type ?? fleetVm.layer?.type ?? DEFAULTS.layerType;
  const sameTypeAsFleet = type === (fleetVm.layer?.type ?? DEFAULTS.layerType);
  const layerSize =
    entry?.layer?.size ??
    (sameTypeAsFleet ? fleetVm.layer?.size : undefined) ??
    DEFAULTS.layerSize[type];
  const layer: LayerSpec = {
    type,
    sizeBytes: parseSize(layerSize) ?? 0,
    onBaseChange:
      entry?.layer?.on_base_change ?? fleetVm.layer?.on_base_change ?? DEFAULTS.onBaseChange,
    fallback: entry?.layer?.fallback ?? fleetVm.layer?.fallback ?? DEFAULTS.fallback,
  };
  return {
    image: entry?.image ?? fleetVm.image ?? file.image ?? DEFAULTS.image,
    memoryMiB: (parseSize(entry?.memory ?? fleetVm.memory ?? DEFAULTS.memory) ?? 0) / MiB,
    vcpus: entry?.vcpus ?? fleetVm.vcpus ?? DEFAULTS.vcpus,
    layer,
    kernelArgs: entry?.kernel_args ?? fleetVm.kernel_args ?? [],
  };
}

function resolveSubnet(checked: CheckedFleetFile, problems: PathProblem[]): Subnet | undefined {
  if (checked.failed.has("network")) return undefined;
  const network = checked.file.network ?? {};
  const cidr = parseCidr(network.subnet ?? DEFAULTS.subnet);
  if (!cidr.ok) return undefined;
  if (network.gateway === undefined) return makeSubnet(cidr.network, cidr.prefix);
  const gateway = parseIpv4(network.gateway) ?? 0;
  const subnet = makeSubnet(cidr.network, cidr.prefix, gateway);
  if (!contains(cidr.network, cidr.prefix, gateway)) {
    problems.push({
      path: ["network", "gateway"],
      message: `${network.gateway} is outside network.subnet ${subnet.cidr}`,
    });
    return undefined;
  }
  if (gateway === subnet.network || gateway === subnet.broadcast) {
    const role = gateway === subnet.network ? "network" : "broadcast";
    problems.push({
      path: ["network", "gateway"],
      message: `${network.gateway} is the subnet's ${role} address`,
    });
    return undefined;
  }
  return subnet;
}

function planVms(checked: CheckedFleetFile, problems: PathProblem[]): PlannedVm[] | undefined {
  const { file, failed } = checked;
  let complete = !failed.has("vms") && !checked.vms.includes(undefined);
  const countMode = file.count !== undefined || (file.vms === undefined && !failed.has("vms"));
  const count = file.count ?? (countMode ? DEFAULTS.count : 0);
  const counted = new Map<string, number>();
  if (countMode && !failed.has("count")) {
    const pattern = failed.has("vm")
      ? undefined
      : parseNamePattern(file.vm?.name ?? DEFAULTS.vmName);
    if (pattern?.ok) {
      const widest = expandNamePattern(pattern.pattern, count);
      if (count > 0 && !isDnsLabel(widest)) {
        problems.push({
          path: ["vm", "name"],
          message: `gives "${widest}" for VM ${count}, which is not ${DNS_LABEL_RULE}`,
        });
        complete = false;
      } else {
        for (let n = 1; n <= count; n++) counted.set(expandNamePattern(pattern.pattern, n), n);
      }
    } else {
      complete = false;
    }
  } else if (countMode) {
    complete = false;
  }

  const seen = new Map<string, number>();
  checked.vmNames.forEach((name, index) => {
    if (name === undefined) return;
    const first = seen.get(name);
    if (first === undefined) seen.set(name, index);
    else
      problems.push({
        path: ["vms", index, "name"],
        message: `"${name}" is listed twice (also vms[${first}])`,
      });
  });
  const overrides = new Map<string, PlannedVm["entry"]>();
  const extras: PlannedVm[] = [];
  checked.vms.forEach((value, index) => {
    if (value === undefined || seen.get(value.name) !== index) return;
    const request: IdentityRequest = {
      name: value.name,
      ...(value.ip === undefined ? {} : { ip: parseIpv4(value.ip) ?? 0 }),
      ...(value.mac === undefined ? {} : { mac: parseMac(value.mac) ?? "" }),
    };
    if (counted.has(value.name)) {
      overrides.set(value.name, { index, value });
    } else if (!countMode || value.ip !== undefined) {
      extras.push({ request, entry: { index, value } });
    } else if (complete) {
      problems.push({
        path: ["vms", index, "name"],
        message: `"${value.name}" is not one of the ${count} VMs that count and vm.name make; give it an ip: to add it beside them, or drop count to list every VM by name`,
      });
    }
  });
  if (!complete || problems.length > 0) return undefined;
  const fromCount = [...counted].map(([name, counter]): PlannedVm => {
    const entry = overrides.get(name);
    if (!entry) return { request: { name, counter } };
    const { ip, mac } = entry.value;
    return {
      request: {
        name,
        counter,
        ...(ip === undefined ? {} : { ip: parseIpv4(ip) ?? 0 }),
        ...(mac === undefined ? {} : { mac: parseMac(mac) ?? "" }),
      },
      entry,
    };
  });
  return [...fromCount, ...extras];
}

function checkCapacity(
  checked: CheckedFleetFile,
  subnet: Subnet,
  vms: readonly PlannedVm[],
  problems: PathProblem[],
): boolean {
  const counted = vms.filter((vm) => vm.request.counter !== undefined).length;
  const fits = `network.subnet ${subnet.cidr}, which has ${subnet.capacity} VM addresses (the gateway excluded); use a larger subnet`;
  if (counted > subnet.capacity) {
    problems.push({ path: ["count"], message: `${counted} VMs do not fit in ${fits}` });
    return false;
  }
  const path = checked.file.vms === undefined ? ["count"] : ["vms"];
  if (vms.length > subnet.capacity) {
    problems.push({ path, message: `${vms.length} VMs do not fit in ${fits}` });
    return false;
  }
  const onHostBridge = checked.file.network?.bridge !== undefined;
  if (vms.length > fleetVmLimit(onHostBridge).max) {
    problems.push({ path, message: tooManyVms(vms.length, onHostBridge) });
    return false;
  }
  return true;
}

function checkCmdline(
  backend: FleetSpec["backend"],
  vm: VmSpec,
  entry: PlannedVm["entry"],
  problems: PathProblem[],
) {
  const kind = backendKind(backend);
  // The longer of the two ways the base can be attached.
  const length = renderKernelCmdline(
    kind.daxGuestDevices ?? kind.guestDevices,
    vm,
    PLACEHOLDER_BOOT,
  ).length;
  if (length <= KERNEL_CMDLINE_MAX) return;
  const path =
    entry?.value.kernel_args !== undefined
      ? ["vms", entry.index, "kernel_args"]
      : ["vm", "kernel_args"];
  problems.push({
    path,
    message: `makes ${vm.name}'s kernel command line ${length} bytes long; Linux takes at most ${KERNEL_CMDLINE_MAX}`,
  });
}

/** Applies defaults and cross-field rules; returns the fleet only when there is no problem at all. */
export function resolveFleet(checked: CheckedFleetFile): {
  fleet?: FleetSpec;
  problems: PathProblem[];
} {
  const problems: PathProblem[] = [];
  const { file } = checked;
  const subnet = resolveSubnet(checked, problems);
  const planned = planVms(checked, problems);
  if (
    planned === undefined ||
    subnet === undefined ||
    checked.failed.size > 0 ||
    file.name === undefined
  ) {
    return { problems };
  }
  if (!checkCapacity(checked, subnet, planned, problems)) return { problems };
  const backend = file.backend ?? DEFAULTS.backend;
  const identity = deriveIdentities(
    file.name,
    backendKind(backend).macPrefix,
    subnet,
    planned.map((vm) => vm.request),
  );
  for (const problem of identity.problems) {
    const entry = planned[problem.request]?.entry;
    problems.push({ path: ["vms", entry?.index ?? 0, problem.field], message: problem.message });
  }
  if (problems.length > 0) return { problems };
  const settled = identity.identities.map((id, i): VmSpec => {
    const vm = { ...id, ...resolveSettings(file, planned[i]?.entry?.value) };
    checkCmdline(backend, vm, planned[i]?.entry, problems);
    return vm;
  });
  const placed = resolveHosts(file, backend, settled, problems);
  if (problems.length > 0) return { problems };
  const vms = placed ? withHosts(settled, placed.hostOf) : settled;
  const impairments = resolveImpairments(
    file,
    vms.map((vm) => vm.name),
    problems,
  );
  if (impairments === undefined) return { problems };
  return {
    fleet: {
      name: file.name,
      backend,
      subnet,
      network:
        file.network?.bridge === undefined
          ? {
              kind: "isolated",
              nat: file.network?.nat ?? false,
              ...(file.network?.allow === undefined
                ? {}
                : { allow: file.network.allow.map((block) => cidrOf(block)) }),
            }
          : { kind: "host-bridge", bridge: file.network.bridge },
      authorizedKeys: file.ssh?.authorized_keys ?? [],
      vms,
      impairments,
      ...(placed ? { hosts: placed.hosts } : {}),
    },
    problems,
  };
}

/** A `network.allow` entry in CIDR form (the schema has checked it). */
function cidrOf(block: string): string {
  const parsed = parseAddressBlock(block);
  if (!parsed.ok) throw new Error(`internal: network.allow ${block} passed the schema`);
  return parsed.cidr;
}

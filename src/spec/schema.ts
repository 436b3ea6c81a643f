import * as z from "zod";
import { BACKEND_NAMES } from "../backends/registry.js";
import { excerpt, quoted } from "../core/excerpt.js";
import { parseLibvirtUri } from "../core/hosts.js";
import { IMPAIRMENT_KEYS, type ImpairmentKey, parseImpairmentValue } from "../core/impair.js";
import { VM_PATTERN } from "../core/impair-plan.js";
import { checkFleetSubnet, parseAddressBlock, parseCidr, parseIpv4 } from "../core/ipv4.js";
import { checkUnicastMac, MAC_RULE, parseMac } from "../core/mac.js";
import {
  DNS_LABEL_RULE,
  IMAGE_NAME_RULE,
  isDnsLabel,
  isImageName,
  parseNamePattern,
} from "../core/names.js";
import { fleetVmLimit, MAX_BRIDGE_PORTS, MAX_FLEET_VMS } from "../core/net.js";
import { PLACEMENT_MODES } from "../core/placement.js";
import { isInterfaceName } from "../core/render/boot.js";
import { formatSize, MiB, parseSize, SIZE_REGEX_SOURCE, SIZE_SYNTAX } from "../core/size.js";
import { checkAuthorizedKey, checkKernelParam, KERNEL_CMDLINE_MAX } from "../core/syntax.js";
import { DEFAULTS } from "./defaults.js";

/**
 * The fleet file's schema: the one definition that validates fleet files, types the parsed result
 * and produces the JSON Schema for editors (`shoal schema`). Checks that involve several fields
 * (duplicate names, addresses, capacity) and the merging of defaults live in resolve.ts.
 */

/** A string checked by a function that returns what is wrong, so every rule reports the same way. */
function checkedString(check: (value: string) => string | undefined) {
  return z.string().check((ctx) => {
    const message = check(ctx.value);
    if (message !== undefined) ctx.issues.push({ code: "custom", message, input: ctx.value });
  });
}

const dnsLabel = checkedString((value) =>
  isDnsLabel(value) ? undefined : `${quoted(value)} is not ${DNS_LABEL_RULE}`,
).meta({ pattern: "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$" });

const imageName = checkedString((value) =>
  isImageName(value) ? undefined : `${quoted(value)} is not an image name: ${IMAGE_NAME_RULE}`,
).meta({ description: "An image in shoal's image store (`shoal image ls`)." });

const TiB = 1024 * 1024 * MiB;

/**
 * More memory than this is a typo on any host shoal runs on; it is also about all the
 * guest-physical address space QEMU gives a guest under software emulation (40 bits: 1 TiB).
 */
const MAX_MEMORY = TiB;

/**
 * A disk layer is a sparse file in the state directory; ext4, the usual host filesystem, takes
 * files below 16 TiB.
 */
const MAX_LAYER_SIZE = 8 * TiB;

/** QEMU's q35 machine takes at most 288 vCPUs (QEMU 7.2, Debian 12). */
const MAX_VCPUS = 288;

function size(what: string, range: { min: number; max: number }, unitMultiple = 1) {
  return checkedString((value) => {
    const bytes = parseSize(value);
    if (bytes === undefined) return `${quoted(value)} is not a size; use ${SIZE_SYNTAX}`;
    if (bytes < range.min)
      return `${excerpt(value)} is too small for ${what}; the minimum is ${formatSize(range.min)}`;
    if (bytes > range.max)
      return `${excerpt(value)} is too large for ${what}; the maximum is ${formatSize(range.max)}`;
    if (bytes % unitMultiple !== 0) return `${excerpt(value)} is not a whole number of MiB`;
    return undefined;
  }).meta({ pattern: SIZE_REGEX_SOURCE });
}

const memory = size("memory", { min: 32 * MiB, max: MAX_MEMORY }, MiB).meta({
  description: `Guest memory, binary units: 128M, 1G (at most ${formatSize(MAX_MEMORY)}).`,
});

const vcpus = z
  .int()
  .min(1)
  .max(MAX_VCPUS, { error: `must be at most ${MAX_VCPUS}, what QEMU's q35 machine takes` })
  .meta({ description: `Virtual CPUs (at most ${MAX_VCPUS}).` });

export const LAYER_TYPES = ["disk", "tmpfs"] as const;

const layer = z
  .strictObject({
    type: z.enum(LAYER_TYPES).optional().meta({
      default: DEFAULTS.layerType,
      description:
        "disk: a private disk, changes persist; tmpfs: in memory, changes vanish at shutdown.",
    }),
    size: size("a layer", { min: MiB, max: MAX_LAYER_SIZE }, MiB)
      .optional()
      .meta({
        description: `Disk layer: its size (sparse; default ${DEFAULTS.layerSize.disk}). tmpfs layer: its memory limit (default ${DEFAULTS.layerSize.tmpfs}).`,
      }),
    on_base_change: z.enum(["keep", "warn", "reset"]).optional().meta({
      default: DEFAULTS.onBaseChange,
      description:
        "When a disk layer boots over another base than it was made over: keep it, keep it with a console warning, or reset it.",
    }),
    fallback: z.enum(["none", "tmpfs"]).optional().meta({
      default: DEFAULTS.fallback,
      description:
        "none: a VM whose disk layer cannot be used stops (fail closed). tmpfs: it boots with a tmpfs layer and a loud warning.",
    }),
  })
  .meta({ description: "The VM's private writable layer over the shared read-only base." });

const kernelArgs = z
  .array(checkedString(checkKernelParam))
  .check((ctx) => {
    // The per-VM check in resolve.ts measures the whole line; this one stops a huge list early.
    const length = ctx.value.join(" ").length;
    if (length > KERNEL_CMDLINE_MAX) {
      ctx.issues.push({
        code: "custom",
        message: `are ${length} bytes long; the whole kernel command line takes at most ${KERNEL_CMDLINE_MAX}`,
        input: ctx.value,
      });
    }
  })
  .meta({ description: "Extra kernel parameters, one per item, each key or key=value." });

/** The settings every VM has; `vm:` sets them for all, a `vms:` entry for one. */
const vmSettings = {
  image: imageName.optional().meta({ default: DEFAULTS.image }),
  memory: memory.optional().meta({ default: DEFAULTS.memory }),
  vcpus: vcpus.optional().meta({ default: DEFAULTS.vcpus }),
  layer: layer.optional(),
  kernel_args: kernelArgs.optional(),
};

const namePattern = checkedString((value) => {
  const result = parseNamePattern(value);
  return result.ok ? undefined : result.message;
}).meta({
  description:
    'VM name pattern with the counter n (from 1): "agent-{n:03}" gives agent-001, agent-002, ...',
});

const ipv4 = checkedString((value) =>
  parseIpv4(value) === undefined
    ? `${quoted(value)} is not an IPv4 address like 10.77.0.10`
    : undefined,
);

const mac = checkedString((value) => {
  const parsed = parseMac(value);
  return parsed === undefined
    ? `${quoted(value)} is not a MAC address: ${MAC_RULE}`
    : checkUnicastMac(parsed);
});

const vmEntry = z
  .strictObject({
    name: dnsLabel.meta({ description: "The VM's name, also its hostname." }),
    ip: ipv4
      .optional()
      .meta({ description: "A fixed address in network.subnet instead of a derived one." }),
    mac: mac.optional().meta({ description: "A fixed MAC address instead of a derived one." }),
    ...vmSettings,
  })
  .meta({ description: "One VM: a name and the settings that differ from `vm:`." });

const interfaceName = checkedString((value) =>
  isInterfaceName(value)
    ? undefined
    : `${quoted(value)} is not a network interface name: 1 to 15 letters, digits, or . _ -`,
);

const fleetSubnet = checkedString((value) => {
  const result = parseCidr(value);
  return result.ok ? checkFleetSubnet(result.network, result.prefix) : result.message;
});

const addressBlock = checkedString((value) => {
  const result = parseAddressBlock(value);
  return result.ok ? undefined : result.message;
});

const network = z
  .strictObject({
    subnet: fleetSubnet
      .optional()
      .meta({ default: DEFAULTS.subnet, description: "The fleet's IPv4 subnet." }),
    gateway: ipv4
      .optional()
      .meta({ description: "The gateway address; the first host address unless given." }),
    bridge: interfaceName.optional().meta({
      description:
        "Attach the VMs to this existing bridge of the host (xenbr0, br0) instead of the fleet's own network; needs managed: false. Your DHCP server gives the addresses: `shoal export dhcp`.",
    }),
    managed: z.boolean().optional().meta({
      description:
        "true (the default): shoal makes the fleet's network, isolated in a network namespace, with DHCP and DNS. false: the bridge: is yours.",
    }),
    nat: z.boolean().optional().meta({
      default: false,
      description:
        "Let the fleet's VMs reach outside networks through the host (masqueraded). Off by default: the fleet reaches only itself.",
    }),
    allow: z.array(addressBlock).optional().meta({
      description:
        'With nat: true, address blocks the VMs may reach although NAT keeps them out: the host\'s own addresses, link-local ones such as cloud metadata (169.254.169.254), broadcast and multicast. Like ["192.0.2.10", "169.254.169.254/32"].',
    }),
  })
  .meta({ description: "The fleet's network." })
  .check((ctx) => {
    const { bridge, managed, nat, allow } = ctx.value;
    const problem =
      bridge !== undefined && managed !== false
        ? "bridge: attaches VMs to a bridge shoal does not manage; add managed: false"
        : bridge === undefined && managed === false
          ? "managed: false needs the bridge: to attach the VMs to"
          : bridge !== undefined && nat === true
            ? "nat: is for the fleet's own network; on your bridge, your network decides what VMs reach"
            : allow !== undefined && nat !== true
              ? "allow: opens addresses to a NATed fleet; add nat: true"
              : undefined;
    if (problem) ctx.issues.push({ code: "custom", message: problem, input: ctx.value });
  });

const ssh = z
  .strictObject({
    authorized_keys: z.array(checkedString(checkAuthorizedKey)).optional().meta({
      description: 'Public keys allowed to log in as root, like "ssh-ed25519 AAAA... you@host".',
    }),
  })
  .meta({ description: "SSH access to the VMs." });

const vmPattern = checkedString((value) =>
  VM_PATTERN.test(value)
    ? undefined
    : `${quoted(value)} is not a VM name or pattern: VM names with * ? [...] {a,b} wildcards`,
).meta({ description: 'A VM name or glob pattern: "web-*", "db-{1,2}".' });

const vmPatterns = z.union([vmPattern, z.array(vmPattern).min(1)]);

function impairmentValue(key: ImpairmentKey, description: string) {
  return checkedString((value) => {
    const parsed = parseImpairmentValue(key, value);
    return parsed.ok ? undefined : parsed.message;
  })
    .optional()
    .meta({ description });
}

const impairmentRule = z
  .strictObject({
    vms: vmPatterns.optional().meta({ description: "The VMs whose links are impaired." }),
    group: dnsLabel
      .optional()
      .meta({ description: "A group (groups:) whose VMs' links are impaired, each on its own." }),
    to: dnsLabel.optional().meta({
      description:
        "With group: the path from that group to this one instead (every VM of one reaching a VM of the other).",
    }),
    direction: z.enum(["both", "out", "in"]).optional().meta({
      default: "both",
      description:
        "both (each way gets the values), out (what the VMs send; with to: from group to to), or in (what they receive).",
    }),
    delay: impairmentValue("delay", "Added delay: 40ms, 500us, 1s (needs sch_netem)."),
    jitter: impairmentValue(
      "jitter",
      "Delay varies by up to this much either way (needs sch_netem).",
    ),
    loss: impairmentValue("loss", "Packets dropped at random: 1%, 0.5%."),
    rate: impairmentValue("rate", "Bandwidth: 10mbit, 512kbit, 1gbit."),
    corrupt: impairmentValue("corrupt", "Packets with a bit flipped: 0.1% (needs sch_netem)."),
    duplicate: impairmentValue("duplicate", "Packets sent twice: 0.1% (needs sch_netem)."),
  })
  .check((ctx) => {
    const rule = ctx.value;
    const problem =
      rule.vms !== undefined && rule.group !== undefined
        ? "give vms: or group:, not both"
        : rule.vms === undefined && rule.group === undefined
          ? "needs vms: or group: to say whose links it impairs"
          : rule.to !== undefined && rule.group === undefined
            ? "to: names the other end of a path from a group; add group:"
            : !IMPAIRMENT_KEYS.some((key) => rule[key] !== undefined)
              ? `impairs nothing; give at least one of ${IMPAIRMENT_KEYS.join(", ")}`
              : undefined;
    if (problem) ctx.issues.push({ code: "custom", message: problem, input: rule });
  })
  .meta({ description: "Impairments of some VMs' links, or of the path between two groups." });

/**
 * Each host's bridge holds a VXLAN port per other host; far more hosts than this is not a fleet
 * shoal's one flat network serves well (every broadcast is sent to each of them).
 */
export const MAX_HOSTS = 128;

const libvirtUri = checkedString((value) => {
  const parsed = parseLibvirtUri(value);
  return parsed.ok ? undefined : parsed.message;
}).meta({
  description:
    "The host's libvirt connection: qemu+ssh://root@10.0.0.11/system, qemu:///system for this machine.",
});

const hostEntry = z
  .strictObject({
    name: dnsLabel.meta({
      description: "The host's name in shoal's output and in placement pins.",
    }),
    uri: libvirtUri,
    address: ipv4.optional().meta({
      description:
        "Where the other hosts reach this one for the fleet's network (VXLAN); the URI's host unless given.",
    }),
    capacity: z
      .strictObject({
        vms: z
          .int()
          .min(1)
          .max(MAX_FLEET_VMS)
          .optional()
          .meta({ description: "At most this many VMs." }),
        memory: size("a host's capacity", { min: MiB, max: 64 * TiB }, MiB)
          .optional()
          .meta({ description: "At most this much memory for the VMs' guests, like 48G." }),
      })
      .optional()
      .meta({ description: "How much of the host the fleet may take; no limit unless given." }),
  })
  .meta({ description: "One libvirt host the fleet's VMs run on." });

const placementMode = z.enum(PLACEMENT_MODES).meta({
  description:
    "spread: each new VM to the host with the fewest; pack: fill the hosts in the order of hosts:.",
});

const placement = z
  .union([
    placementMode,
    z.strictObject({
      mode: placementMode.optional().meta({ default: "spread" }),
      pin: z
        .array(
          z.strictObject({
            vms: vmPatterns.meta({ description: "The VMs pinned, by name or pattern." }),
            host: dnsLabel.meta({ description: "The host (a name in hosts:) they run on." }),
          }),
        )
        .optional()
        .meta({ description: "VMs that run on a given host, whatever the mode." }),
    }),
  ])
  .meta({
    description:
      "Which host each VM runs on. VMs already on a host stay there; new ones are placed by mode, pinned ones by pin.",
  });

/** A fleet's VMs share one network: its own (several bridges) or a host bridge (one). */
export function tooManyVms(vms: number, onHostBridge = false): string {
  return `${vms} VMs are too many: ${fleetVmLimit(onHostBridge).why}; split the fleet into several fleets (each gets its own network)`;
}

export const fleetFileSchema = z
  .strictObject({
    name: dnsLabel.meta({ description: "The fleet's name." }),
    backend: z
      .enum(BACKEND_NAMES)
      .optional()
      .meta({
        default: DEFAULTS.backend,
        description: `The hypervisor: ${BACKEND_NAMES.join(" or ")}.`,
      }),
    image: imageName.optional().meta({ default: DEFAULTS.image }),
    count: z
      .int()
      .min(0)
      .max(MAX_FLEET_VMS, { error: (issue) => tooManyVms(Number(issue.input)) })
      .optional()
      .meta({
        description: `How many VMs to make from vm.name (${DEFAULTS.count} when there is no vms: list). Without count, vms: lists every VM. At most ${MAX_FLEET_VMS} (${MAX_BRIDGE_PORTS} on a host bridge).`,
      }),
    vm: z
      .strictObject({ name: namePattern.optional(), ...vmSettings })
      .optional()
      .meta({ description: "Settings for every VM." }),
    vms: z
      .array(vmEntry)
      .max(MAX_FLEET_VMS, {
        error: (issue) => tooManyVms(Array.isArray(issue.input) ? issue.input.length : 0),
      })
      .optional()
      .meta({
        description:
          "VMs by name: with count, overrides for some of them (or extra VMs with a fixed ip); without count, the whole fleet.",
      }),
    network: network.optional(),
    groups: z.record(dnsLabel, vmPatterns).optional().meta({
      description:
        'Named groups of VMs, by name or pattern, for impairments and partitions: { east: "e-*", west: ["w-1", "w-2"] }. A VM is in at most one group.',
    }),
    impairments: z.array(impairmentRule).optional().meta({
      description:
        "Delay, jitter, loss, rate, corruption and duplication on VMs' links and between groups, applied on the host side; `shoal net` changes them live.",
    }),
    ssh: ssh.optional(),
    hosts: z.array(hostEntry).min(1).max(MAX_HOSTS).optional().meta({
      description:
        "With backend: libvirt, the hosts the VMs run on (default: this machine's qemu:///system).",
    }),
    placement: placement.optional(),
  })
  .meta({
    title: "shoal fleet file",
    description: "A fleet of VMs sharing one read-only base image.",
  });

export type FleetFile = z.infer<typeof fleetFileSchema>;
export type VmEntry = z.infer<typeof vmEntry>;
export type ImpairmentRule = z.infer<typeof impairmentRule>;
export type HostEntry = z.infer<typeof hostEntry>;
export type VmSettings = Pick<VmEntry, keyof typeof vmSettings>;

/** The sections of a fleet file, each validated alone so one bad section does not hide problems in the others. */
export const fleetSections = fleetFileSchema.shape;
export const vmEntrySchema = vmEntry;

export function fleetJsonSchema(): object {
  return z.toJSONSchema(fleetFileSchema, { io: "input", target: "draft-2020-12" });
}

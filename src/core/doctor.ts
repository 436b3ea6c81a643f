import { formatUsage } from "./size.js";

/**
 * What `shoal doctor` checks, as data: the host tools shoal runs (with the command that prints each
 * one's version and the Debian package that has it), and how one check's outcome reads.
 */

export type CheckLevel = "ok" | "warn" | "fail";

export interface CheckResult {
  readonly name: string;
  readonly level: CheckLevel;
  /** What was found: a version, a state, the reason it fails. */
  readonly detail: string;
  /** How to fix it, for warn and fail. */
  readonly fix?: string;
}

export interface ToolRequirement {
  readonly name: string;
  /** Prints the tool's version; any exit code will do, only a missing program fails. */
  readonly versionArgv: readonly [string, ...string[]];
  /** The tool prints no version of its own: only whether it is there counts. */
  readonly versionless?: true;
  readonly debianPackage: string;
  /** What shoal needs it for, shown when it is missing. */
  readonly neededFor: string;
  /** A missing optional tool only warns. */
  readonly optional?: true;
}

/** The tools every backend needs, shown after the backend's own (src/backends/NAME/kind.ts). */
export const COMMON_TOOLS: readonly ToolRequirement[] = [
  {
    name: "qemu-img",
    versionArgv: ["qemu-img", "--version"],
    debianPackage: "qemu-utils",
    neededFor: "importing qcow2 images",
    optional: true,
  },
  {
    name: "mkfs.ext4",
    versionArgv: ["mkfs.ext4", "-V"],
    debianPackage: "e2fsprogs",
    neededFor: "building images",
  },
  {
    name: "debugfs",
    versionArgv: ["debugfs", "-V"],
    debianPackage: "e2fsprogs",
    neededFor: "reading images and layers",
  },
  {
    name: "flock",
    versionArgv: ["flock", "--version"],
    debianPackage: "util-linux",
    neededFor: "the fleet and image locks",
  },
  {
    name: "ip",
    versionArgv: ["ip", "-V"],
    debianPackage: "iproute2",
    neededFor: "fleet networks",
  },
  {
    name: "dnsmasq",
    versionArgv: ["dnsmasq", "--version"],
    debianPackage: "dnsmasq-base",
    neededFor: "DHCP and DNS on fleet networks",
  },
  {
    name: "ssh",
    versionArgv: ["ssh", "-V"],
    debianPackage: "openssh-client",
    neededFor: "shoal ssh, exec, cp, wait",
  },
  {
    name: "busybox",
    versionArgv: ["busybox", "--help"],
    debianPackage: "busybox-static",
    neededFor: "the tiny image and shoal forward",
  },
  {
    name: "dropbear",
    versionArgv: ["dropbear", "-V"],
    debianPackage: "dropbear-bin",
    neededFor: "the tiny image's SSH server",
    optional: true,
  },
  {
    name: "mmdebstrap",
    versionArgv: ["mmdebstrap", "--version"],
    debianPackage: "mmdebstrap",
    neededFor: "building Debian images",
    optional: true,
  },
  {
    name: "nft",
    versionArgv: ["nft", "--version"],
    debianPackage: "nftables",
    neededFor: "network.nat",
    optional: true,
  },
];

/** The line of a tool's output that names its version (tools print it on stdout or stderr). */
export function versionLine(output: string): string {
  const lines = output
    .split("\n")
    .map((line) => line.trim())
    .filter(Boolean);
  return lines.find((line) => /\d+\.\d+/.test(line)) ?? lines[0] ?? "";
}

/** The tools a backend needs, its own first, in the order they are shown. */
export function toolsFor(backendTools: readonly ToolRequirement[]): ToolRequirement[] {
  return [...backendTools, ...COMMON_TOOLS];
}

/** A missing tool: a failure when shoal cannot work without it, a warning otherwise. */
export function missingTool(tool: ToolRequirement): CheckResult {
  return {
    name: tool.name,
    level: tool.optional ? "warn" : "fail",
    detail: `missing; needed for ${tool.neededFor}`,
    fix: `apt-get install ${tool.debianPackage}`,
  };
}

/** Whether the host can run the backend: no check failed (warnings are allowed). */
export function verdict(results: readonly CheckResult[]): boolean {
  return results.every((result) => result.level !== "fail");
}

/** What KSM costs: pages alike in two VMs become one, and the time a write to it takes tells. */
export const KSM_TRADE_OFF =
  "less host memory per VM, at the price of a side channel between VMs: by timing its writes, a VM can tell which of its pages another VM holds too";

/** The kernel's same-page merging, as its counters in /sys/kernel/mm/ksm read. */
export interface KsmState {
  readonly running: boolean;
  /** Pages kept once for several places. */
  readonly pagesShared: number;
  /** Places that use a shared page instead of a copy of their own: the pages saved. */
  readonly pagesSharing: number;
}

/** x86_64's page, the only size shoal's VMs run with. */
const PAGE_BYTES = 4096;

/** KSM as `doctor` and `shoal host ksm` show it. */
export function ksmCheck(state: KsmState | undefined): CheckResult {
  if (state === undefined) {
    return { name: "KSM", level: "ok", detail: "not in this kernel: VMs' alike pages stay apart" };
  }
  if (!state.running) {
    return {
      name: "KSM",
      level: "ok",
      detail: `off; \`shoal host ksm on\` merges pages alike in several VMs: ${KSM_TRADE_OFF}`,
    };
  }
  return {
    name: "KSM",
    level: "ok",
    detail: `on, ${formatUsage(state.pagesSharing * PAGE_BYTES)} saved now by merging pages alike in several VMs: ${KSM_TRADE_OFF}; \`shoal host ksm off\` ends it`,
  };
}

/** What this kernel takes of what shoal's impairments are made of (each probed on its own). */
export interface ImpairmentSupport {
  /** htb, clsact, u32 and mirred: rate, and what a VM sends through an ifb. */
  readonly shaping: boolean;
  readonly ifb: boolean;
  /** nftables' bridge family with numgen, marks and priorities: loss, partitions, paths. */
  readonly bridgeRules: boolean;
  /** sch_netem: delay, jitter, corruption, duplication. */
  readonly netem: boolean;
}

/** `doctor`'s line of which impairments (`shoal net`, `impairments:`) this host can apply. */
export function impairmentCheck(support: ImpairmentSupport): CheckResult {
  const name = "impairments";
  const can = [
    ...(support.shaping && support.ifb ? ["rate"] : []),
    ...(support.bridgeRules ? ["loss", "partitions"] : []),
    ...(support.netem && support.shaping ? ["delay", "jitter", "corruption", "duplication"] : []),
  ];
  const missing = [
    ...(support.shaping
      ? []
      : ["htb, clsact, u32 or mirred (sch_htb, sch_ingress, cls_u32, act_mirred)"]),
    ...(support.ifb ? [] : ["ifb devices (ifb)"]),
    ...(support.bridgeRules ? [] : ["nftables' bridge family (nf_tables, nft_numgen)"]),
    ...(support.netem ? [] : ["netem (sch_netem)"]),
  ];
  if (missing.length === 0) return { name, level: "ok", detail: `all: ${can.join(", ")}` };
  return {
    name,
    level: "warn",
    detail: `${can.length > 0 ? can.join(", ") : "none"}; this kernel lacks ${missing.join(", ")}`,
    fix: "load the modules named (Debian's kernels have them all), or use a kernel built with them",
  };
}

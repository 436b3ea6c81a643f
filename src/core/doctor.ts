import type { BackendName } from "./fleet.js";

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
  /** Backends it is needed for; a missing optional tool only warns. */
  readonly backends: readonly BackendName[];
  readonly optional?: true;
}

const BOTH: readonly BackendName[] = ["qemu", "xl"];

export const TOOLS: readonly ToolRequirement[] = [
  {
    name: "qemu-system-x86_64",
    versionArgv: ["qemu-system-x86_64", "--version"],
    debianPackage: "qemu-system-x86",
    neededFor: "running VMs",
    backends: ["qemu"],
  },
  {
    // xl's version comes from the hypervisor (`xl info`), checked with the dom0.
    name: "xl",
    versionArgv: ["xl", "help"],
    versionless: true,
    debianPackage: "xen-utils-4.17",
    neededFor: "running Xen domUs",
    backends: ["xl"],
  },
  {
    name: "xz",
    versionArgv: ["xz", "--version"],
    debianPackage: "xz-utils",
    neededFor: "unpacking each image's kernel once, instead of Xen unpacking it for every domU",
    backends: ["xl"],
    optional: true,
  },
  {
    name: "xenstore-read",
    versionArgv: ["xenstore-read", "--help"],
    versionless: true,
    debianPackage: "xenstore-utils",
    neededFor: "putting domUs on the fleet's bridge, reaching their consoles",
    backends: ["xl"],
  },
  {
    name: "setpriv",
    versionArgv: ["setpriv", "--version"],
    debianPackage: "util-linux",
    neededFor: "running QEMU unprivileged",
    backends: ["qemu"],
  },
  {
    name: "qemu-img",
    versionArgv: ["qemu-img", "--version"],
    debianPackage: "qemu-utils",
    neededFor: "importing qcow2 images",
    backends: BOTH,
    optional: true,
  },
  {
    name: "mkfs.ext4",
    versionArgv: ["mkfs.ext4", "-V"],
    debianPackage: "e2fsprogs",
    neededFor: "building images",
    backends: BOTH,
  },
  {
    name: "debugfs",
    versionArgv: ["debugfs", "-V"],
    debianPackage: "e2fsprogs",
    neededFor: "reading images and layers",
    backends: BOTH,
  },
  {
    name: "flock",
    versionArgv: ["flock", "--version"],
    debianPackage: "util-linux",
    neededFor: "the fleet and image locks",
    backends: BOTH,
  },
  {
    name: "ip",
    versionArgv: ["ip", "-V"],
    debianPackage: "iproute2",
    neededFor: "fleet networks",
    backends: BOTH,
  },
  {
    name: "dnsmasq",
    versionArgv: ["dnsmasq", "--version"],
    debianPackage: "dnsmasq-base",
    neededFor: "DHCP and DNS on fleet networks",
    backends: BOTH,
  },
  {
    name: "ssh",
    versionArgv: ["ssh", "-V"],
    debianPackage: "openssh-client",
    neededFor: "shoal ssh, exec, cp, wait",
    backends: BOTH,
  },
  {
    name: "busybox",
    versionArgv: ["busybox", "--help"],
    debianPackage: "busybox-static",
    neededFor: "the tiny image and shoal forward",
    backends: BOTH,
  },
  {
    name: "dropbear",
    versionArgv: ["dropbear", "-V"],
    debianPackage: "dropbear-bin",
    neededFor: "the tiny image's SSH server",
    backends: BOTH,
    optional: true,
  },
  {
    name: "mmdebstrap",
    versionArgv: ["mmdebstrap", "--version"],
    debianPackage: "mmdebstrap",
    neededFor: "building Debian images",
    backends: BOTH,
    optional: true,
  },
  {
    name: "nft",
    versionArgv: ["nft", "--version"],
    debianPackage: "nftables",
    neededFor: "network.nat",
    backends: BOTH,
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

/** The tools a backend needs, in the order they are shown. */
export function toolsFor(backend: BackendName): ToolRequirement[] {
  return TOOLS.filter((tool) => tool.backends.includes(backend));
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

/** `xl info`'s `key : value` lines. */
export function parseXlInfo(text: string): Map<string, string> {
  const fields = new Map<string, string>();
  for (const line of text.split("\n")) {
    const match = /^(\w+)\s*:\s*(.*)$/.exec(line.trim());
    if (match?.[1] !== undefined) fields.set(match[1], match[2] ?? "");
  }
  return fields;
}

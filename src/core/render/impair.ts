import {
  formatDelay,
  formatPercent,
  formatRate,
  type Impairment,
  impairs,
  MAX_RATE,
  NETEM_KEYS,
  PPM,
} from "../impair.js";
import { type ImpairmentPlan, type PlannedVm, pathIntoVm } from "../impair-plan.js";
import { PRINTED_MAC } from "../mac.js";
import {
  hostIfbName,
  hostImpairTable,
  hostTapName,
  IMPAIR_TABLE,
  ifbName,
  isHostDeviceOf,
  NFT_COMMENT_MAX,
  type Owner,
  ownerMark,
} from "../net.js";
import { assertRenderable } from "../syntax.js";

/**
 * A fleet's impairments as the kernel takes them, applied on the host side of each VM's link
 * where the guest cannot undo them:
 * - what a VM receives: an htb tree at the root of its tap (rate), netem leaves under it (delay,
 *   jitter, corruption, duplication), one class for each group a path comes from; nft sets each
 *   packet's class (skb priority) from the group it came from, so no tc classifier is needed;
 * - what a VM sends: its tap's ingress redirected to an ifb device, with the same tree;
 * - loss and partitions: nft rules in a bridge table (every kernel here has them; netem is not
 *   always there), by port: a guest cannot change which tap its packets come in by.
 * On a fleet's own network, which may span several bridges, the group a packet came from rides in
 * its mark from the first bridge to the last; on a host bridge, which is one bridge shared with
 * others, the forward hook matches both ports instead and leaves marks alone. Over several hosts
 * (libvirt), a packet from a VM on another host comes in by the VXLAN port, so its group is known
 * by its source MAC; each host's table drops what a fleet tap sends from any MAC but its VM's, so a
 * guest cannot leave its group by changing its MAC. Every host gets the same table: a tap name
 * that is not on a host matches nothing there, and a VM that moves needs no new table.
 */

/** How the fleet's network names what it holds. */
export interface ImpairNaming {
  /** The VM's interface on the bridge (tap or Xen vif), by address slot. */
  readonly nic: (slot: number) => string;
  /** The ifb device carrying what the VM sends, by address slot. */
  readonly ifb: (slot: number) => string;
  /** Whether a device of the namespace the table is in is the fleet's (on a host bridge, few are). */
  readonly owns: (device: string) => boolean;
  /**
   * `marks`: the fleet's own network (its own namespace); `ports`: a bridge of the host's; `macs`:
   * a bridge on each of several hosts, joined to one another.
   */
  readonly match: "marks" | "ports" | "macs";
  /** With `macs`: each VM's MAC, by name. */
  readonly mac?: (vm: string) => string | undefined;
  readonly table: string;
  /** The table's owner mark, where it lives beside other programs' tables. */
  readonly comment?: string;
}

/** On a fleet's own network (a namespace of its own) everything is the fleet's. */
export function ownNetworkNaming(nic: (slot: number) => string): ImpairNaming {
  return { nic, ifb: ifbName, owns: () => true, match: "marks", table: IMPAIR_TABLE };
}

/** On a bridge of the host's, the fleet's devices and table carry its owner's name. */
export function hostBridgeNaming(owner: Owner): ImpairNaming {
  return {
    nic: (slot) => hostTapName(owner, slot),
    ifb: (slot) => hostIfbName(owner, slot),
    owns: (device) => isHostDeviceOf(owner, device),
    match: "ports",
    table: hostImpairTable(owner),
    comment: ownerMark(owner, NFT_COMMENT_MAX),
  };
}

/** On each host of a fleet over several: as on a host bridge, groups known by their VMs' MACs. */
export function hostsNaming(owner: Owner, macs: ReadonlyMap<string, string>): ImpairNaming {
  return { ...hostBridgeNaming(owner), match: "macs", mac: (vm) => macs.get(vm) };
}

/** One device's part of the tc batch: its root and clsact qdiscs are made anew from `lines`. */
export interface DeviceScript {
  readonly device: string;
  readonly lines: readonly string[];
}

export interface RenderedImpairments {
  /** The ifb devices that must exist (one per VM whose sending is shaped). */
  readonly ifbs: readonly string[];
  /** What each device should hold; a device of the fleet's not listed should hold nothing. */
  readonly devices: readonly DeviceScript[];
  /** The fleet's bridge table, replaced whole; undefined when nothing needs it. */
  readonly nft: string | undefined;
}

/** netem's queue: packets it holds at once for their delay (its default of 1000 drops at speed). */
export const NETEM_LIMIT = 100_000;
const TC_KEYS = ["rate", ...NETEM_KEYS] as const;
const DEFAULT_CLASS = 0x10;
const GROUP_CLASS_BASE = 0x100;
/** The byte of a packet's mark that carries its group on a fleet's own network. */
const GROUP_MARK_SHIFT = 16;
const GROUP_MARK_MASK = 0xff << GROUP_MARK_SHIFT;

const hex = (n: number) => n.toString(16);
const classOfGroup = (id: number) => GROUP_CLASS_BASE + id;
const hex32 = (n: number) => `0x${(n >>> 0).toString(16).padStart(8, "0")}`;

/** htb's quantum: what a class sends per round; tc warns below an MTU and above 200000 bytes. */
function quantum(rate: number): number {
  return Math.min(Math.max(Math.floor(rate / 8 / 10), 1514), 200_000);
}

function htbClass(device: string, parent: string, classId: string, rate: number): string {
  const shown = formatRate(rate);
  // An unlimited class still needs a rate; a burst of its own keeps htb from rounding it to nothing.
  const burst = rate === MAX_RATE ? " burst 256k cburst 256k" : "";
  return `class add dev ${device} parent ${parent} classid ${classId} htb rate ${shown} ceil ${shown}${burst} quantum ${quantum(rate)}`;
}

function netem(impairment: Impairment): string | undefined {
  if (!impairs(impairment, NETEM_KEYS)) return undefined;
  const parts = [`netem limit ${NETEM_LIMIT}`];
  const delay = impairment.delay ?? 0;
  const jitter = impairment.jitter ?? 0;
  if (delay > 0) {
    parts.push(`delay ${formatDelay(delay)}${jitter > 0 ? ` ${formatDelay(jitter)}` : ""}`);
  }
  if ((impairment.corrupt ?? 0) > 0)
    parts.push(`corrupt ${formatPercent(impairment.corrupt ?? 0)}`);
  if ((impairment.duplicate ?? 0) > 0) {
    parts.push(`duplicate ${formatPercent(impairment.duplicate ?? 0)}`);
  }
  return parts.join(" ");
}

function rateOf(impairment: Impairment, ceiling = MAX_RATE): number {
  const rate = impairment.rate ?? 0;
  return rate > 0 ? Math.min(rate, ceiling) : ceiling;
}

/**
 * An htb tree on `device`: the link's own rate at the top, a default class with the link's own
 * impairment, and a class per group that a path comes from.
 */
function tree(
  device: string,
  own: Impairment,
  fromGroups: readonly { readonly id: number; readonly impairment: Impairment }[],
): string[] {
  const top = rateOf(own);
  const lines = [
    // `replace`: a tap may come with a root qdisc of its maker's (libvirt gives its taps noqueue).
    `qdisc replace dev ${device} root handle 1: htb default ${hex(DEFAULT_CLASS)}`,
    htbClass(device, "1:", "1:1", top),
  ];
  const leaf = (minor: number, impairment: Impairment) => {
    lines.push(htbClass(device, "1:1", `1:${hex(minor)}`, rateOf(impairment, top)));
    const leafQdisc = netem(impairment);
    if (leafQdisc)
      lines.push(
        `qdisc add dev ${device} parent 1:${hex(minor)} handle ${hex(minor)}: ${leafQdisc}`,
      );
  };
  leaf(DEFAULT_CLASS, own);
  for (const group of fromGroups) leaf(classOfGroup(group.id), group.impairment);
  return lines;
}

function checkedName(what: string, name: string): string {
  assertRenderable(what, name, /^[A-Za-z0-9._-]{1,15}$/.test(name));
  return name;
}

function checkedTable(table: string): string {
  assertRenderable("nft table", table, /^[a-z_][a-z0-9_]{0,63}$/.test(table));
  return table;
}

export function renderImpairments(plan: ImpairmentPlan, naming: ImpairNaming): RenderedImpairments {
  const ifbs: string[] = [];
  const devices: DeviceScript[] = [];
  for (const vm of plan.vms) {
    const nic = checkedName("interface", naming.nic(vm.slot));
    const lines: string[] = [];
    const incoming = plan.paths
      .filter((path) => vm.group !== undefined && path.to.id === vm.group.id)
      .filter((path) => impairs(path.impairment, TC_KEYS))
      .map((path) => ({ id: path.from.id, impairment: pathIntoVm(path, vm) }));
    if (impairs(vm.in, TC_KEYS) || incoming.length > 0) lines.push(...tree(nic, vm.in, incoming));
    if (impairs(vm.out, TC_KEYS)) {
      const ifb = checkedName("ifb device", naming.ifb(vm.slot));
      ifbs.push(ifb);
      lines.push(
        `qdisc add dev ${nic} clsact`,
        `filter add dev ${nic} ingress protocol all prio 1 u32 match u32 0 0 action mirred egress redirect dev ${ifb}`,
      );
      devices.push({ device: ifb, lines: tree(ifb, vm.out, []) });
    }
    if (lines.length > 0) devices.push({ device: nic, lines });
  }
  return { ifbs, devices, nft: renderNft(plan, naming) };
}

function lossRule(match: string, loss: number | undefined): string[] {
  if ((loss ?? 0) <= 0) return [];
  return [`${match} numgen random mod ${PPM} < ${loss} drop`];
}

function checkedMac(naming: ImpairNaming, vm: PlannedVm): string {
  const mac = naming.mac?.(vm.name) ?? "";
  assertRenderable(`VM ${vm.name}'s MAC`, mac, PRINTED_MAC.test(mac));
  return mac;
}

function quotedNic(naming: ImpairNaming, vm: PlannedVm): string {
  return `"${checkedName("interface", naming.nic(vm.slot))}"`;
}

function renderNft(plan: ImpairmentPlan, naming: ImpairNaming): string | undefined {
  const prerouting: string[] = [];
  const forward: string[] = [];
  const postrouting: string[] = [];
  for (const vm of plan.vms) {
    prerouting.push(...lossRule(`iifname ${quotedNic(naming, vm)}`, vm.out.loss));
    postrouting.push(...lossRule(`oifname ${quotedNic(naming, vm)}`, vm.in.loss));
  }
  const used = new Set<number>();
  const between = (from: number, to: number) => {
    used.add(from);
    used.add(to);
    if (naming.match === "ports")
      return { chain: forward, match: `iifname @g${from} oifname @g${to}` };
    if (naming.match === "macs")
      return { chain: forward, match: `ether saddr @m${from} oifname @g${to}` };
    const mark = hex32(from << GROUP_MARK_SHIFT);
    return {
      chain: postrouting,
      match: `oifname @g${to} meta mark and ${hex32(GROUP_MARK_MASK)} == ${mark}`,
    };
  };
  for (const from of plan.partition) {
    for (const to of plan.partition) {
      if (from.id === to.id) continue;
      const { chain, match } = between(from.id, to.id);
      chain.push(`${match} drop`);
    }
  }
  for (const path of plan.paths) {
    const { chain, match } = between(path.from.id, path.to.id);
    chain.push(...lossRule(match, path.impairment.loss));
    if (impairs(path.impairment, TC_KEYS)) {
      chain.push(`${match} meta priority set 1:${hex(classOfGroup(path.from.id))}`);
    }
  }
  if (prerouting.length + forward.length + postrouting.length === 0) return undefined;
  const groups = plan.groups.filter((group) => used.has(group.id));
  if (naming.match === "marks") {
    for (const group of groups) {
      prerouting.push(
        `iifname @g${group.id} meta mark set meta mark and ${hex32(~GROUP_MARK_MASK)} or ${hex32(group.id << GROUP_MARK_SHIFT)}`,
      );
    }
  }
  const byName = new Map(plan.vms.map((vm) => [vm.name, vm]));
  const set = (name: string, type: string, elements: readonly string[], comment: string) => {
    const listed = elements.length > 0 ? ` elements = { ${elements.join(", ")} };` : "";
    return `  set ${name} { type ${type};${listed} comment "${comment}"; }`;
  };
  const sets = groups.flatMap((group) => {
    const members = group.members.flatMap((name) => byName.get(name) ?? []);
    const nics = set(
      `g${group.id}`,
      "ifname",
      members.map((vm) => quotedNic(naming, vm)),
      `group ${group.name}`,
    );
    if (naming.match !== "macs") return [nics];
    const macs = members.map((vm) => checkedMac(naming, vm));
    return [nics, set(`m${group.id}`, "ether_addr", macs, `group ${group.name}`)];
  });
  if (naming.match === "macs" && groups.length > 0) {
    const pairs = plan.vms.map((vm) => `${quotedNic(naming, vm)} . ${checkedMac(naming, vm)}`);
    sets.push(
      set(
        "taps",
        "ifname",
        plan.vms.map((vm) => quotedNic(naming, vm)),
        "the fleet's taps",
      ),
      set("own", "ifname . ether_addr", pairs, "each tap's MAC"),
    );
    prerouting.unshift("iifname @taps iifname . ether saddr != @own drop");
  }
  const chain = (name: string, rules: readonly string[]) =>
    rules.length === 0
      ? []
      : [
          `  chain ${name} {`,
          // Before anything else of the bridge's: a dropped packet is not looked at further.
          `    type filter hook ${name} priority -200; policy accept;`,
          ...rules.map((rule) => `    ${rule}`),
          "  }",
        ];
  const table = checkedTable(naming.table);
  if (naming.comment !== undefined) {
    assertRenderable("owner mark", naming.comment, /^[ !#-[\]-~]{1,128}$/.test(naming.comment));
  }
  return [
    `table bridge ${table} {`,
    ...(naming.comment === undefined ? [] : [`  comment "${naming.comment}"`]),
    ...sets,
    ...chain("prerouting", prerouting),
    ...chain("forward", forward),
    ...chain("postrouting", postrouting),
    "}",
    "",
  ].join("\n");
}

/** Replaces the fleet's bridge table in one transaction, or takes it away (`nft` undefined). */
export function renderNftReplacement(table: string, nft: string | undefined): string {
  checkedTable(table);
  return [`table bridge ${table} {}`, `delete table bridge ${table}`, ...(nft ? [nft] : [""])].join(
    "\n",
  );
}

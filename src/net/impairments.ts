import { createHash } from "node:crypto";
import { mkdir, readFile, rm, stat } from "node:fs/promises";
import * as z from "zod";
import type { ImpairmentSupport } from "../core/doctor.js";
import { groupMembers, planImpairments } from "../core/impair-plan.js";
import { ALIAS_MAX, inNamespace, ownerMark, ownershipOf, tapName } from "../core/net.js";
import {
  type DeviceScript,
  hostsNaming,
  type ImpairNaming,
  ownNetworkNaming,
  type RenderedImpairments,
  renderImpairments,
  renderNftReplacement,
} from "../core/render/impair.js";
import { UserError } from "../errors.js";
import { ifExists } from "../host/paths.js";
import type { Runner } from "../host/runner.js";
import { writeFileAtomic } from "../state/atomic.js";
import { parseJsonOrUndefined } from "../state/json.js";
import { type FleetNetwork, refuseUnlessOurs } from "./network.js";

/**
 * Puts a fleet's rendered impairments on its network: ifb devices, one tc batch, one nft
 * transaction. A device whose script is what was last applied and whose qdiscs are still there is
 * left alone (its queues keep their packets); any other is made anew. What the kernel holds is
 * looked at each time, so a VM restarted on a new tap, or a host rebooted, is set up again.
 */

/** `tc -j qdisc show`: the fields read. */
const qdiscs = z.array(
  z.object({ kind: z.string(), handle: z.string(), dev: z.string(), root: z.boolean().optional() }),
);
const links = z.array(z.object({ ifname: z.string(), ifalias: z.string().optional() }));
/** What was applied to each device, by a digest of its script (a record: untrusted, checked). */
const applied = z.record(z.string(), z.string().regex(/^[0-9a-f]{64}$/));

const ROOT_HANDLE = "1:";

/** One write at a time to each record of what was applied. */
const appliedQueue = new Map<string, Promise<void>>();

function isEmpty(rendered: RenderedImpairments): boolean {
  return rendered.devices.length === 0 && rendered.nft === undefined;
}

function digest(script: DeviceScript): string {
  return createHash("sha256").update(script.lines.join("\n")).digest("hex");
}

/** Whether this kernel has netem, asked in a namespace of its own so nothing is left behind. */
const netemAnswers = new WeakMap<Runner, Promise<boolean>>();
export function hasNetem(runner: Runner): Promise<boolean> {
  const asked = netemAnswers.get(runner);
  if (asked) return asked;
  const answer = runner
    .run({
      argv: [
        "unshare",
        "--net",
        "tc",
        "qdisc",
        "add",
        "dev",
        "lo",
        "root",
        "netem",
        "delay",
        "1ms",
      ],
      probe: true,
      okCodes: "any",
    })
    .then((result) => result.code === 0);
  netemAnswers.set(runner, answer);
  // A host that did not answer is asked again by the next caller.
  answer.catch(() => netemAnswers.delete(runner));
  return answer;
}

/** A command in a network namespace of its own, gone with it: whether it succeeded. */
async function succeedsAlone(
  runner: Runner,
  argv: readonly string[],
  input?: string,
): Promise<boolean> {
  const result = await runner.run({
    argv: ["unshare", "--net", ...argv],
    ...(input === undefined ? {} : { input }),
    probe: true,
    okCodes: "any",
  });
  return result.code === 0;
}

/**
 * What a tiny plan of every kind of impairment renders to, for the bridge rules' probe: on a
 * fleet's own network and on hosts joined to one another.
 */
function probeRules(): string {
  const { members } = groupMembers({ a: ["a"], b: ["b"] }, ["a", "b"]);
  const plan = planImpairments({
    vms: [
      { name: "a", slot: 1 },
      { name: "b", slot: 2 },
    ],
    members,
    impairments: {
      vms: { a: { out: { loss: 1 } } },
      paths: { "a>b": { loss: 1, rate: 1_000_000 } },
    },
    partition: ["a", "b"],
  });
  const macs = new Map([
    ["a", "52:54:00:00:00:01"],
    ["b", "52:54:00:00:00:02"],
  ]);
  const overHosts = hostsNaming({ root: "/probe", fleet: "probe" }, macs);
  return [ownNetworkNaming(tapName), overHosts]
    .map((naming) => renderImpairments(plan, naming).nft ?? "")
    .join("\n");
}

/**
 * Loads ifb (where it is a module) with no devices of its own: loaded by its first use, it would
 * make ifb0 and ifb1 in the host's namespace, which are no fleet's.
 */
function loadIfb(runner: Runner): Promise<unknown> {
  return runner.run({ argv: ["modprobe", "ifb", "numifbs=0"], probe: true, okCodes: "any" });
}

const supportAnswers = new WeakMap<Runner, Promise<ImpairmentSupport>>();

/** Which impairments this kernel can apply, each part tried in a namespace of its own. */
export function impairmentSupport(runner: Runner): Promise<ImpairmentSupport> {
  const asked = supportAnswers.get(runner);
  if (asked) return asked;
  const answer = probeSupport(runner);
  supportAnswers.set(runner, answer);
  answer.catch(() => supportAnswers.delete(runner));
  return answer;
}

async function probeSupport(runner: Runner): Promise<ImpairmentSupport> {
  await loadIfb(runner);
  const [shaping, ifb, bridgeRules, netem] = await Promise.all([
    succeedsAlone(
      runner,
      ["tc", "-batch", "-"],
      [
        "qdisc add dev lo root handle 1: htb default 10",
        "class add dev lo parent 1: classid 1:1 htb rate 10mbit ceil 10mbit",
        "qdisc add dev lo clsact",
        "filter add dev lo ingress protocol all prio 1 u32 match u32 0 0 action mirred egress redirect dev lo",
        "",
      ].join("\n"),
    ),
    succeedsAlone(runner, ["ip", "link", "add", "shoal-probe", "type", "ifb"]),
    succeedsAlone(runner, ["nft", "-f", "-"], probeRules()),
    hasNetem(runner),
  ]);
  return { shaping, ifb, bridgeRules, netem };
}

export const NETEM_MISSING_HINT =
  "a kernel with the module has it after `modprobe sch_netem` (Debian's do); rate, loss and partitions work without it";

export class NetworkImpairments {
  constructor(
    private readonly runner: Runner,
    private readonly network: FleetNetwork,
    private readonly naming: ImpairNaming = network.impairNaming(),
    /** Where the network is, as messages name it: `this host`, or `host NAME` of a fleet's hosts. */
    private readonly where = "this host",
  ) {}

  private get namespace(): string | undefined {
    return this.network.namespace;
  }

  private inNet(argv: readonly [string, ...string[]]): [string, ...string[]] {
    return inNamespace(this.namespace, argv);
  }

  private async ifbs(): Promise<Map<string, string | undefined>> {
    const shown = await this.runner.run({
      argv: this.network.ipArgv(["-j", "link", "show", "type", "ifb"]),
      probe: true,
    });
    return new Map(links.parse(JSON.parse(shown.stdout || "[]")).map((l) => [l.ifname, l.ifalias]));
  }

  /** The ifbs of this fleet that are there: all in its own namespace, marked ones on the host's. */
  private async ownIfbs(): Promise<Set<string>> {
    const found = await this.ifbs();
    if (this.namespace !== undefined) return new Set(found.keys());
    return new Set(
      [...found]
        .filter(([, alias]) => ownershipOf(alias, this.network.owner, ALIAS_MAX).kind === "ours")
        .map(([name]) => name),
    );
  }

  /**
   * Changes the record of what was applied; VMs starting at once change it one after another.
   * It goes once the fleet has no impairments: such a fleet is not looked at on every command.
   */
  private recordApplied(
    change: (recorded: Record<string, string>) => void,
    impairsAnything: boolean,
  ): Promise<void> {
    const path = this.network.paths.impairments;
    const queued = (appliedQueue.get(path) ?? Promise.resolve()).then(async () => {
      const recorded = await this.readApplied();
      change(recorded);
      if (!impairsAnything) {
        await rm(path, { force: true });
        return;
      }
      await mkdir(this.network.paths.dir, { recursive: true, mode: 0o755 });
      await writeFileAtomic(path, `${JSON.stringify(recorded)}\n`, 0o644);
    });
    appliedQueue.set(
      path,
      queued.catch(() => undefined),
    );
    return queued;
  }

  private async readApplied(): Promise<Record<string, string>> {
    const text = await ifExists(readFile(this.network.paths.impairments, "utf8"));
    const parsed = applied.safeParse(parseJsonOrUndefined(text ?? "{}"));
    return parsed.success ? parsed.data : {};
  }

  /**
   * Refuses, before anything changes, what cannot be applied: netem on a kernel without it, and
   * on a host bridge a table or ifb device of shoal's names that is not this fleet's.
   */
  async check(rendered: RenderedImpairments): Promise<void> {
    if (isEmpty(rendered)) return;
    const support = await impairmentSupport(this.runner);
    if (rendered.devices.some((d) => d.lines.some((line) => / netem /.test(line)))) {
      if (!support.netem) {
        throw new UserError(
          `delay, jitter, corruption and duplication need the kernel's netem qdisc (sch_netem), which ${this.where}'s kernel lacks`,
          NETEM_MISSING_HINT,
        );
      }
    }
    const lacking = [
      ...(rendered.devices.length > 0 && !support.shaping ? ["htb, clsact, u32 or mirred"] : []),
      ...(rendered.ifbs.length > 0 && !support.ifb ? ["ifb devices"] : []),
      ...(rendered.nft !== undefined && !support.bridgeRules
        ? ["nftables' bridge family with numgen"]
        : []),
    ];
    if (lacking.length > 0) {
      throw new UserError(
        `these impairments need ${lacking.join(", ")}, which ${this.where}'s kernel lacks`,
        "`shoal doctor` names the modules; Debian's kernels have them all",
      );
    }
    if (this.namespace !== undefined) return;
    refuseUnlessOurs(
      `nft table bridge ${this.naming.table}`,
      await this.network.tableOwnership(this.naming.table, "bridge"),
    );
    const found = await this.ifbs();
    for (const ifb of rendered.ifbs) {
      if (!found.has(ifb)) continue;
      refuseUnlessOurs(
        `ifb device ${ifb}`,
        ownershipOf(found.get(ifb), this.network.owner, ALIAS_MAX),
      );
    }
  }

  /**
   * Makes the network hold what `rendered` says. With `vm`, only that VM's devices, made anew (it
   * is starting; `rendered` may hold that VM alone); without, every device of the fleet's, the ifb
   * devices and the bridge table.
   */
  async apply(
    rendered: RenderedImpairments,
    vm?: { readonly nic: string; readonly ifb: string },
  ): Promise<void> {
    // A fleet that never had impairments is not looked at on every command.
    const record = this.network.paths.impairments;
    if (isEmpty(rendered) && (await ifExists(stat(record))) === undefined) return;
    // Only looking, all at once: a refusal still comes before anything changes.
    const [, shown, listed, ownIfbs, before] = await Promise.all([
      this.check(rendered),
      this.runner.run({ argv: this.inNet(["tc", "-j", "qdisc", "show"]), probe: true }),
      this.runner.run({ argv: this.network.ipArgv(["-j", "link", "show"]), probe: true }),
      this.ownIfbs(),
      vm === undefined ? this.readApplied() : Promise.resolve({} as Record<string, string>),
    ]);
    const held = qdiscs.parse(JSON.parse(shown.stdout || "[]"));
    const devices = new Set(links.parse(JSON.parse(listed.stdout || "[]")).map((l) => l.ifname));
    const owned = (device: string) => this.namespace !== undefined || this.naming.owns(device);
    const hasRoot = new Set(
      held.filter((q) => q.root && q.handle === ROOT_HANDLE && owned(q.dev)).map((q) => q.dev),
    );
    const hasClsact = new Set(
      held.filter((q) => q.kind === "clsact" && owned(q.dev)).map((q) => q.dev),
    );
    const inScope = (device: string) => vm === undefined || device === vm.nic || device === vm.ifb;
    const after: Record<string, string> = {};
    const created = new Set<string>();
    for (const ifb of rendered.ifbs.filter(inScope)) {
      if (!ownIfbs.has(ifb)) {
        await this.runner.run({ argv: this.network.ipArgv(["link", "add", ifb, "type", "ifb"]) });
        if (this.namespace === undefined) {
          await this.runner.run({
            argv: [
              "ip",
              "link",
              "set",
              "dev",
              ifb,
              "alias",
              ownerMark(this.network.owner, ALIAS_MAX),
            ],
          });
        }
        // ifb's own queue of 32 packets would drop bursts that a real link's buffer takes.
        await this.runner.run({
          argv: this.network.ipArgv(["link", "set", ifb, "txqueuelen", "1000", "up"]),
        });
        created.add(ifb);
        devices.add(ifb);
      }
    }
    const wanted = new Map(rendered.devices.map((script) => [script.device, script]));
    const considered = new Set(
      [...wanted.keys(), ...hasRoot, ...hasClsact].filter((device) => inScope(device)),
    );
    const batch: string[] = [];
    for (const device of [...considered].sort()) {
      // A VM not started yet has no tap; its start applies its part.
      if (!devices.has(device)) continue;
      const script = wanted.get(device);
      const sum = script ? digest(script) : undefined;
      if (script && sum) {
        after[device] = sum;
        // A tap redirecting to an ifb made just now (the old one gone) points at nothing.
        const intact =
          vm === undefined &&
          before[device] === sum &&
          !created.has(device) &&
          ![...created].some((ifb) => script.lines.some((line) => line.endsWith(` dev ${ifb}`))) &&
          hasRoot.has(device) === script.lines.some((line) => line.includes(" root handle 1: ")) &&
          hasClsact.has(device) === script.lines.some((line) => line.endsWith(" clsact"));
        if (intact) continue;
      }
      if (hasRoot.has(device)) batch.push(`qdisc del dev ${device} root`);
      if (hasClsact.has(device)) batch.push(`qdisc del dev ${device} clsact`);
      if (script) batch.push(...script.lines);
    }
    if (batch.length > 0) {
      await this.runner.run({
        argv: this.inNet(["tc", "-batch", "-"]),
        input: `${batch.join("\n")}\n`,
      });
    }
    if (vm !== undefined) {
      // Past the check above, the fleet has impairments (or had them): its record stays.
      await this.recordApplied((recorded) => {
        for (const device of [vm.nic, vm.ifb]) delete recorded[device];
        Object.assign(recorded, after);
      }, true);
      return;
    }
    for (const ifb of ownIfbs) {
      if (!rendered.ifbs.includes(ifb)) {
        await this.runner.run({ argv: this.network.ipArgv(["link", "del", ifb]) });
      }
    }
    await this.runner.run({
      argv: this.inNet(["nft", "-f", "-"]),
      input: renderNftReplacement(this.naming.table, rendered.nft),
    });
    await this.recordApplied((recorded) => {
      for (const device of Object.keys(recorded)) delete recorded[device];
      Object.assign(recorded, after);
    }, !isEmpty(rendered));
  }

  /**
   * Takes a fleet's impairments off a host bridge (its own namespace goes whole, with them): its
   * ifb devices and its table; its taps go with their VMs.
   */
  async remove(): Promise<void> {
    if (this.namespace !== undefined) return;
    for (const ifb of await this.ownIfbs()) {
      await this.runner.run({ argv: ["ip", "link", "del", ifb] });
    }
    const table = this.naming.table;
    if ((await this.network.tableOwnership(table, "bridge")).kind === "ours") {
      await this.runner.run({
        argv: ["nft", "-f", "-"],
        input: renderNftReplacement(table, undefined),
      });
    }
  }
}

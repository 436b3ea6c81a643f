import { Command, Option } from "@commander-js/extra-typings";
import {
  describeImpairment,
  formatImpairmentValue,
  IMPAIRMENT_KEYS,
  type Impairment,
  type ImpairmentKey,
  parseImpairment,
} from "../core/impair.js";
import { type Direction, type ImpairTarget, resetLive, setLive } from "../core/impair-plan.js";
import { UserError } from "../errors.js";
import {
  changeImpairments,
  impairState,
  planOf,
  type TargetFlags,
  targetOf,
} from "../fleet/impairments.js";
import type { FleetSession } from "../fleet/session.js";
import { type Context, fleetFileOption } from "./context.js";
import { withFleet } from "./fleet.js";
import { fleetNameOption, lockWaitOption } from "./options.js";
import { formatTable } from "./table.js";

/** `shoal net`: the fleet's impairments and partitions, shown and changed while it runs. */

const FLAG_HELP: Record<ImpairmentKey, string> = {
  delay: "added delay, like 40ms (needs sch_netem)",
  jitter: "delay varies by up to this either way, like 5ms (needs sch_netem)",
  loss: "packets dropped at random, like 1%",
  rate: "bandwidth, like 10mbit",
  corrupt: "packets with a bit flipped, like 0.1% (needs sch_netem)",
  duplicate: "packets sent twice, like 0.1% (needs sch_netem)",
};

function targetOptions<T extends Command<[string[]]>>(command: T) {
  return command
    .option("--all", "every VM of the fleet")
    .option("--group <group>", "the VMs of a group (groups: in the fleet file)")
    .option("--to <group>", "with --group: the path from that group to this one")
    .addOption(
      new Option(
        "--direction <direction>",
        "both ways, out (what the VMs send; with --to, from --group to --to) or in",
      ).choices(["both", "out", "in"] as const),
    )
    .addOption(fleetFileOption())
    .addOption(fleetNameOption())
    .addOption(lockWaitOption());
}

function describeTarget(target: ImpairTarget | undefined, direction: Direction): string {
  const way = direction === "both" ? "" : ` (${direction})`;
  if (target === undefined) return "every link";
  if (target.kind === "path") return `the path from ${target.from} to ${target.to}${way}`;
  const [first] = target.vms;
  return `${target.vms.length === 1 && first ? first : `${target.vms.length} VMs`}${way}`;
}

function flagsOf(patterns: string[], options: Omit<TargetFlags, "vms">): TargetFlags {
  return { vms: patterns, all: options.all, group: options.group, to: options.to };
}

function valuesOf(options: Partial<Record<ImpairmentKey, string>>): Impairment {
  const parsed = parseImpairment(options);
  if (!parsed.ok) throw new UserError(`--${parsed.failed}: ${parsed.message}`);
  if (Object.keys(parsed.value).length === 0) {
    throw new UserError(
      `give at least one of ${IMPAIRMENT_KEYS.map((key) => `--${key}`).join(", ")}`,
      "--delay 0ms (or --loss 0%) takes one away; `shoal net reset` takes back live changes",
    );
  }
  return parsed.value;
}

function setCommand() {
  let command = targetOptions(
    new Command("set")
      .description(
        "change the impairments of VMs' links, or of the path between two groups, at once on the running fleet",
      )
      .argument("[vms...]", "VM names or patterns"),
  );
  for (const key of IMPAIRMENT_KEYS) {
    command = command.option(`--${key} <value>`, FLAG_HELP[key]) as typeof command;
  }
  return command.action(async (patterns, options, cmd) => {
    await withFleet(cmd, options, "net set", async ({ context, session }) => {
      const values = valuesOf(options as Partial<Record<ImpairmentKey, string>>);
      const target = targetOf(session, flagsOf(patterns, options), false);
      if (target === undefined) throw new Error("internal: a required target is missing");
      const direction = options.direction ?? "both";
      await changeImpairments(session, (state) => ({
        ...state,
        live: setLive(state.live, target, direction, values),
      }));
      const given = Object.entries(valuesJson(values, true)).map(
        ([key, value]) => `${key} ${value}`,
      );
      context.print(`${describeTarget(target, direction)}: ${given.join(" ")}`);
    });
  });
}

function resetCommand() {
  return targetOptions(
    new Command("reset")
      .description(
        "take back live changes (of the VMs or path named; of everything without them): the fleet file's impairments hold again",
      )
      .argument("[vms...]", "VM names or patterns"),
  ).action(async (patterns, options, cmd) => {
    await withFleet(cmd, options, "net reset", async ({ context, session }) => {
      const target = targetOf(session, flagsOf(patterns, options), true);
      if (target === undefined && options.direction !== undefined) {
        throw new UserError(
          "--direction needs the links it applies to: VM names, --all or --group",
          "`shoal net reset` alone takes back every live change, both ways",
        );
      }
      const direction = options.direction ?? "both";
      await changeImpairments(session, (state) => ({
        ...state,
        live: resetLive(state.live, target, direction),
      }));
      context.print(`${describeTarget(target, direction)}: as the fleet file has it`);
    });
  });
}

function partitionCommand() {
  return new Command("partition")
    .description(
      "cut groups off from one another: each group named reaches only itself and the VMs in no group",
    )
    .argument("<groups...>", "two or more groups (groups: in the fleet file)")
    .addOption(fleetFileOption())
    .addOption(fleetNameOption())
    .addOption(lockWaitOption())
    .action(async (groups, options, cmd) => {
      await withFleet(cmd, options, "net partition", async ({ context, session }) => {
        const unique = [...new Set(groups)];
        if (unique.length < 2) {
          throw new UserError(
            "a partition needs two or more groups",
            "for example: shoal net partition east west",
          );
        }
        for (const group of unique) targetOf(session, { vms: [], group }, false);
        await changeImpairments(session, (state) => ({ ...state, partition: unique.sort() }));
        context.print(`partitioned: ${unique.join(" | ")}`);
      });
    });
}

function healCommand() {
  return new Command("heal")
    .description("end the partition: every group reaches every other again")
    .addOption(fleetFileOption())
    .addOption(fleetNameOption())
    .addOption(lockWaitOption())
    .action(async (options, cmd) => {
      await withFleet(cmd, options, "net heal", async ({ context, session }) => {
        const was = impairState(session).partition;
        await changeImpairments(session, (state) => ({ ...state, partition: [] }));
        context.print(was.length > 0 ? `healed: ${was.join(" | ")}` : "there was no partition");
      });
    });
}

/** An impairment's values as written; a value of 0 (nothing) only with `zeros`. */
function valuesJson(impairment: Impairment, zeros = false): Record<string, string> {
  return Object.fromEntries(
    IMPAIRMENT_KEYS.flatMap((key) => {
      const value = impairment[key];
      return value === undefined || (value === 0 && !zeros)
        ? []
        : [[key, formatImpairmentValue(key, value)]];
    }),
  );
}

function show(context: Context, session: FleetSession, json: boolean): void {
  const state = impairState(session);
  const vms = session.recordedNames().map((name) => ({
    name,
    slot: session.entry(name).spec.index,
  }));
  const plan = planOf(state, vms);
  const rows = plan.vms.map((vm) => ({
    name: vm.name,
    group: vm.group?.name ?? null,
    out: valuesJson(vm.out),
    in: valuesJson(vm.in),
  }));
  const paths = plan.paths.map((path) => ({
    from: path.from.name,
    to: path.to.name,
    ...valuesJson(path.impairment),
  }));
  const partition = plan.partition.map((group) => group.name);
  if (json) {
    context.printJson({ vms: rows, paths, partition });
    return;
  }
  context.print(
    formatTable(
      ["NAME", "GROUP", "OUT", "IN"],
      plan.vms.map((vm) => [
        vm.name,
        vm.group?.name ?? "-",
        describeImpairment(vm.out),
        describeImpairment(vm.in),
      ]),
    ),
  );
  for (const path of plan.paths) {
    context.print(
      `path ${path.from.name} -> ${path.to.name}: ${describeImpairment(path.impairment)}`,
    );
  }
  context.print(partition.length > 0 ? `partition: ${partition.join(" | ")}` : "partition: none");
}

function showCommand() {
  return new Command("show")
    .description("what the fleet's network does to each VM's traffic, each path and the partition")
    .addOption(fleetFileOption())
    .addOption(fleetNameOption())
    .option("--json", "print an object of vms, paths and partition for scripts")
    .action(async (options, cmd) => {
      await withFleet(cmd, options, undefined, async ({ context, session }) => {
        show(context, session, options.json === true);
      });
    });
}

export function netCommand() {
  const verb = new Command("net").description(
    "the fleet's network as a test bench: delay, jitter, loss and rate per VM and between groups, partitions; changed live",
  );
  // Each subcommand's own exitOverride lets main turn usage errors into exit code 2.
  for (const sub of [
    showCommand(),
    setCommand(),
    resetCommand(),
    partitionCommand(),
    healCommand(),
  ]) {
    verb.addCommand(sub.exitOverride());
  }
  return verb;
}

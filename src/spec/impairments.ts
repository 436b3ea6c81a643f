import picomatch from "picomatch";
import type { FleetSpec } from "../core/fleet.js";
import { type Impairment, impairmentProblem, parseImpairment } from "../core/impair.js";
import {
  type GroupPatterns,
  groupMembers,
  MAX_GROUPS,
  pathsOf,
  sidesOf,
  type VmSides,
} from "../core/impair-plan.js";
import type { FieldPath, PathProblem } from "./resolve.js";
import type { FleetFile, ImpairmentRule } from "./schema.js";

type FleetImpairments = FleetSpec["impairments"];

const asList = (patterns: string | readonly string[]) =>
  typeof patterns === "string" ? [patterns] : [...patterns];

/** A rule's values as numbers (the schema has checked each). */
function ruleImpairment(rule: ImpairmentRule): Impairment {
  const parsed = parseImpairment(rule);
  if (!parsed.ok) throw new Error(`internal: ${parsed.failed} of a rule passed the schema`);
  return parsed.value;
}

function checkGroups(
  groups: Readonly<Record<string, string | readonly string[]>>,
  vms: readonly string[],
  problems: PathProblem[],
): GroupPatterns | undefined {
  const patterns: Record<string, readonly string[]> = {};
  const before = problems.length;
  const names = Object.keys(groups);
  if (names.length > MAX_GROUPS) {
    problems.push({
      path: ["groups"],
      message: `${names.length} groups are too many; at most ${MAX_GROUPS}`,
    });
  }
  for (const name of names) {
    const list = asList(groups[name] ?? []);
    patterns[name] = list;
    list.forEach((pattern, i) => {
      const isMatch = picomatch(pattern);
      if (vms.some((vm) => isMatch(vm))) return;
      const path: FieldPath =
        typeof groups[name] === "string" ? ["groups", name] : ["groups", name, i];
      problems.push({ path, message: `${JSON.stringify(pattern)} matches no VM of the fleet` });
    });
  }
  const { clash } = groupMembers(patterns, vms);
  if (clash) {
    problems.push({
      path: ["groups", clash.groups[1]],
      message: `VM ${clash.vm} is also in group ${clash.groups[0]}; a VM is in at most one group`,
    });
  }
  return problems.length === before ? patterns : undefined;
}

/**
 * What the fleet file's impairments set, VM side by VM side and path by path; a side or path two
 * rules both set is a problem (which of them would hold is not obvious), as are groups and
 * patterns that name nothing.
 */
export function resolveImpairments(
  file: Partial<FleetFile>,
  vms: readonly string[],
  problems: PathProblem[],
): FleetImpairments | undefined {
  const groups = checkGroups(file.groups ?? {}, vms, problems);
  if (groups === undefined) return undefined;
  const vmSides: Record<string, VmSides> = {};
  const paths: Record<string, Impairment> = {};
  const setBy = new Map<string, number>();
  const before = problems.length;
  (file.impairments ?? []).forEach((rule: ImpairmentRule, index) => {
    const at = (...path: FieldPath) => ["impairments", index, ...path];
    const impairment = ruleImpairment(rule);
    const problem = impairmentProblem(impairment);
    if (problem) problems.push({ path: at("jitter"), message: problem });
    const direction = rule.direction ?? "both";
    const overlaps = new Map<number, string[]>();
    const claim = (key: string, what: string): boolean => {
      const first = setBy.get(key);
      if (first === undefined) {
        setBy.set(key, index);
        return true;
      }
      overlaps.set(first, [...(overlaps.get(first) ?? []), what]);
      return false;
    };
    const reportOverlaps = () => {
      for (const [first, links] of overlaps) {
        const shown = links.slice(0, 3).join(", ");
        const more = links.length > 3 ? ` and ${links.length - 3} more` : "";
        problems.push({
          path: at(),
          message: `overlaps impairments[${first}] on ${shown}${more}; give each link one rule`,
        });
      }
    };
    for (const end of [rule.group, rule.to]) {
      const key = end === rule.group ? "group" : "to";
      if (end !== undefined && groups[end] === undefined) {
        problems.push({ path: at(key), message: `there is no group ${end} in groups:` });
      }
    }
    if (rule.group !== undefined && groups[rule.group] === undefined) return;
    if (rule.to !== undefined && groups[rule.to] === undefined) return;
    if (rule.group !== undefined && rule.to !== undefined) {
      for (const key of pathsOf(direction, rule.group, rule.to)) {
        if (claim(`path ${key}`, `the path ${key.replace(">", " to ")}`)) paths[key] = impairment;
      }
      reportOverlaps();
      return;
    }
    const members =
      rule.group !== undefined
        ? (groupMembers(groups, vms).members.get(rule.group) ?? [])
        : selectPatterns(asList(rule.vms ?? []), vms, at("vms"), problems);
    for (const vm of members) {
      for (const side of sidesOf(direction)) {
        if (!claim(`vm ${vm} ${side}`, `${vm} ${side}`)) continue;
        const sides: VmSides = vmSides[vm] ?? {};
        vmSides[vm] = { ...sides, [side]: impairment };
      }
    }
    reportOverlaps();
  });
  if (problems.length > before) return undefined;
  return { groups, set: { vms: vmSides, paths } };
}

function selectPatterns(
  patterns: readonly string[],
  vms: readonly string[],
  path: FieldPath,
  problems: PathProblem[],
): string[] {
  const selected = new Set<string>();
  for (const pattern of patterns) {
    const isMatch = picomatch(pattern);
    const matches = vms.filter((vm) => isMatch(vm));
    if (matches.length === 0) {
      problems.push({ path, message: `${JSON.stringify(pattern)} matches no VM of the fleet` });
    }
    for (const vm of matches) selected.add(vm);
  }
  return vms.filter((vm) => selected.has(vm));
}

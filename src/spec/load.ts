import { readFile } from "node:fs/promises";
import {
  isAlias,
  isMap,
  isPair,
  isScalar,
  isSeq,
  LineCounter,
  type Node,
  parseDocument,
} from "yaml";
import { z } from "zod";
import type { FleetSpec } from "../core/fleet.js";
import { isDnsLabel } from "../core/names.js";
import { SpecError, type SpecProblem, UserError } from "../errors.js";
import { type CheckedFleetFile, type FieldPath, resolveFleet } from "./resolve.js";
import {
  type FleetFile,
  fleetFileSchema,
  fleetSections,
  type VmEntry,
  vmEntrySchema,
} from "./schema.js";

export const DEFAULT_FLEET_FILE = "shoal.yaml";

/** Reads and checks a fleet file; every problem in it is reported at once, with its position. */
export async function loadFleetFile(path: string): Promise<FleetSpec> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      throw new UserError(
        `no fleet file ${path}`,
        "pass -f FILE, or write shoal.yaml (examples/ has some)",
      );
    }
    if (code === "EISDIR")
      throw new UserError(`${path} is a directory, not a fleet file`, "pass -f FILE");
    throw new UserError(`cannot read fleet file ${path}: ${(error as Error).message}`);
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new UserError(`${path} is not a text file (not UTF-8)`, "a fleet file is YAML text");
  }
  return parseFleetText(text, path);
}

function describeValue(value: unknown): string {
  if (value === undefined) return "nothing";
  if (value === null) return "an empty value";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object") return "a mapping";
  if (typeof value === "string") return `text "${value}"`;
  return `${typeof value} ${String(value)}`;
}

const EXPECTED: Record<string, string> = {
  object: "a mapping (key: value)",
  array: "a list",
  string: "text",
  number: "a number",
  int: "a whole number",
};

/** Zod's generic messages, said the way a fleet file's author thinks of the file. */
function messageFor(issue: z.core.$ZodRawIssue): string | undefined {
  switch (issue.code) {
    case "invalid_type":
      if (issue.input === undefined) return "is required";
      return `must be ${EXPECTED[issue.expected] ?? issue.expected}, not ${describeValue(issue.input)}`;
    case "invalid_value":
      return `${describeValue(issue.input)} is not one of: ${issue.values.join(", ")}`;
    case "too_small":
      return `must be at least ${issue.minimum}`;
    case "too_big":
      return `must be at most ${issue.maximum}`;
    default:
      return undefined;
  }
}

/** The keys the schema allows at a path, for "unknown key" messages. */
function allowedKeys(path: readonly PropertyKey[]): string[] {
  let schema: z.ZodType = fleetFileSchema;
  for (const segment of [...path, undefined]) {
    while (schema instanceof z.ZodOptional || schema instanceof z.ZodDefault)
      schema = schema.unwrap() as z.ZodType;
    if (segment === undefined) break;
    if (schema instanceof z.ZodArray) schema = schema.element as z.ZodType;
    else if (schema instanceof z.ZodObject) schema = schema.shape[String(segment)] as z.ZodType;
  }
  return schema instanceof z.ZodObject ? Object.keys(schema.shape) : [];
}

export function formatFieldPath(path: readonly PropertyKey[]): string {
  if (path.length === 0) return "(file)";
  return path
    .map((segment, i) =>
      typeof segment === "number" ? `[${segment}]` : `${i === 0 ? "" : "."}${String(segment)}`,
    )
    .join("");
}

class Positions {
  constructor(
    private readonly doc: ReturnType<typeof parseDocument>,
    private readonly lines: LineCounter,
  ) {}

  /** The position of the value at `path`, or of its key (`key: true`), or of the nearest parent that exists. */
  of(path: FieldPath, key = false): { line: number; col: number } {
    let node: unknown = this.doc.contents;
    let offset = (node as Node | null)?.range?.[0] ?? 0;
    for (const segment of path) {
      if (isAlias(node)) node = node.resolve(this.doc);
      let next: unknown;
      let keyNode: unknown;
      if (isMap(node)) {
        const pair = node.items.find(
          (item) => isPair(item) && (isScalar(item.key) ? item.key.value : item.key) === segment,
        );
        keyNode = pair?.key;
        next = pair?.value;
      } else if (isSeq(node) && typeof segment === "number") {
        next = node.items[segment];
      }
      const target = key && segment === path[path.length - 1] ? keyNode : (next ?? keyNode);
      const start = (target as Node | undefined)?.range?.[0];
      if (start === undefined) break;
      offset = start;
      node = next;
    }
    return this.lines.linePos(offset);
  }
}

function schemaProblems(
  issues: readonly z.core.$ZodIssue[],
  file: string,
  positions: Positions,
): SpecProblem[] {
  return issues.flatMap((issue) => {
    if (issue.code === "unrecognized_keys") {
      const allowed = allowedKeys(issue.path);
      return issue.keys.map((key) => ({
        file,
        ...positions.of([...(issue.path as FieldPath), key], true),
        field: formatFieldPath([...issue.path, key]),
        message: `unknown key; ${allowed.length > 0 ? `expected one of ${allowed.join(", ")}` : "remove it"}`,
      }));
    }
    return [
      {
        file,
        ...positions.of(issue.path as FieldPath),
        field: formatFieldPath(issue.path),
        message: issue.message,
      },
    ];
  });
}

/** Validates each section alone, keeping what passed, so the cross-field rules can still run. */
function salvage(raw: Record<string, unknown>): CheckedFleetFile {
  const file: Partial<Record<keyof FleetFile, unknown>> = {};
  const failed = new Set<keyof FleetFile>();
  for (const [key, schema] of Object.entries(fleetSections) as [keyof FleetFile, z.ZodType][]) {
    const result = schema.safeParse(raw[key]);
    if (result.success) file[key] = result.data;
    else failed.add(key);
  }
  const rawVms = raw.vms;
  const vms = Array.isArray(rawVms)
    ? rawVms.map((entry): VmEntry | undefined => {
        const result = vmEntrySchema.safeParse(entry);
        return result.success ? result.data : undefined;
      })
    : [];
  const vmNames = Array.isArray(rawVms)
    ? rawVms.map((entry) => {
        const name = (entry as { name?: unknown } | null)?.name;
        return typeof name === "string" && isDnsLabel(name) ? name : undefined;
      })
    : [];
  return { file: file as Partial<FleetFile>, failed, vms, vmNames };
}

/** The yaml library's pretty messages end in " at line L, column C:" and a code excerpt; the position is given separately. */
function yamlMessage(message: string): string {
  return (message.split("\n")[0] ?? message).replace(/ at line \d+, column \d+:?$/, "");
}

function problemsAt(file: string, line: number, col: number, message: string): SpecError {
  return new SpecError([{ file, line, col, field: "(file)", message }]);
}

export function parseFleetText(text: string, file: string): FleetSpec {
  const lines = new LineCounter();
  const doc = parseDocument(text, {
    lineCounter: lines,
    prettyErrors: true,
    merge: true,
    uniqueKeys: true,
  });
  const [syntaxError] = doc.errors;
  if (syntaxError) {
    // Only the first: after a syntax error the parser's further complaints are mostly echoes of it.
    const { line, col } = syntaxError.linePos?.[0] ?? { line: 1, col: 1 };
    throw problemsAt(file, line, col, `not valid YAML: ${yamlMessage(syntaxError.message)}`);
  }
  if (doc.contents === null) {
    throw problemsAt(
      file,
      1,
      1,
      "the file is empty; a fleet file needs at least a name, like `name: lab`",
    );
  }
  const raw: unknown = doc.toJS({ maxAliasCount: 100 });
  const positions = new Positions(doc, lines);
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    const { line, col } = positions.of([]);
    throw problemsAt(
      file,
      line,
      col,
      `must be a mapping of fleet settings (name:, count:, vm:, ...), not ${describeValue(raw)}`,
    );
  }
  const parsed = fleetFileSchema.safeParse(raw, { error: messageFor });
  const checked = parsed.success
    ? {
        file: parsed.data,
        failed: new Set<keyof FleetFile>(),
        vms: parsed.data.vms ?? [],
        vmNames: (parsed.data.vms ?? []).map((vm) => vm.name),
      }
    : salvage(raw as Record<string, unknown>);
  const resolved = resolveFleet(checked);
  const problems = [
    ...(parsed.success ? [] : schemaProblems(parsed.error.issues, file, positions)),
    ...resolved.problems.map((problem) => ({
      file,
      ...positions.of(problem.path),
      field: formatFieldPath(problem.path),
      message: problem.message,
    })),
  ].sort((a, b) => a.line - b.line || a.col - b.col);
  if (problems.length > 0 || !resolved.fleet) throw new SpecError(problems);
  return resolved.fleet;
}

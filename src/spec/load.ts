import { constants, type Stats } from "node:fs";
import { type FileHandle, open, stat } from "node:fs/promises";
import * as z from "zod";
import { quoted } from "../core/excerpt.js";
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
import { positionOf, readYaml, type YamlSource } from "./yaml.js";

export const DEFAULT_FLEET_FILE = "shoal.yaml";

/** A fleet file is a few KiB; a larger one is something else (a disk image, /dev/zero). */
export const MAX_FLEET_FILE = 1024 * 1024;

/** At most this many problems are listed; a file with more is most likely not a fleet file. */
export const MAX_PROBLEMS = 50;

function kindOf(stats: Stats): string {
  if (stats.isDirectory()) return "a directory";
  if (stats.isFIFO()) return "a FIFO";
  if (stats.isCharacterDevice() || stats.isBlockDevice()) return "a device";
  if (stats.isSocket()) return "a socket";
  return "no regular file";
}

function notAFleetFile(path: string, kind: string): UserError {
  return new UserError(
    `${path} is ${kind}, not a fleet file`,
    "pass -f FILE, a regular file of YAML text",
  );
}

/**
 * The file's bytes, read only when it is a regular file (a FIFO would block, a device could be
 * endless or act on being opened) and only up to the limit.
 */
async function readBounded(path: string): Promise<Buffer> {
  let handle: FileHandle;
  try {
    const before = await stat(path);
    if (!before.isFile()) throw notAFleetFile(path, kindOf(before));
    // O_NONBLOCK: should the path become a FIFO after the stat, opening it does not wait for a writer.
    handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (error) {
    if (error instanceof UserError) throw error;
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      throw new UserError(
        `no fleet file ${path}`,
        "pass -f FILE, or write shoal.yaml (examples/ has some)",
      );
    }
    throw new UserError(`cannot read fleet file ${path}: ${(error as Error).message}`);
  }
  try {
    const opened = await handle.stat();
    if (!opened.isFile()) throw notAFleetFile(path, kindOf(opened));
    const buffer = Buffer.alloc(MAX_FLEET_FILE + 1);
    let length = 0;
    while (length < buffer.length) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, length);
      if (bytesRead === 0) break;
      length += bytesRead;
    }
    if (length > MAX_FLEET_FILE) {
      throw new UserError(
        `${path} is larger than ${MAX_FLEET_FILE / 1024 / 1024} MiB, too large for a fleet file`,
        "pass -f FILE, a fleet file of YAML text",
      );
    }
    return buffer.subarray(0, length);
  } catch (error) {
    if (error instanceof UserError) throw error;
    throw new UserError(`cannot read fleet file ${path}: ${(error as Error).message}`);
  } finally {
    await handle.close();
  }
}

/** The text of a UTF-8 file, or the position of its first byte that is not UTF-8. */
function decodeUtf8(bytes: Uint8Array, file: string): string {
  // The byte order mark is kept while searching, so that byte offsets stay true.
  const decoder = () => new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  try {
    return decoder()
      .decode(bytes)
      .replace(/^\uFEFF/, "");
  } catch {
    // The longest prefix that decodes (a character cut at its end waits for more): the bad byte follows it.
    let good = 0;
    let bad = bytes.length;
    while (good < bad) {
      const middle = Math.ceil((good + bad) / 2);
      try {
        decoder().decode(bytes.subarray(0, middle), { stream: true });
        good = middle;
      } catch {
        bad = middle - 1;
      }
    }
    const before = decoder().decode(bytes.subarray(0, good), { stream: true });
    const offset = Buffer.byteLength(before);
    const lines = before.replace(/^\uFEFF/, "").split("\n");
    throw problemsAt(
      file,
      lines.length,
      (lines[lines.length - 1]?.length ?? 0) + 1,
      `byte ${offset + 1} (0x${(bytes[offset] ?? 0).toString(16).padStart(2, "0")}) is not UTF-8; a fleet file is UTF-8 text`,
    );
  }
}

/** A fleet file's bytes, checked: they must be UTF-8 text (a byte order mark is allowed). */
export function parseFleetBytes(bytes: Uint8Array, file: string): FleetSpec {
  return parseFleetText(decodeUtf8(bytes, file), file);
}

/** Reads and checks a fleet file; every problem in it is reported at once, with its position. */
export async function loadFleetFile(path: string): Promise<FleetSpec> {
  return parseFleetBytes(await readBounded(path), path);
}

function describeValue(value: unknown): string {
  if (value === undefined) return "nothing";
  if (value === null) return "an empty value";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object") return "a mapping";
  if (typeof value === "string") return `text ${quoted(value)}`;
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

/** Keys as a fleet file's author writes them; any other key is shown quoted and cut short. */
const PLAIN_KEY = /^[A-Za-z0-9_-]{1,40}$/;

export function formatFieldPath(path: readonly PropertyKey[]): string {
  if (path.length === 0) return "(file)";
  return path
    .map((segment, i) => {
      if (typeof segment === "number") return `[${segment}]`;
      const key = String(segment);
      if (!PLAIN_KEY.test(key)) return `[${quoted(key)}]`;
      return `${i === 0 ? "" : "."}${key}`;
    })
    .join("");
}

function schemaProblems(
  issues: readonly z.core.$ZodIssue[],
  file: string,
  source: YamlSource,
): SpecProblem[] {
  return issues.flatMap((issue) => {
    if (issue.code === "unrecognized_keys") {
      const allowed = allowedKeys(issue.path);
      return issue.keys.map((key) => ({
        file,
        ...positionOf(source, [...(issue.path as FieldPath), key], true),
        field: formatFieldPath([...issue.path, key]),
        message: `unknown key; ${allowed.length > 0 ? `expected one of ${allowed.join(", ")}` : "remove it"}`,
      }));
    }
    return [
      {
        file,
        ...positionOf(source, issue.path as FieldPath),
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

function problemsAt(file: string, line: number, col: number, message: string): SpecError {
  return new SpecError([{ file, line, col, field: "(file)", message }]);
}

/** Every problem up to MAX_PROBLEMS, then one line that counts the rest. */
function listed(problems: SpecProblem[]): SpecProblem[] {
  const rest = problems.slice(MAX_PROBLEMS);
  const [next] = rest;
  if (next === undefined) return problems;
  return [
    ...problems.slice(0, MAX_PROBLEMS),
    { ...next, field: "(file)", message: `and ${rest.length} more problems` },
  ];
}

/** How a document that is not a mapping is named, without echoing what it holds. */
function describeKind(value: unknown): string {
  if (value === null) return "an empty value";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "string") return "text";
  return typeof value;
}

export function parseFleetText(text: string, file: string): FleetSpec {
  const yaml = readYaml(text);
  if (!yaml.ok) {
    throw new SpecError(
      listed(
        yaml.problems.map(({ line, col, path, message }) => ({
          file,
          line,
          col,
          field: formatFieldPath(path),
          message,
        })),
      ),
    );
  }
  const { source, value: raw } = yaml;
  if (source.doc.contents === null) {
    throw problemsAt(
      file,
      1,
      1,
      "the file is empty; a fleet file needs at least a name, like `name: lab`",
    );
  }
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    const { line, col } = positionOf(source, []);
    throw problemsAt(
      file,
      line,
      col,
      `must be a mapping of fleet settings (name:, count:, vm:, ...), not ${describeKind(raw)}`,
    );
  }
  const keys = Object.keys(raw);
  if (keys.length > 0 && !keys.some((key) => Object.hasOwn(fleetSections, key))) {
    // Some other file (/etc/shadow, a compose file): its keys are not echoed back one by one.
    const { line, col } = positionOf(source, []);
    throw problemsAt(
      file,
      line,
      col,
      `not a fleet file: none of its keys is a fleet setting (${Object.keys(fleetSections).join(", ")})`,
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
    ...(parsed.success ? [] : schemaProblems(parsed.error.issues, file, source)),
    ...resolved.problems.map((problem) => ({
      file,
      ...positionOf(source, problem.path),
      field: formatFieldPath(problem.path),
      message: problem.message,
    })),
  ].sort((a, b) => a.line - b.line || a.col - b.col);
  if (problems.length > 0 || !resolved.fleet) throw new SpecError(listed(problems));
  return resolved.fleet;
}

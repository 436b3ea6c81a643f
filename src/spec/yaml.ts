// Over 400 lines: one job, YAML text to values with a position for every node, and the limits
// that keep hostile input bounded; split, each half would need the other's node walk.
import {
  type Alias,
  Composer,
  CST,
  type Document,
  isAlias,
  isMap,
  isScalar,
  isSeq,
  Lexer,
  LineCounter,
  type Node,
  type Pair,
  Parser,
  type YAMLMap,
} from "yaml";
import { excerpt } from "../core/excerpt.js";
import type { FieldPath } from "./resolve.js";

/**
 * The YAML a fleet file may use: one document of mappings, lists and plain values, with anchors,
 * aliases and merge keys (<<). Everything else YAML can do is refused with its position before the
 * document becomes a value: tags and directives (they would turn a value into a date, a binary, an
 * ordered map whose entries the schema never sees), aliases without an anchor, cycles and alias
 * bombs, merges of something other than mappings, keys that are not text, numbers out of range, and
 * nesting deep enough to exhaust the stack.
 */

/** Fleet files nest about 6 levels; the YAML composer recurses once per level. */
export const MAX_DEPTH = 64;

/**
 * Values (keys, scalars, lists, mappings) with every alias counted as often as it is used: a fleet
 * of 1023 VMs listed with every setting has about 40,000.
 */
export const MAX_VALUES = 100_000;

/**
 * Anchors and aliases (&name, *name): an alias per VM of the largest fleet leaves room. The yaml
 * library resolves each alias by a scan of the anchors and aliases before it: quadratic time.
 */
export const MAX_ANCHORS_AND_ALIASES = 2048;

/**
 * Lexemes (scalars, indicators, spaces, comments): a fleet of 1023 VMs listed with every setting
 * and a comment each has about 100,000. More only make the parser and composer slow.
 */
export const MAX_LEXEMES = 250_000;

export interface YamlProblem {
  readonly line: number;
  readonly col: number;
  readonly path: FieldPath;
  readonly message: string;
}

/** A problem where it starts in the text. */
interface Found {
  readonly offset: number;
  readonly path: FieldPath;
  readonly message: string;
}

export interface YamlSource {
  readonly doc: Document.Parsed;
  readonly lines: LineCounter;
  /** The node each alias stands for, found once. */
  readonly aliases: ReadonlyMap<Alias, Node>;
}

export type YamlResult =
  | { ok: true; source: YamlSource; value: unknown }
  | { ok: false; problems: YamlProblem[] };

/** The yaml library's messages, cut to their first line, which holds no excerpt of the file longer than a token. */
function yamlMessage(message: string): string {
  return `not valid YAML: ${excerpt(message.split("\n", 1)[0] ?? "", 120)}`;
}

const TOO_MANY_VALUES = `the file holds more than ${MAX_VALUES} values (each alias counted as often as it is used); a fleet file needs far fewer`;

/** Lexemes that each begin a value: a scalar of any style or an alias (collections hold these). */
const VALUE_LEXEMES: ReadonlySet<string> = new Set([
  "scalar",
  "single-quoted-scalar",
  "double-quoted-scalar",
  "block-scalar-header",
  "alias",
]);

interface Lexed {
  readonly tokens: CST.Token[];
  /** Offsets of the tags in the file, in order, with their text. */
  readonly tags: readonly { offset: number; source: string }[];
}

/** The file's syntax tree, refused early when it nests too deeply or has directives. */
function lex(text: string, lines: LineCounter): Lexed | Found {
  const parser = new Parser(lines.addNewLine);
  lines.addNewLine(0);
  const tokens: CST.Token[] = [];
  const tags: { offset: number; source: string }[] = [];
  let values = 0;
  let lexemes = 0;
  let references = 0;
  for (const lexeme of new Lexer().lex(text)) {
    if (++lexemes > MAX_LEXEMES) {
      return {
        offset: parser.offset,
        path: [],
        message: `the file has more than ${MAX_LEXEMES} YAML tokens; a fleet file has far fewer`,
      };
    }
    const type = CST.tokenType(lexeme);
    if (type === "directive-line") {
      return {
        offset: parser.offset,
        path: [],
        message: `a fleet file has no use for YAML directives such as ${excerpt(lexeme)}; remove it`,
      };
    }
    if (type === "tag") tags.push({ offset: parser.offset, source: lexeme });
    if ((type === "alias" || type === "anchor") && ++references > MAX_ANCHORS_AND_ALIASES) {
      return {
        offset: parser.offset,
        path: [],
        message: `the file has more than ${MAX_ANCHORS_AND_ALIASES} anchors and aliases (&name, *name); a fleet file needs a few`,
      };
    }
    if (type !== null && VALUE_LEXEMES.has(type) && ++values > MAX_VALUES) {
      // Refused before the rest is parsed: a file of nothing but values takes seconds to compose.
      return { offset: parser.offset, path: [], message: TOO_MANY_VALUES };
    }
    for (const token of parser.next(lexeme)) tokens.push(token);
    if (parser.stack.length > MAX_DEPTH) {
      return {
        offset: parser.offset,
        path: [],
        message: `nests lists and mappings more than ${MAX_DEPTH} levels deep; a fleet file needs a few`,
      };
    }
  }
  for (const token of parser.end()) tokens.push(token);
  return { tokens, tags };
}

function describeKey(key: unknown): string {
  if (isMap(key)) return "a mapping";
  if (isSeq(key)) return "a list";
  if (isAlias(key)) return "an alias";
  const value = isScalar(key) ? key.value : null;
  if (value === null) return "an empty key";
  return `${typeof value} ${excerpt(String(value))}`;
}

/** Walks the document once, in order, as the yaml library resolves aliases: to the last anchor before them. */
class Checker {
  readonly problems: Found[] = [];
  readonly aliases = new Map<Alias, Node>();
  private readonly anchors = new Map<string, Node>();
  /** Sizes of anchored nodes, for the aliases to them. */
  private readonly sizes = new Map<Node, number>();
  /** Anchored nodes being walked: an alias to one of them would be part of itself. */
  private readonly open = new Set<Node>();
  private values = 0;

  constructor(
    private readonly text: string,
    private readonly tags: Lexed["tags"],
  ) {}

  private problem(offset: number | undefined, path: FieldPath, message: string) {
    this.problems.push({ offset: offset ?? 0, path, message });
  }

  private counted(amount: number, offset: number | undefined, path: FieldPath) {
    const before = this.values;
    this.values += amount;
    if (before <= MAX_VALUES && this.values > MAX_VALUES)
      this.problem(offset, path, TOO_MANY_VALUES);
  }

  /** The tag written before the node that starts at `offset`. */
  private tagBefore(offset: number): { offset: number; source: string } | undefined {
    let low = 0;
    let high = this.tags.length;
    while (low < high) {
      const middle = (low + high) >> 1;
      if ((this.tags[middle]?.offset ?? 0) < offset) low = middle + 1;
      else high = middle;
    }
    return this.tags[low - 1];
  }

  /** Checks a node and returns how many values it stands for, aliases expanded. */
  node(node: unknown, path: FieldPath): number {
    if (node === null || node === undefined) return 0;
    if (isAlias(node)) return this.alias(node, path);
    const value = node as Node;
    const start = value.range?.[0];
    if (value.tag !== undefined) {
      const tag = this.tagBefore(start ?? 0);
      this.problem(
        tag?.offset ?? start,
        path,
        `the tag ${excerpt(tag?.source ?? value.tag)} is not allowed: a fleet file holds only text, numbers, true/false, lists and mappings`,
      );
    }
    if (value.anchor) {
      this.anchors.set(value.anchor, value);
      this.open.add(value);
    }
    this.counted(1, start, path);
    let size = 1;
    if (isScalar(value)) this.scalar(value.value, start, value.range?.[1], path);
    else if (isMap(value)) {
      const keys = new Set<string>();
      for (const pair of value.items) size += this.pair(pair, path, keys);
    } else if (isSeq(value)) {
      value.items.forEach((item, index) => {
        size += this.node(item, [...path, index]);
      });
    }
    if (value.anchor) {
      this.open.delete(value);
      this.sizes.set(value, size);
    }
    return size;
  }

  private alias(alias: Alias, path: FieldPath): number {
    const start = alias.range?.[0];
    const target = this.anchors.get(alias.source);
    const name = excerpt(alias.source);
    if (target === undefined) {
      this.problem(start, path, `the alias *${name} has no anchor &${name} before it`);
      return 0;
    }
    if (this.open.has(target)) {
      this.problem(start, path, `the alias *${name} is inside the value &${name} marks`);
      return 0;
    }
    this.aliases.set(alias, target);
    const size = this.sizes.get(target) ?? 0;
    this.counted(size, start, path);
    return size;
  }

  private scalar(
    value: unknown,
    start: number | undefined,
    end: number | undefined,
    path: FieldPath,
  ) {
    if (typeof value !== "number") return;
    if (Number.isFinite(value) && (!Number.isInteger(value) || Number.isSafeInteger(value))) return;
    const written = excerpt(this.text.slice(start ?? 0, end ?? 0));
    this.problem(
      start,
      path,
      `${written} is not a number shoal can use (too large, infinite or not a number)`,
    );
  }

  /** A pair of a mapping whose keys so far are `keys`; the yaml library's own check of unique keys takes quadratic time. */
  private pair(pair: Pair, path: FieldPath, keys: Set<string>): number {
    const key = pair.key;
    const keySize = this.node(key, path);
    if (isScalar(key) && typeof key.value === "symbol") return keySize + this.merge(pair, path);
    if (isScalar(key) && typeof key.value === "string") {
      const field = [...path, key.value];
      if (keys.has(key.value)) {
        this.problem(key.range?.[0], field, "is given twice in the same mapping; keep one");
      }
      keys.add(key.value);
      return keySize + this.node(pair.value, field);
    }
    const offset = (key as Node | null)?.range?.[0] ?? (pair.value as Node | null)?.range?.[0];
    this.problem(offset, path, `a key must be text, like memory:, not ${describeKey(key)}`);
    return keySize + this.node(pair.value, path);
  }

  /** A merge key (<<) takes what the yaml library merges: a mapping, or a list of mappings, each maybe an alias. */
  private merge(pair: Pair, path: FieldPath): number {
    const size = this.node(pair.value, [...path, "<<"]);
    const resolve = (node: unknown) => (isAlias(node) ? this.aliases.get(node) : node);
    const source = resolve(pair.value);
    const sources = isSeq(source) ? source.items.map(resolve) : [source];
    if (!sources.every((item) => isMap(item))) {
      this.problem(
        (pair.value as Node | null)?.range?.[0] ?? (pair.key as Node).range?.[0],
        path,
        "<< (merge) takes a mapping, an alias of one (*name), or a list of those",
      );
    }
    return size;
  }
}

/**
 * The documents of the syntax tree. The composer reports each problem as an Error; without stack
 * traces a file full of them takes a fraction of the time.
 */
function composed(tokens: readonly CST.Token[], length: number): Document.Parsed[] {
  const { stackTraceLimit } = Error;
  Error.stackTraceLimit = 0;
  try {
    return [...new Composer({ merge: true, uniqueKeys: false }).compose(tokens, true, length)];
  } finally {
    Error.stackTraceLimit = stackTraceLimit;
  }
}

function refused(lines: LineCounter, found: readonly Found[]): YamlResult {
  return {
    ok: false,
    problems: found.map(({ offset, path, message }) => ({
      ...lines.linePos(offset),
      path,
      message,
    })),
  };
}

/** One fleet file's YAML, checked, as a plain value. */
export function readYaml(text: string): YamlResult {
  const lines = new LineCounter();
  const lexed = lex(text, lines);
  if (!("tokens" in lexed)) return refused(lines, [lexed]);
  const [doc, second] = composed(lexed.tokens, text.length);
  if (doc === undefined) throw new Error("internal: the YAML composer gave no document");
  // Only the first error: after a syntax error the parser's further complaints are mostly echoes of it.
  const [error] = doc.errors;
  if (error) {
    return refused(lines, [
      { offset: error.pos[0], path: [], message: yamlMessage(error.message) },
    ]);
  }
  if (second) {
    const message = "holds a second YAML document (after ---); a fleet file is one document";
    return refused(lines, [{ offset: second.range[0], path: [], message }]);
  }
  const checker = new Checker(text, lexed.tags);
  checker.node(doc.contents, []);
  const [warning] = doc.warnings;
  if (checker.problems.length === 0 && warning) {
    checker.problems.push({
      offset: warning.pos[0],
      path: [],
      message: yamlMessage(warning.message),
    });
  }
  if (checker.problems.length > 0) return refused(lines, checker.problems);
  // Aliases are bounded above and resolve to shared values: the library's own count is not needed.
  const value: unknown = doc.toJS({ maxAliasCount: -1 });
  return { ok: true, source: { doc, lines, aliases: checker.aliases }, value };
}

/** A mapping's own pairs by key, and its merge keys' values: built once, since a file with many problems asks often. */
interface PairIndex {
  readonly own: ReadonlyMap<unknown, Pair>;
  readonly merged: readonly unknown[];
}
const pairIndexes = new WeakMap<YAMLMap, PairIndex>();

function pairIndex(map: YAMLMap): PairIndex {
  let index = pairIndexes.get(map);
  if (index === undefined) {
    const own = new Map<unknown, Pair>();
    const merged: unknown[] = [];
    for (const item of map.items) {
      if (!isScalar(item.key)) continue;
      if (typeof item.key.value === "symbol") merged.push(item.value);
      else if (!own.has(item.key.value)) own.set(item.key.value, item);
    }
    index = { own, merged };
    pairIndexes.set(map, index);
  }
  return index;
}

/** Where a field of the document is: its value, or its key (`key: true`), or the nearest parent that exists. */
export function positionOf(
  source: YamlSource,
  path: FieldPath,
  key = false,
): { line: number; col: number } {
  const resolve = (node: unknown) =>
    isAlias(node) ? source.aliases.get(node) : (node as Node | null | undefined);
  let node = resolve(source.doc.contents);
  let offset = node?.range?.[0] ?? 0;
  for (const [index, segment] of path.entries()) {
    let next: unknown;
    let keyNode: unknown;
    if (isMap(node)) {
      const pair = findPair(node, segment, resolve);
      keyNode = pair?.key;
      next = pair?.value;
    } else if (isSeq(node) && typeof segment === "number") {
      next = node.items[segment];
    }
    const last = index === path.length - 1;
    const target = key && last ? keyNode : (next ?? keyNode);
    const start = (target as Node | undefined)?.range?.[0];
    if (start === undefined) break;
    offset = start;
    node = resolve(next);
  }
  return source.lines.linePos(offset);
}

/** The pair for `segment` in a mapping, also when it came in through a merge key. */
function findPair(
  map: YAMLMap,
  segment: string | number,
  resolve: (node: unknown) => Node | null | undefined,
): Pair | undefined {
  const { own, merged } = pairIndex(map);
  const pair = own.get(segment);
  if (pair) return pair;
  for (const value of merged) {
    const resolved = resolve(value);
    for (const source of isSeq(resolved) ? resolved.items.map(resolve) : [resolved]) {
      const found = isMap(source) ? findPair(source, segment, resolve) : undefined;
      if (found) return found;
    }
  }
  return undefined;
}

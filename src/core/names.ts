import { quoted } from "./excerpt.js";

/**
 * Names become hostnames, DNS names, directory names and parts of hypervisor configs, so they are
 * held to the strictest of those: a lowercase DNS label (RFC 1123). This also keeps "/", "..",
 * spaces, quotes and commas out of every path and config file shoal writes.
 */
const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export const DNS_LABEL_RULE =
  "a DNS label: 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'";

export function isDnsLabel(text: string): boolean {
  return DNS_LABEL.test(text);
}

/** Image names may also carry dots ("debian-12.2") but never "..", "/" or a leading dot. */
const IMAGE_NAME = /^[a-z0-9](?:[a-z0-9_-]|\.(?!\.)){0,62}$/;

export const IMAGE_NAME_RULE =
  "1-63 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit, without '..'";

export function isImageName(text: string): boolean {
  return IMAGE_NAME.test(text) && !text.endsWith(".");
}

/** `{n}` or `{n:03}` (zero-padded to 3 digits), exactly once. */
const PLACEHOLDER = /\{n(?::0(\d))?\}/g;

export interface NamePattern {
  readonly prefix: string;
  readonly suffix: string;
  readonly width: number;
}

export type PatternResult = { ok: true; pattern: NamePattern } | { ok: false; message: string };

export function parseNamePattern(text: string): PatternResult {
  const matches = [...text.matchAll(PLACEHOLDER)];
  if (matches.length !== 1 || matches[0]?.index === undefined) {
    return {
      ok: false,
      message:
        'must contain the counter exactly once, as {n} or {n:03} (zero-padded), like "agent-{n:03}"',
    };
  }
  const match = matches[0];
  const pattern: NamePattern = {
    prefix: text.slice(0, match.index),
    suffix: text.slice(match.index + match[0].length),
    width: Number(match[1] ?? 0),
  };
  // The widest name a pattern can produce is checked where the count is known; here the narrowest.
  const sample = expandNamePattern(pattern, 1);
  if (!isDnsLabel(sample)) {
    return {
      ok: false,
      message: `gives names like ${quoted(sample)}, which is not ${DNS_LABEL_RULE}`,
    };
  }
  return { ok: true, pattern };
}

export function expandNamePattern(pattern: NamePattern, n: number): string {
  return `${pattern.prefix}${String(n).padStart(pattern.width, "0")}${pattern.suffix}`;
}

/**
 * Text that a guest or an image chose (file names, console logs, boot messages) shown to a person
 * without letting it drive the terminal: control characters, characters that reorder or break
 * lines, and bytes that are not UTF-8 are printed as visible escapes.
 *
 * Bytes become text losslessly: each byte that is not part of valid UTF-8 becomes a lone
 * surrogate U+DC80..U+DCFF (Python's "surrogateescape"), so a guest's file name survives the trip
 * through a JavaScript string and back to debugfs byte for byte, and JSON.stringify writes it as
 * `\udcNN` (which Python's `surrogateescape` turns back into the byte).
 */

const ESCAPED_BYTE_BASE = 0xdc00;

/** Unicode characters that are not controls but reorder or split what a terminal shows. */
const INVISIBLE_LAYOUT = new Set([
  0x061c, 0x200e, 0x200f, 0x2028, 0x2029, 0x202a, 0x202b, 0x202c, 0x202d, 0x202e, 0x2066, 0x2067,
  0x2068, 0x2069,
]);

const NAMED: Readonly<Record<number, string>> = { 9: "\\t", 10: "\\n", 13: "\\r" };

/**
 * How many bytes the UTF-8 sequence at `at` takes; 0 when the byte there does not start a valid
 * one; -1 when the bytes end before a sequence that is valid so far is complete. Follows the
 * well-formed byte sequences of the Unicode standard (table 3-7): no overlong forms, no
 * surrogates, nothing above U+10FFFF.
 */
function sequenceLength(bytes: Uint8Array, at: number): number {
  const lead = bytes[at] ?? 0;
  if (lead < 0x80) return 1;
  let length: number;
  let low = 0x80;
  let high = 0xbf;
  if (lead >= 0xc2 && lead <= 0xdf) length = 2;
  else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3;
    if (lead === 0xe0) low = 0xa0;
    if (lead === 0xed) high = 0x9f;
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    length = 4;
    if (lead === 0xf0) low = 0x90;
    if (lead === 0xf4) high = 0x8f;
  } else return 0;
  for (let i = 1; i < length; i++) {
    if (at + i >= bytes.length) return -1;
    const byte = bytes[at + i] ?? 0;
    if (byte < (i === 1 ? low : 0x80) || byte > (i === 1 ? high : 0xbf)) return 0;
  }
  return length;
}

const utf8 = new TextDecoder("utf-8");

/**
 * Decodes bytes up to the last complete character; `rest` is where an incomplete but so far valid
 * sequence at the end starts (bytes.length when there is none), for a stream's next chunk.
 */
function decode(bytes: Uint8Array, final: boolean): { text: string; rest: number } {
  let text = "";
  let run = 0;
  let at = 0;
  while (at < bytes.length) {
    const length = sequenceLength(bytes, at);
    if (length > 0) {
      at += length;
      continue;
    }
    if (length < 0 && !final) break;
    text += utf8.decode(bytes.subarray(run, at));
    text += String.fromCharCode(ESCAPED_BYTE_BASE + (bytes[at] ?? 0));
    at += 1;
    run = at;
  }
  return { text: text + utf8.decode(bytes.subarray(run, at)), rest: at };
}

/** Bytes as text, every byte that is not valid UTF-8 kept as a lone surrogate (see above). */
export function bytesToText(bytes: Uint8Array): string {
  return decode(bytes, true).text;
}

const utf8Encoder = new TextEncoder();

/** The bytes `bytesToText` made the text from. */
export function textToBytes(text: string): Uint8Array {
  const parts: Uint8Array[] = [];
  let run = "";
  for (const char of text) {
    const code = char.charCodeAt(0);
    if (char.length === 1 && code >= 0xdc80 && code <= 0xdcff) {
      parts.push(utf8Encoder.encode(run), Uint8Array.of(code - ESCAPED_BYTE_BASE));
      run = "";
    } else run += char;
  }
  parts.push(utf8Encoder.encode(run));
  const bytes = new Uint8Array(parts.reduce((total, part) => total + part.length, 0));
  let at = 0;
  for (const part of parts) {
    bytes.set(part, at);
    at += part.length;
  }
  return bytes;
}

const hex = (value: number, digits: number) => value.toString(16).padStart(digits, "0");

/** The visible form of one character, or undefined when it shows as itself. */
function escapeChar(char: string): string | undefined {
  const code = char.codePointAt(0) ?? 0;
  const named = NAMED[code];
  if (named !== undefined) return named;
  if (code < 0x20 || code === 0x7f) return `\\x${hex(code, 2)}`;
  if (char.length === 1 && code >= 0xdc80 && code <= 0xdcff)
    return `\\x${hex(code - ESCAPED_BYTE_BASE, 2)}`;
  if ((code >= 0x80 && code <= 0x9f) || (code >= 0xd800 && code <= 0xdfff))
    return `\\u${hex(code, 4)}`;
  return INVISIBLE_LAYOUT.has(code) ? `\\u${hex(code, 4)}` : undefined;
}

function escaped(text: string, keep: string, backslash: boolean): string {
  let out = "";
  for (const char of text) {
    if (backslash && char === "\\") out += "\\\\";
    else if (keep.includes(char)) out += char;
    else out += escapeChar(char) ?? char;
  }
  return out;
}

/**
 * A name or path for one line of output: every control character escaped, and backslashes doubled
 * so that `a\nb` (four characters) and a name with a newline look different.
 */
export function escapeName(text: string): string {
  return escaped(text, "", true);
}

/** A message from a guest (a boot failure, say) for one line of output; backslashes stay. */
export function escapeLine(text: string): string {
  return escaped(text, "", false);
}

/** Text of several lines: newlines and tabs stay, every other control character is escaped. */
export function escapeText(text: string): string {
  return escaped(text, "\n\t", false);
}

/**
 * JSON for output: JSON.stringify, which escapes C0 controls and lone surrogates, and also the
 * characters it leaves as they are but a terminal would act on (DEL, C1 controls, bidirectional
 * overrides). They only occur inside strings, where `\uNNNN` means the same character.
 */
export function jsonText(value: unknown, indent = 2): string {
  return JSON.stringify(value, null, indent).replace(
    /[\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g,
    (char) => `\\u${hex(char.charCodeAt(0), 4)}`,
  );
}

/**
 * A console log as readable text, chunk by chunk: newlines and tabs stay (a CR before a newline,
 * as a serial line sends them, goes), everything else that would drive the terminal is escaped.
 * A character or CRLF split between two chunks is put together again.
 */
export class LogEscaper {
  private pending: Uint8Array = new Uint8Array(0);

  /** The text of `chunk` that is complete so far. */
  push(chunk: Uint8Array): string {
    const bytes = new Uint8Array(this.pending.length + chunk.length);
    bytes.set(this.pending);
    bytes.set(chunk, this.pending.length);
    let { text, rest } = decode(bytes, false);
    // A CR at the very end may be the first half of a CRLF.
    if (rest === bytes.length && text.endsWith("\r")) {
      text = text.slice(0, -1);
      rest -= 1;
    }
    this.pending = bytes.slice(rest);
    return escapeText(text.replaceAll("\r\n", "\n"));
  }

  /** What was held back for the next chunk, when there is none. */
  end(): string {
    const text = escapeText(bytesToText(this.pending));
    this.pending = new Uint8Array(0);
    return text;
  }
}

/**
 * Whether output may be coloured: not when NO_COLOR is set to anything but the empty string
 * (https://no-color.org).
 */
export function colourWanted(env: Readonly<Record<string, string | undefined>>): boolean {
  return (env.NO_COLOR ?? "") === "";
}

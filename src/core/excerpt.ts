/**
 * Text from an input file (a fleet file, or a file passed by mistake such as /etc/shadow) as error
 * messages show it: short, so a message never reproduces a whole foreign line, and with every
 * character a terminal could act on escaped.
 */

/** How many characters of a value a message shows. */
export const EXCERPT_MAX = 40;

/** Controls (C0, DEL, C1), format characters (bidi overrides, zero-width), line and paragraph separators, lone surrogates. */
const UNSAFE = /^[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]$/u;
const SHORT_ESCAPES: Record<string, string> = {
  "\n": "\\n",
  "\t": "\\t",
  "\r": "\\r",
  "\\": "\\\\",
};

function shown(char: string, quote: boolean): string {
  const short = SHORT_ESCAPES[char] ?? (quote && char === '"' ? '\\"' : undefined);
  if (short !== undefined) return short;
  if (!UNSAFE.test(char)) return char;
  return `\\u${(char.codePointAt(0) ?? 0).toString(16).padStart(4, "0")}`;
}

/** `text` with unsafe characters escaped, cut to at most `max` characters and then marked with "…". */
export function excerpt(text: string, max = EXCERPT_MAX, quote = false): string {
  let result = "";
  for (const char of text) {
    const piece = shown(char, quote);
    if (result.length + piece.length > max) return `${result}…`;
    result += piece;
  }
  return result;
}

/** `text` as a message quotes it: an excerpt in double quotes. */
export function quoted(text: string): string {
  return `"${excerpt(text, EXCERPT_MAX, true)}"`;
}

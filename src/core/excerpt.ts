/**
 * Text from an input file (a fleet file, or a file passed by mistake such as /etc/shadow) as error
 * messages show it: short, so a message never reproduces a whole foreign line, and with every
 * character a terminal could act on escaped, as guest text is (terminal.ts).
 */
import { escapeName } from "./terminal.js";

/** How many characters of a value a message shows. */
export const EXCERPT_MAX = 40;

/** `text` with unsafe characters escaped, cut to at most `max` characters and then marked with "…". */
export function excerpt(text: string, max = EXCERPT_MAX, quote = false): string {
  let result = "";
  for (const char of text) {
    const piece = quote && char === '"' ? '\\"' : escapeName(char);
    if (result.length + piece.length > max) return `${result}…`;
    result += piece;
  }
  return result;
}

/** `text` as a message quotes it: an excerpt in double quotes. */
export function quoted(text: string): string {
  return `"${excerpt(text, EXCERPT_MAX, true)}"`;
}

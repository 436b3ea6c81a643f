/** JSON text to a value, or undefined when it is not JSON; the caller's schema then says what is wrong. */
export function parseJsonOrUndefined(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/**
 * Subordinate ids (/etc/subuid, /etc/subgid): the host ids set aside for a user's user namespaces.
 * `image derive` runs the image's code with ids 0..65535 mapped to root's first range.
 */

/** How many ids a derive's sandbox maps: the whole 16-bit range images use. */
export const SANDBOX_IDS = 65536;

/**
 * The first id of the first range of at least SANDBOX_IDS ids given to `user` (by name or number)
 * that lies wholly above the ids of the host's own users (0..65535); undefined when none does.
 */
export function subordinateStart(
  file: string,
  user: { readonly name: string; readonly id: number },
): number | undefined {
  for (const line of file.split("\n")) {
    const fields = line.trim().split(":");
    if (fields.length !== 3) continue;
    const [owner, start, count] = fields;
    if (owner !== user.name && owner !== String(user.id)) continue;
    if (!/^\d+$/.test(start ?? "") || !/^\d+$/.test(count ?? "")) continue;
    const first = Number(start);
    if (first >= SANDBOX_IDS && Number(count) >= SANDBOX_IDS && first + SANDBOX_IDS <= 2 ** 32 - 1)
      return first;
  }
  return undefined;
}

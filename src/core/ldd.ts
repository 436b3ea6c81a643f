/**
 * The shared libraries a dynamically linked program loads, from `ldd` output, so that shoal's tiny
 * image can carry the host's dropbear and scp with exactly what they need.
 */

export type LddResult =
  | { readonly ok: true; readonly paths: readonly string[] }
  | { readonly ok: false; readonly missing: readonly string[] };

/**
 * `libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)` gives the path after `=>`; the loader
 * (`/lib64/ld-linux-x86-64.so.2 (0x...)`) is listed by its path; the vDSO lives in the kernel.
 * Anything else (`libfoo.so.1 => not found`) is a library the host lacks.
 */
export function parseLdd(output: string): LddResult {
  const paths: string[] = [];
  const missing: string[] = [];
  for (const line of output.split("\n").map((text) => text.trim())) {
    if (line === "" || line.startsWith("linux-vdso") || line === "statically linked") continue;
    const path = /^(?:\S+ => )?(\/\S+) \(0x[0-9a-f]+\)$/.exec(line)?.[1];
    if (path) paths.push(path);
    else missing.push(line);
  }
  return missing.length > 0 ? { ok: false, missing } : { ok: true, paths };
}

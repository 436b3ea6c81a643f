const UNITS = { K: 1, M: 2, G: 3, T: 4 } as const;
const SIZE_PATTERN = /^(\d+(?:\.\d+)?)([KMGTkmgt])(?:i?B)?$/;

export const MiB = 1024 ** 2;

/** What a size looks like, for messages and the JSON Schema. */
export const SIZE_SYNTAX = "a number with a binary unit K, M, G or T, like 128M or 1.5G";
export const SIZE_REGEX_SOURCE = SIZE_PATTERN.source;

/**
 * Parses "128M", "1.5G", "64MiB" into bytes (units are binary, as in QEMU and xl); undefined when
 * the text is not a size. A bare number is refused on purpose: "memory: 128" is ambiguous.
 */
export function parseSize(text: string): number | undefined {
  const match = SIZE_PATTERN.exec(text.trim());
  if (!match?.[1] || !match[2]) return undefined;
  const unit = match[2].toUpperCase() as keyof typeof UNITS;
  const bytes = Number(match[1]) * 1024 ** UNITS[unit];
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}

/** The shortest exact spelling: 134217728 -> "128M", 1610612736 -> "1536M", 2048 -> "2K". */
export function formatSize(bytes: number): string {
  for (const unit of ["T", "G", "M", "K"] as const) {
    const scale = 1024 ** UNITS[unit];
    if (bytes >= scale && bytes % scale === 0) return `${bytes / scale}${unit}`;
  }
  return `${bytes}B`;
}

/** A measured amount for people: "0B", "340K", "4.2M"; one decimal below 10 of a unit. */
export function formatUsage(bytes: number): string {
  let value = bytes;
  for (const unit of ["B", "K", "M", "G"] as const) {
    if (value < 1024)
      return `${value < 10 && unit !== "B" ? value.toFixed(1) : Math.round(value)}${unit}`;
    value /= 1024;
  }
  return `${value.toFixed(1)}T`;
}

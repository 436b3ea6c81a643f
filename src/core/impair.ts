import { quoted } from "./excerpt.js";

/**
 * Network impairments: what one direction of a VM's link, or of the path between two groups,
 * does to the packets on it (delay, jitter, loss, rate, corruption, duplication), as values, with
 * the parsing and printing of their units. Everything here is pure; src/core/render/impair.ts
 * turns a plan into tc and nft input.
 */

export const IMPAIRMENT_KEYS = ["delay", "jitter", "loss", "rate", "corrupt", "duplicate"] as const;
export type ImpairmentKey = (typeof IMPAIRMENT_KEYS)[number];

/**
 * Times in microseconds, shares in parts per million, rates in bit/s. A key that is absent leaves
 * what is below it (the fleet file, under a live change) as it is; 0 takes it away.
 */
export interface Impairment {
  readonly delay?: number | undefined;
  readonly jitter?: number | undefined;
  readonly loss?: number | undefined;
  readonly rate?: number | undefined;
  readonly corrupt?: number | undefined;
  readonly duplicate?: number | undefined;
}

/** What needs sch_netem: everything but loss (an nft rule) and rate (htb). */
export const NETEM_KEYS = ["delay", "jitter", "corrupt", "duplicate"] as const;

export const PPM = 1_000_000;
/**
 * netem holds each packet for its delay in a queue of NETEM_LIMIT packets; a minute is longer than
 * any network shoal emulates, and keeps that queue from overflowing below ~1600 packets/s.
 */
export const MAX_DELAY_US = 60_000_000;
/** htb takes rates of 64 bits; a tap under emulation moves well below this. */
export const MAX_RATE = 100_000_000_000;
/** Below a kilobit a full-size packet takes over 12 s: a typo, not a link. */
export const MIN_RATE = 1000;

export type Parsed<T> =
  | { readonly ok: true; readonly value: T }
  | { readonly ok: false; readonly message: string };

const TIME_UNITS = { us: 1, ms: 1000, s: 1_000_000 } as const;
const RATE_UNITS = { bit: 1, kbit: 1e3, mbit: 1e6, gbit: 1e9 } as const;

/** A decimal number with its unit as separate parts; undefined when the text is not one. */
function numberWithUnit(text: string): { value: number; digits: string; unit: string } | undefined {
  const match = /^(\d{1,12}(?:\.(\d{1,9}))?)\s?([a-z%]+)$/i.exec(text.trim());
  if (!match?.[1] || !match[3]) return undefined;
  return { value: Number(match[1]), digits: match[2] ?? "", unit: match[3] };
}

/** A product of a decimal and a unit's scale as the whole number it is meant to be, if it is one. */
function whole(value: number): number | undefined {
  const rounded = Math.round(value);
  return Math.abs(value - rounded) < 1e-6 ? rounded : undefined;
}

/** "40ms", "500us", "1.5s" in microseconds, from 0 to a minute. */
export function parseDelay(text: string, what = "a delay"): Parsed<number> {
  const parsed = numberWithUnit(text);
  const scale = parsed && TIME_UNITS[parsed.unit.toLowerCase() as keyof typeof TIME_UNITS];
  if (!parsed || scale === undefined) {
    return { ok: false, message: `${quoted(text)} is not ${what}; use us, ms or s, like 40ms` };
  }
  const us = whole(parsed.value * scale);
  if (us === undefined) {
    return { ok: false, message: `${quoted(text)} is finer than a microsecond` };
  }
  if (us > MAX_DELAY_US) {
    return {
      ok: false,
      message: `${quoted(text)} is longer than ${formatDelay(MAX_DELAY_US)}, the most shoal gives netem`,
    };
  }
  return { ok: true, value: us };
}

/** "1%", "0.5%", "0.0001%" in parts per million, from 0 to 100 %. */
export function parsePercent(text: string, what = "a share"): Parsed<number> {
  const parsed = numberWithUnit(text);
  if (parsed?.unit !== "%") {
    return {
      ok: false,
      message: `${quoted(text)} is not ${what}; use a percentage like 1% or 0.5%`,
    };
  }
  if (parsed.digits.length > 4) {
    return { ok: false, message: `${quoted(text)} is finer than 0.0001%` };
  }
  const ppm = Math.round(parsed.value * 10_000);
  if (ppm > PPM) return { ok: false, message: `${quoted(text)} is over 100%` };
  return { ok: true, value: ppm };
}

/** "10mbit", "512kbit", "1gbit" (SI units, as tc has them) in bit/s. */
export function parseRate(text: string): Parsed<number> {
  const parsed = numberWithUnit(text);
  const unit = parsed?.unit.toLowerCase();
  if (parsed && unit !== undefined && /^[kmg]?bps$/.test(unit)) {
    return {
      ok: false,
      message: `${quoted(text)}: tc's bps means bytes per second, which reads as bits; write bits, like 80mbit for 10 MB/s`,
    };
  }
  const scale = parsed && RATE_UNITS[unit as keyof typeof RATE_UNITS];
  if (!parsed || scale === undefined) {
    return {
      ok: false,
      message: `${quoted(text)} is not a rate; use bit, kbit, mbit or gbit, like 10mbit`,
    };
  }
  const bits = whole(parsed.value * scale);
  if (bits === undefined)
    return { ok: false, message: `${quoted(text)} is not a whole number of bit/s` };
  if (bits === 0) {
    return {
      ok: false,
      message: `a rate of 0 lets nothing through; cut VMs off with \`shoal net partition\`, or give a rate like 1kbit`,
    };
  }
  if (bits < MIN_RATE)
    return {
      ok: false,
      message: `${quoted(text)} is below ${formatRate(MIN_RATE)}, the least shoal takes`,
    };
  if (bits > MAX_RATE)
    return {
      ok: false,
      message: `${quoted(text)} is over ${formatRate(MAX_RATE)}, the most shoal takes`,
    };
  return { ok: true, value: bits };
}

/** A key's value as the user writes it. */
export function parseImpairmentValue(key: ImpairmentKey, text: string): Parsed<number> {
  switch (key) {
    case "delay":
      return parseDelay(text);
    case "jitter":
      return parseDelay(text, "a jitter");
    case "rate":
      return parseRate(text);
    case "loss":
      return parsePercent(text, "a loss");
    case "corrupt":
      return parsePercent(text, "a corruption share");
    case "duplicate":
      return parsePercent(text, "a duplication share");
  }
}

/**
 * The values given for some keys, as text, parsed; the first key whose text is not a value fails
 * it, named in `failed`.
 */
export function parseImpairment(
  texts: {
    readonly [key in ImpairmentKey]?: string | undefined;
  },
): Parsed<Impairment> & { readonly failed?: ImpairmentKey } {
  const values: { [key in ImpairmentKey]?: number } = {};
  for (const key of IMPAIRMENT_KEYS) {
    const text = texts[key];
    if (text === undefined) continue;
    const parsed = parseImpairmentValue(key, text);
    if (!parsed.ok) return { ...parsed, failed: key };
    values[key] = parsed.value;
  }
  return { ok: true, value: values };
}

export function formatDelay(us: number): string {
  if (us !== 0 && us % 1_000_000 === 0) return `${us / 1_000_000}s`;
  if (us % 1000 === 0) return `${us / 1000}ms`;
  return `${us}us`;
}

export function formatPercent(ppm: number): string {
  return `${Number((ppm / 10_000).toFixed(4))}%`;
}

export function formatRate(bits: number): string {
  for (const [unit, scale] of [
    ["gbit", 1e9],
    ["mbit", 1e6],
    ["kbit", 1e3],
  ] as const) {
    if (bits >= scale && bits % scale === 0) return `${bits / scale}${unit}`;
  }
  return `${bits}bit`;
}

export function formatImpairmentValue(key: ImpairmentKey, value: number): string {
  if (key === "delay" || key === "jitter") return formatDelay(value);
  if (key === "rate") return formatRate(value);
  return formatPercent(value);
}

/** "delay 40ms loss 1%"; "none" for nothing. */
export function describeImpairment(impairment: Impairment): string {
  const parts = IMPAIRMENT_KEYS.flatMap((key) => {
    const value = impairment[key];
    return value === undefined || value === 0
      ? []
      : [`${key} ${formatImpairmentValue(key, value)}`];
  });
  return parts.length === 0 ? "none" : parts.join(" ");
}

/** Whether anything is impaired at all (a key set to 0 impairs nothing). */
export function impairs(
  impairment: Impairment | undefined,
  keys: readonly ImpairmentKey[] = IMPAIRMENT_KEYS,
): boolean {
  return impairment !== undefined && keys.some((key) => (impairment[key] ?? 0) > 0);
}

/** `over` laid on `under` key by key. */
export function overlay(under: Impairment | undefined, over: Impairment | undefined): Impairment {
  return { ...under, ...over };
}

/**
 * Two impairments one after the other, on one queue: delays and jitters add (the ranges of two
 * delays in a row), shares combine as independent chances, the lower rate holds.
 */
export function inSeries(first: Impairment, second: Impairment): Impairment {
  const chance = (a = 0, b = 0) => Math.round(PPM - ((PPM - a) * (PPM - b)) / PPM);
  const rate = [first.rate ?? 0, second.rate ?? 0].filter((value) => value > 0);
  return {
    delay: (first.delay ?? 0) + (second.delay ?? 0),
    jitter: (first.jitter ?? 0) + (second.jitter ?? 0),
    loss: chance(first.loss, second.loss),
    corrupt: chance(first.corrupt, second.corrupt),
    duplicate: chance(first.duplicate, second.duplicate),
    ...(rate.length === 0 ? {} : { rate: Math.min(...rate) }),
  };
}

/**
 * What is wrong with an impairment as it will be applied: jitter varies a delay, so it needs one
 * at least as large (netem would otherwise hold packets for no time, or a negative one).
 */
export function impairmentProblem(impairment: Impairment): string | undefined {
  const jitter = impairment.jitter ?? 0;
  const delay = impairment.delay ?? 0;
  if (jitter > delay) {
    return `jitter ${formatDelay(jitter)} is larger than its delay ${formatDelay(delay)}; a jitter varies a delay by at most its size`;
  }
  return undefined;
}

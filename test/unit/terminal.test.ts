import { describe, expect, it } from "vitest";
import {
  bytesToText,
  colourWanted,
  escapeLine,
  escapeName,
  escapeText,
  jsonText,
  LogEscaper,
  textToBytes,
} from "../../src/core/terminal.js";

/** A small seeded generator (mulberry32): the same "random" cases on every run. */
function random(seed: number): () => number {
  let state = seed;
  return () => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomBytes(next: () => number, length: number): Uint8Array {
  // Mostly bytes that make or break UTF-8 sequences, so that valid and invalid input both occur.
  const interesting = [0x00, 0x1b, 0x0a, 0x0d, 0x41, 0x5c, 0x7f, 0x80, 0x9b, 0xbf, 0xc0, 0xc2];
  const more = [0xdf, 0xe0, 0xe2, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff, 0xa0, 0x8f, 0x90];
  const pool = [...interesting, ...more];
  return Uint8Array.from({ length }, () =>
    next() < 0.5 ? (pool[Math.floor(next() * pool.length)] ?? 0) : Math.floor(next() * 256),
  );
}

/** The exhaustive sweeps take a second or two alone, more on a busy machine. */
const HEAVY_MS = 30_000;
const hasEscapedByte = (text: string) => /[\udc80-\udcff]/.test(text);
const lenient = new TextDecoder();
const encoder = new TextEncoder();
const same = (a: Uint8Array, b: Uint8Array) =>
  a.length === b.length && a.every((byte, i) => byte === b[i]);

/**
 * Where bytesToText and the platform's UTF-8 decoder disagree, or the bytes do not come back: the
 * platform replaces what is not UTF-8 with U+FFFD, so its text spells the bytes again exactly
 * when they were valid.
 */
function problems(inputs: Iterable<Uint8Array>): string[] {
  const found: string[] = [];
  for (const bytes of inputs) {
    const text = bytesToText(bytes);
    const platform = lenient.decode(bytes);
    const valid = same(encoder.encode(platform), bytes);
    if (!same(textToBytes(text), bytes)) found.push(`${bytes.join(",")} does not come back`);
    else if (valid ? text !== platform : !hasEscapedByte(text))
      found.push(`${bytes.join(",")} decodes otherwise than UTF-8 says`);
  }
  return found;
}

/** Reads escapeName's output back, to prove that two different names never look the same. */
function unescapeName(shown: string): string {
  return shown.replace(/\\(\\|n|t|r|x[0-9a-f]{2}|u[0-9a-f]{4})/g, (_, code: string) => {
    if (code === "\\") return "\\";
    if (code === "n") return "\n";
    if (code === "t") return "\t";
    if (code === "r") return "\r";
    const value = Number.parseInt(code.slice(1), 16);
    if (code.startsWith("x")) return String.fromCharCode(value < 0x80 ? value : 0xdc00 + value);
    return String.fromCharCode(value);
  });
}

/** What a terminal acts on instead of showing: C0, DEL, C1, bidirectional and line controls. */
function actsOnTerminal(text: string, allowed = ""): boolean {
  for (const char of text) {
    if (allowed.includes(char)) continue;
    const code = char.codePointAt(0) ?? 0;
    if (code < 0x20 || (code >= 0x7f && code <= 0x9f) || (code >= 0xd800 && code <= 0xdfff))
      return true;
    if ([0x061c, 0x200e, 0x200f, 0x2028, 0x2029].includes(code)) return true;
    if ((code >= 0x202a && code <= 0x202e) || (code >= 0x2066 && code <= 0x2069)) return true;
  }
  return false;
}

describe("bytes as text", () => {
  it(
    "every single byte and every pair of bytes comes back unchanged, and decodes as UTF-8 does where valid",
    () => {
      function* inputs() {
        for (let first = 0; first < 256; first++) {
          yield Uint8Array.of(first);
          for (let second = 0; second < 256; second++) yield Uint8Array.of(first, second);
        }
      }
      expect(problems(inputs())).toEqual([]);
    },
    HEAVY_MS,
  );

  it(
    "three- and four-byte sequences at every boundary of the standard's table 3-7",
    () => {
      const leads = [0xe0, 0xe1, 0xec, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf3, 0xf4, 0xf5];
      const continuations = [0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0];
      function* inputs() {
        for (const lead of leads)
          for (const a of continuations)
            for (const b of continuations) {
              yield Uint8Array.of(lead, a, b);
              for (const c of continuations) yield Uint8Array.of(lead, a, b, c);
            }
      }
      expect(problems(inputs())).toEqual([]);
    },
    HEAVY_MS,
  );

  it(
    "10000 random byte strings come back unchanged",
    () => {
      const next = random(14);
      const inputs = Array.from({ length: 10_000 }, () =>
        randomBytes(next, Math.floor(next() * 24)),
      );
      expect(problems(inputs)).toEqual([]);
    },
    HEAVY_MS,
  );

  it("keeps valid UTF-8 as the characters it spells (accents, CJK, emoji)", () => {
    const text = "café 東京 🚀 naïve";
    expect(bytesToText(new TextEncoder().encode(text))).toBe(text);
    expect(textToBytes(text)).toEqual(new TextEncoder().encode(text));
  });

  it("turns overlong forms, surrogates and code points above U+10FFFF into escaped bytes", () => {
    for (const bytes of [
      [0xc0, 0xaf], // "/" spelled overlong
      [0xe0, 0x80, 0xaf],
      [0xed, 0xa0, 0x80], // U+D800
      [0xf4, 0x90, 0x80, 0x80], // U+110000
      [0xf8, 0x88, 0x80, 0x80, 0x80],
    ]) {
      const text = bytesToText(Uint8Array.from(bytes));
      expect(
        [...text].every((char) => hasEscapedByte(char)),
        bytes.join(","),
      ).toBe(true);
    }
  });
});

describe("escaping for the terminal", () => {
  it("shows a name's controls, invalid bytes, layout characters and backslashes in a visible form", () => {
    const name = bytesToText(
      Uint8Array.from([
        ...new TextEncoder().encode("a\nb\tc\rd\u001b[31me\\f\u007fg\u009bh\u202ei\u2028j"),
        0xff,
        0x6b,
      ]),
    );
    expect(escapeName(name)).toBe(
      "a\\nb\\tc\\rd\\x1b[31me\\\\f\\x7fg\\u009bh\\u202ei\\u2028j\\xffk",
    );
  });

  it("leaves printable ASCII and other printable characters alone", () => {
    const printable = Array.from({ length: 0x7f - 0x20 }, (_, i) => String.fromCharCode(0x20 + i))
      .join("")
      .replace("\\", "");
    expect(escapeName(printable)).toBe(printable);
    expect(escapeName("café 東京 🚀")).toBe("café 東京 🚀");
    expect(escapeName("a\\nb")).toBe("a\\\\nb");
  });

  it(
    "leaves nothing a terminal acts on, for every code point there is",
    () => {
      // In blocks of 4096 code points, and each surrogate alone (two in a row would pair up).
      const blocks: string[] = [];
      for (let start = 0; start <= 0x10ffff; start += 0x1000) {
        let block = "";
        for (let code = start; code < start + 0x1000; code++) {
          if (code < 0xd800 || code > 0xdfff) block += String.fromCodePoint(code);
          else blocks.push(String.fromCharCode(code));
        }
        blocks.push(block);
      }
      const leaks = blocks.filter(
        (block) =>
          actsOnTerminal(escapeName(block)) ||
          actsOnTerminal(escapeLine(block)) ||
          actsOnTerminal(escapeText(block), "\n\t"),
      );
      expect(leaks.map((block) => block.codePointAt(0)?.toString(16))).toEqual([]);
    },
    HEAVY_MS,
  );

  it(
    "gives two different names two different forms (10000 random names read back)",
    () => {
      const next = random(7);
      const unreadable: string[] = [];
      for (let i = 0; i < 10_000; i++) {
        const name = bytesToText(randomBytes(next, Math.floor(next() * 16)));
        if (unescapeName(escapeName(name)) !== name) unreadable.push(escapeName(name));
      }
      expect(unreadable).toEqual([]);
      // Lone surrogates that no byte made (from elsewhere than bytesToText) are shown as such.
      expect(escapeName("\ud800x\udc00")).toBe("\\ud800x\\udc00");
    },
    HEAVY_MS,
  );

  it("keeps a message's backslashes and puts its line on one line", () => {
    expect(escapeLine("cannot mount C:\\layer\n\u001b[2Jgone\t!")).toBe(
      "cannot mount C:\\layer\\n\\x1b[2Jgone\\t!",
    );
  });

  it("keeps the lines and tabs of text of several lines", () => {
    expect(escapeText("one\n\ttwo\u001b]0;title\u0007\r\nthree\\")).toBe(
      "one\n\ttwo\\x1b]0;title\\x07\\r\nthree\\",
    );
  });
});

describe("JSON for output", () => {
  it("is the same JSON, with nothing a terminal acts on left raw", () => {
    const value = {
      path: bytesToText(Uint8Array.from([0x2f, 0x61, 0x0a, 0x1b, 0x9b, 0xff, 0x22])),
      others: ["\u007f\u0085\u009b", "\u202e\u2066\u2028\u2029", "café 🚀", 'a"b\\c'],
    };
    const text = jsonText(value);
    expect(JSON.parse(text)).toEqual(value);
    expect(actsOnTerminal(text, "\n")).toBe(false);
    expect(text).toContain("café 🚀");
    expect(text).toContain("\\udcff");
    expect(text).toContain("\\u009b");
    expect(jsonText([1], 0)).toBe("[1]");
  });
});

describe("console logs", () => {
  const log = Uint8Array.from([
    ...new TextEncoder().encode("boot\r\n\u001b[32mOK\u001b[0m\r\nprogress 10%\rprogress 99%\r\n"),
    ...new TextEncoder().encode("é→🚀\ttab\r\n"),
    0xff,
    0x0a,
    0xe2,
    0x82, // an incomplete euro sign at the very end
  ]);
  const whole =
    "boot\n\\x1b[32mOK\\x1b[0m\nprogress 10%\\rprogress 99%\né→🚀\ttab\n\\xff\n\\xe2\\x82";

  it("drops the CR of each CRLF, keeps tabs and escapes the rest", () => {
    const escaper = new LogEscaper();
    expect(escaper.push(log) + escaper.end()).toBe(whole);
  });

  it("reads the same however the log is cut into chunks", () => {
    for (let cut = 0; cut <= log.length; cut++) {
      const escaper = new LogEscaper();
      const text = escaper.push(log.subarray(0, cut)) + escaper.push(log.subarray(cut));
      expect(text + escaper.end(), `cut at ${cut}`).toBe(whole);
    }
    const byteByByte = new LogEscaper();
    let text = "";
    for (const byte of log) text += byteByByte.push(Uint8Array.of(byte));
    expect(text + byteByByte.end()).toBe(whole);
  });

  it("holds back only a CR or a character that the next chunk may complete", () => {
    const escaper = new LogEscaper();
    expect(escaper.push(new TextEncoder().encode("a\r"))).toBe("a");
    expect(escaper.push(Uint8Array.of(0xe2, 0x82))).toBe("\\r");
    expect(escaper.push(Uint8Array.of(0xac, 0x0d, 0x0a))).toBe("€\n");
    expect(escaper.push(Uint8Array.of(0x0d))).toBe("");
    expect(escaper.end()).toBe("\\r");
    expect(escaper.end()).toBe("");
  });
});

describe("NO_COLOR", () => {
  it("turns colour off when set to anything but the empty string (no-color.org)", () => {
    expect(colourWanted({})).toBe(true);
    expect(colourWanted({ NO_COLOR: "" })).toBe(true);
    expect(colourWanted({ NO_COLOR: "1" })).toBe(false);
    expect(colourWanted({ NO_COLOR: "0" })).toBe(false);
  });
});

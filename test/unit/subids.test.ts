import { describe, expect, it } from "vitest";
import { SANDBOX_IDS, subordinateStart } from "../../src/core/subids.js";

const root = { name: "root", id: 0 };

describe("subordinateStart", () => {
  it("takes root's first range of 65536 ids above the host's own users, by name or number", () => {
    expect(subordinateStart("alice:100000:65536\nroot:1879048192:65536\n", root)).toBe(1879048192);
    expect(subordinateStart("0:200000:131072\n", root)).toBe(200000);
    expect(subordinateStart("root:300000:65536\nroot:400000:65536\n", root)).toBe(300000);
  });

  it("skips ranges that are too small, overlap the host's users, run past 32 bits, or are malformed", () => {
    expect(subordinateStart("root:100000:1000\nroot:500000:65536\n", root)).toBe(500000);
    // A range at 0 would map the image's root to the host's.
    expect(subordinateStart("root:0:4294967295\n", root)).toBeUndefined();
    expect(subordinateStart("root:1000:65536\n", root)).toBeUndefined();
    expect(
      subordinateStart(`root:${2 ** 32 - SANDBOX_IDS}:${SANDBOX_IDS}\n`, root),
    ).toBeUndefined();
    expect(
      subordinateStart("root:x:65536\nroot:100000\nroot:100000:65536:1\n", root),
    ).toBeUndefined();
  });

  it("finds nothing for other users or in an empty file", () => {
    expect(subordinateStart("alice:100000:65536\n", root)).toBeUndefined();
    expect(subordinateStart("rooty:100000:65536\n", root)).toBeUndefined();
    expect(subordinateStart("", root)).toBeUndefined();
  });
});

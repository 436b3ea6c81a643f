import { describe, expect, it } from "vitest";
import { newestKernel } from "../../src/image/kernel.js";

describe("the kernel an image boots", () => {
  it("is the newest version, compared part by part as numbers, that has its modules", () => {
    const boot = [
      "vmlinuz-6.1.0-9-amd64",
      "vmlinuz-6.1.0-13-amd64",
      "vmlinuz-6.1.0-21-amd64",
      "config-6.1.0-21-amd64",
    ];
    expect(newestKernel(boot, ["6.1.0-9-amd64", "6.1.0-13-amd64"])).toBe("6.1.0-13-amd64");
    expect(newestKernel(boot, [])).toBeUndefined();
    expect(newestKernel([], ["6.1.0-13-amd64"])).toBeUndefined();
  });
});

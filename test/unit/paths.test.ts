import { describe, expect, it } from "vitest";
import { ifExists, ifProcessExists } from "../../src/host/paths.js";

const failing = (code: string) =>
  Promise.reject(Object.assign(new Error(`${code}: refused`), { code }));

describe("absence is ENOENT only", () => {
  it("gives the value of what is there, and undefined for what is not", async () => {
    await expect(ifExists(Promise.resolve("text"))).resolves.toBe("text");
    await expect(ifExists(failing("ENOENT"))).resolves.toBeUndefined();
  });

  it("throws every other failure with its cause: a permission, a link loop, a bug", async () => {
    await expect(ifExists(failing("EACCES"))).rejects.toThrow("EACCES: refused");
    await expect(ifExists(failing("ELOOP"))).rejects.toThrow("ELOOP");
    await expect(ifExists(Promise.reject(new TypeError("a bug")))).rejects.toThrow(TypeError);
  });

  it("takes a process that ended between two reads of /proc as gone", async () => {
    await expect(ifProcessExists(failing("ESRCH"))).resolves.toBeUndefined();
    await expect(ifProcessExists(failing("ENOENT"))).resolves.toBeUndefined();
    await expect(ifProcessExists(failing("EACCES"))).rejects.toThrow("EACCES");
    await expect(ifExists(failing("ESRCH"))).rejects.toThrow("ESRCH");
  });
});

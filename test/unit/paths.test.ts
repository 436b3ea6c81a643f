import { constants } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ifExists, ifProcessExists, pathExists } from "../../src/host/paths.js";
import { useTempDirs } from "../helpers/tmp.js";

const tempDir = useTempDirs();

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

describe("pathExists", () => {
  it("is true for what is there and false for what is not", async () => {
    const file = join(await tempDir(), "file");
    await writeFile(file, "", { mode: 0o644 });
    expect(await pathExists(file)).toBe(true);
    expect(await pathExists(join(file, "..", "missing"))).toBe(false);
  });

  it("with a mode, is false for a file that may not be used so", async () => {
    const file = join(await tempDir(), "file");
    await writeFile(file, "", { mode: 0o644 });
    expect(await pathExists(file, constants.R_OK)).toBe(true);
    expect(await pathExists(file, constants.X_OK)).toBe(false);
  });

  it("throws what is not absence: a file where a directory should be", async () => {
    const file = join(await tempDir(), "file");
    await writeFile(file, "");
    await expect(pathExists(join(file, "below"))).rejects.toThrow(/ENOTDIR/);
  });
});

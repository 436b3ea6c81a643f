import { writeFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { Command } from "../../src/host/runner.js";
import { importSource, qcow2Outside } from "../../src/image/sources.js";
import { RecordingRunner } from "../helpers/recording-runner.js";
import { useTempDirs } from "../helpers/tmp.js";

const tempDir = useTempDirs();

/** `qemu-img info --output=json` of a self-contained qcow2, as qemu-img 7.2 prints it. */
const WHOLE = {
  "virtual-size": 57671680,
  filename: "/state/images/.staging-1/source.qcow2",
  "cluster-size": 65536,
  format: "qcow2",
  "actual-size": 200704,
  "format-specific": {
    type: "qcow2",
    data: {
      compat: "1.1",
      "compression-type": "zlib",
      "lazy-refcounts": false,
      "refcount-bits": 16,
      corrupt: false,
      "extended-l2": false,
    },
  },
  "dirty-flag": false,
};

describe("what a qcow2 reads besides itself", () => {
  it("is nothing for a self-contained qcow2", () => {
    expect(qcow2Outside(WHOLE)).toBeUndefined();
  });

  it("is a backing file, however it is named", () => {
    expect(
      qcow2Outside({
        ...WHOLE,
        "backing-filename-format": "raw",
        "full-backing-filename": "/dev/sda1",
        "backing-filename": "/dev/sda1",
      }),
    ).toBe('a backing file "/dev/sda1"');
    const json = 'json:{"driver":"raw","file":{"driver":"file","filename":"/etc/shadow"}}';
    expect(qcow2Outside({ ...WHOLE, "backing-filename": json })).toBe(
      `a backing file ${JSON.stringify(json)}`,
    );
    expect(qcow2Outside({ ...WHOLE, "full-backing-filename": "/dev/sda1" })).toBe(
      'a backing file "/dev/sda1"',
    );
    expect(qcow2Outside({ ...WHOLE, "backing-filename-format": "raw" })).toBe("a backing file");
    expect(qcow2Outside({ ...WHOLE, "backing-filename": "x".repeat(1000) })).toBe(
      `a backing file "${"x".repeat(200)}"`,
    );
  });

  it("is an external data file", () => {
    const withData = (data: Record<string, unknown>) => ({
      ...WHOLE,
      "format-specific": { type: "qcow2", data: { ...WHOLE["format-specific"].data, ...data } },
    });
    expect(qcow2Outside(withData({ "data-file": "/dev/sda", "data-file-raw": true }))).toBe(
      'an external data file "/dev/sda"',
    );
    expect(qcow2Outside(withData({ "data-file-raw": false }))).toBe("an external data file");
  });

  it("is unknown, and so refused, when qemu-img says something else", () => {
    for (const info of [
      undefined,
      {},
      { ...WHOLE, format: "raw" },
      { format: "qcow2", "backing-filename": 3 },
    ])
      expect(qcow2Outside(info), JSON.stringify(info)).toBe(
        "an unexpected description (qemu-img info)",
      );
  });
});

describe("importing a qcow2", () => {
  const QCOW2_MAGIC = Buffer.from("QFI\xfb\0\0\0\x03", "latin1");

  /** Answers qemu-img info with `info`, and makes the files the real tools would make. */
  function qemu(info: unknown) {
    return new RecordingRunner((command: Command) => {
      const [program, verb] = command.argv;
      if (program === "qemu-img" && verb === "info") return { stdout: JSON.stringify(info) };
      if (program === "cp") writeFileSync(command.argv.at(-1) ?? "", QCOW2_MAGIC);
      if (program === "qemu-img" && verb === "convert") {
        const ext4 = Buffer.alloc(4096);
        ext4.writeUInt16LE(0xef53, 1080);
        writeFileSync(command.argv.at(-1) ?? "", ext4);
      }
      return {};
    });
  }

  it("copies it as root's, checks the copy, and converts the copy with no backing file", async () => {
    const staging = await tempDir();
    const source = join(await tempDir(), "disk.qcow2");
    await writeFile(source, QCOW2_MAGIC);
    const runner = qemu(WHOLE);
    const copy = join(staging, "source.qcow2");
    const spec = `json:{"driver":"qcow2","backing":null,"file":{"driver":"file","filename":${JSON.stringify(copy)}}}`;
    expect(await importSource(runner, staging, source)).toEqual({
      raw: join(staging, "raw.img"),
      format: "qcow2",
    });
    expect(runner.argvs).toEqual([
      ["cp", "--sparse=always", "/dev/fd/3", copy],
      ["qemu-img", "info", "--output=json", spec],
      ["qemu-img", "convert", "-O", "raw", spec, join(staging, "raw.img")],
      ["e2fsck", "-f", "-n", join(staging, "raw.img")],
    ]);
    expect(runner.commands[0]?.fd3).toEqual(expect.any(Number));
  });

  it("refuses one with a backing file before converting anything", async () => {
    const staging = await tempDir();
    const source = join(await tempDir(), "disk.qcow2");
    await writeFile(source, QCOW2_MAGIC);
    const runner = qemu({ ...WHOLE, "backing-filename": "/dev/sda1" });
    await expect(importSource(runner, staging, source)).rejects.toThrow(
      `${source} reads a backing file "/dev/sda1": shoal imports only what the qcow2 itself holds`,
    );
    expect(runner.argvs.map((argv) => argv.slice(0, 2))).toEqual([
      ["cp", "--sparse=always"],
      ["qemu-img", "info"],
    ]);
  });
});

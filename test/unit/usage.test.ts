import { describe, expect, it } from "vitest";
import { accountDisk } from "../../src/core/usage.js";
import { type LayerChange, withoutIdentity } from "../../src/layer/layer.js";

describe("disk accounting", () => {
  const tiny = { name: "tiny", id: "a".repeat(64), bytes: 1000 };
  const images = [
    tiny,
    { name: "deb", id: "b".repeat(64), bytes: 5000 },
    { name: "unused", id: "c".repeat(64), bytes: 9000 },
  ];
  const vm = (name: string, image: string, layerBytes: number) => ({
    name,
    image,
    layerType: "disk" as const,
    layerBytes,
    otherBytes: 10,
  });

  it("counts each base once however many VMs share it, and unused images not at all", () => {
    const usage = accountDisk(images, [
      vm("a", "tiny", 100),
      vm("b", "tiny", 50),
      vm("c", "deb", 0),
    ]);
    expect(usage.images.map((image) => [image.name, image.vms])).toEqual([
      ["tiny", 2],
      ["deb", 1],
    ]);
    expect(usage.basesBytes).toBe(6000);
    expect(usage.vmsBytes).toBe(180);
    expect(usage.totalBytes).toBe(6180);
    // Full copies: each VM its own base; its changes would be inside that copy.
    expect(usage.fullCopiesBytes).toBe(1000 + 1000 + 5000 + 30);
    expect(usage.ratio).toBeCloseTo(7030 / 6180, 9);
  });

  it("counts a base once per host that runs VMs of it", () => {
    const onHost = (name: string, host: string) => ({ ...vm(name, "tiny", 100), host });
    const usage = accountDisk(
      [
        { ...tiny, host: "h1" },
        { ...tiny, host: "h2" },
        { ...tiny, host: "h3" },
      ],
      [onHost("a", "h1"), onHost("b", "h1"), onHost("c", "h2")],
    );
    expect(usage.images.map((image) => [image.host, image.vms])).toEqual([
      ["h1", 2],
      ["h2", 1],
    ]);
    expect(usage.basesBytes).toBe(2000);
    expect(usage.fullCopiesBytes).toBe(3 * 1000 + 3 * 10);
  });

  it("has no ratio for a fleet that takes nothing", () => {
    expect(accountDisk(images, []).ratio).toBeUndefined();
  });
});

describe("a layer's own changes", () => {
  const change = (path: string, type: LayerChange["type"] = "file"): LayerChange => ({
    path,
    change: "added",
    type,
    size: 0,
  });

  it("leave out the identity files and the directories made only for them", () => {
    expect(
      withoutIdentity([
        change("/etc/dropbear", "dir"),
        change("/etc/dropbear/dropbear_ed25519_host_key"),
        change("/etc/hostname"),
        change("/root/.ssh", "dir"),
        change("/root/.ssh/authorized_keys"),
        change("/root/notes"),
      ]).map((kept) => kept.path),
    ).toEqual(["/root/notes"]);
  });

  it("keep such a directory when the VM put something else in it", () => {
    expect(
      withoutIdentity([
        change("/root/.ssh", "dir"),
        change("/root/.ssh/authorized_keys"),
        change("/root/.ssh/config"),
      ]).map((kept) => kept.path),
    ).toEqual(["/root/.ssh", "/root/.ssh/config"]);
  });
});

import { XMLParser } from "fast-xml-parser";
import { describe, expect, it } from "vitest";
import {
  type DomainInput,
  METADATA_NAMESPACE,
  renderDomainXml,
} from "../../src/backends/libvirt/render.js";
import type { VmSpec } from "../../src/core/fleet.js";
import { ownedDomainUuid } from "../../src/core/render/boot.js";
import { fleetOf } from "../helpers/fleet.js";

const [disk, tmpfs] = fleetOf(
  "name: lab\ncount: 2\nvm: { memory: 128M, layer: { type: disk, size: 64M } }\nvms: [ { name: vm-2, layer: { type: tmpfs } } ]\n",
).vms as [VmSpec, VmSpec];
const BASE_ID = "a".repeat(64);

function input(vm: VmSpec, change: Partial<DomainInput> = {}): DomainInput {
  const uuid = ownedDomainUuid("libvirt", { root: "/var/lib/shoal", fleet: "lab" }, vm.name);
  return {
    fleet: "lab",
    uuid,
    vm,
    boot: { baseId: BASE_ID },
    kernel: "/srv/pool/kernel-1",
    initrd: "/srv/pool/initrd-1",
    disks: {
      base: { pool: "shoal-x", name: `base-${BASE_ID}` },
      seed: { pool: "shoal-x", name: `${uuid}-seed` },
      layer: { pool: "shoal-x", name: `${uuid}-layer` },
    },
    nic: { bridge: "sb12345", tap: "s12345-1", mtu: 1450 },
    accel: "tcg",
    consoleLog: `/var/log/shoal/lab.${vm.name}.log`,
    consoleSocket: `/run/libvirt/qemu/lab.${vm.name}.console`,
    owner: "shoal owner=/var/lib/shoal fleet=lab",
    ...change,
  };
}

const parser = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: "@" });
// biome-ignore lint/suspicious/noExplicitAny: the parsed XML is looked at field by field.
const parsed = (xml: string): any => parser.parse(xml).domain;

describe("a VM as a libvirt domain", () => {
  it("boots the image's kernel with shoal's initramfs, the base shared read-only, the seed read-only, the layer writable", () => {
    const domain = parsed(renderDomainXml(input(disk)));
    expect(domain["@type"]).toBe("qemu");
    expect(domain.name).toBe("lab.vm-1");
    expect(domain.memory).toEqual({ "@unit": "MiB", "#text": 128 });
    expect(domain.os.kernel).toBe("/srv/pool/kernel-1");
    expect(domain.os.initrd).toBe("/srv/pool/initrd-1");
    expect(domain.os.cmdline).toContain("shoal.base=/dev/vda");
    expect(domain.os.cmdline).toContain("shoal.seed=/dev/vdb");
    expect(domain.os.cmdline).toContain("shoal.layer=/dev/vdc");
    const disks = domain.devices.disk.map((d: Record<string, Record<string, string>>) => [
      d.source?.["@volume"],
      d.target?.["@dev"],
      "readonly" in d,
      "shareable" in d,
    ]);
    expect(disks).toEqual([
      [`base-${BASE_ID}`, "vda", true, true],
      [expect.stringMatching(/-seed$/), "vdb", true, false],
      [expect.stringMatching(/-layer$/), "vdc", false, false],
    ]);
    expect(domain.devices.interface).toMatchObject({
      "@type": "bridge",
      mac: { "@address": disk.mac },
      source: { "@bridge": "sb12345" },
      target: { "@dev": "s12345-1" },
      model: { "@type": "virtio" },
      mtu: { "@size": "1450" },
    });
    // The console: a socket on the host to talk over, and a log of everything the guest wrote.
    expect(domain.devices.serial).toEqual({
      "@type": "unix",
      source: { "@mode": "bind", "@path": "/run/libvirt/qemu/lab.vm-1.console" },
      log: { "@file": "/var/log/shoal/lab.vm-1.log", "@append": "on" },
      target: { "@port": "0" },
    });
    expect(domain.features.tcg["tb-cache"]["#text"]).toBe(32);
    expect(domain.on_poweroff).toBe("destroy");
    expect(domain.metadata["shoal:vm"]).toEqual({
      "@xmlns:shoal": METADATA_NAMESPACE,
      "@owner": "shoal owner=/var/lib/shoal fleet=lab",
    });
  });

  it("gives a tmpfs-layer VM no layer disk, and KVM the host's CPU", () => {
    const domain = parsed(renderDomainXml(input(tmpfs, { accel: "kvm" })));
    expect(domain["@type"]).toBe("kvm");
    expect(domain.cpu).toEqual({ "@mode": "host-passthrough" });
    expect(domain.features.tcg).toBeUndefined();
    expect(domain.devices.disk).toHaveLength(2);
    expect(domain.os.cmdline).toContain("shoal.layer=tmpfs");
  });

  it("escapes what it writes into the XML", () => {
    const xml = renderDomainXml(input(disk, { owner: `shoal owner=/a&b<c>"d' fleet=lab` }));
    expect(xml).toContain("owner=/a&amp;b&lt;c&gt;&quot;d&apos; fleet=lab");
    expect(parsed(xml).metadata["shoal:vm"]["@owner"]).toBe(`shoal owner=/a&b<c>"d' fleet=lab`);
  });

  it.each([
    ["a tap name libvirt keeps for its own", { nic: { bridge: "br0", tap: "vnet7" } }, "vnet7"],
    ["a tap name too long", { nic: { bridge: "br0", tap: "a".repeat(16) } }, "a".repeat(16)],
    [
      "a volume name with a slash",
      {
        disks: {
          base: { pool: "p", name: "../x" },
          seed: { pool: "p", name: "s" },
          layer: { pool: "p", name: "l" },
        },
      },
      "../x",
    ],
    ["a relative kernel path", { kernel: "kernel" }, "kernel"],
    ["a bad UUID", { uuid: "not-a-uuid" }, "not-a-uuid"],
  ] as const)("refuses %s", (_what, change, shown) => {
    expect(() => renderDomainXml(input(disk, change as Partial<DomainInput>))).toThrow(shown);
  });
});

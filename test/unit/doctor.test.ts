import { describe, expect, it } from "vitest";
import { qemuKind } from "../../src/backends/qemu/kind.js";
import { xlKind } from "../../src/backends/xl/kind.js";
import { parseXlInfo } from "../../src/backends/xl/xen.js";
import {
  COMMON_TOOLS,
  impairmentCheck,
  ksmCheck,
  missingTool,
  toolsFor,
  verdict,
  versionLine,
} from "../../src/core/doctor.js";

describe("shoal doctor's checks", () => {
  it("take the line of a tool's output that names its version", () => {
    expect(versionLine("\nQEMU emulator version 7.2.22 (Debian)\nCopyright (c) 2003-2022\n")).toBe(
      "QEMU emulator version 7.2.22 (Debian)",
    );
    expect(versionLine("Usage: thing\nthing 1.4\n")).toBe("thing 1.4");
    expect(versionLine("no version here\n")).toBe("no version here");
    expect(versionLine("")).toBe("");
  });

  it("check the tools each backend needs, and only those", () => {
    const qemu = toolsFor(qemuKind.tools).map((tool) => tool.name);
    const xl = toolsFor(xlKind.tools).map((tool) => tool.name);
    expect(qemu).toContain("qemu-system-x86_64");
    expect(qemu).not.toContain("xl");
    expect(xl).toContain("xl");
    expect(xl).not.toContain("qemu-system-x86_64");
    for (const name of ["dnsmasq", "ip", "ssh", "mkfs.ext4"]) {
      expect(qemu).toContain(name);
      expect(xl).toContain(name);
    }
  });

  it("fail on a missing required tool and warn on an optional one, naming the package", () => {
    const dnsmasq = COMMON_TOOLS.find((tool) => tool.name === "dnsmasq");
    const nft = COMMON_TOOLS.find((tool) => tool.name === "nft");
    if (!dnsmasq || !nft) throw new Error("tools missing from the table");
    expect(missingTool(dnsmasq)).toEqual({
      name: "dnsmasq",
      level: "fail",
      detail: "missing; needed for DHCP and DNS on fleet networks",
      fix: "apt-get install dnsmasq-base",
    });
    expect(missingTool(nft).level).toBe("warn");
    expect(verdict([missingTool(nft), { name: "x", level: "ok", detail: "" }])).toBe(true);
    expect(verdict([missingTool(dnsmasq)])).toBe(false);
  });

  it("read xl info's fields", () => {
    const info = parseXlInfo(
      "host                   : dom0\nxen_version            : 4.17.5\nfree_memory            : 2913\n",
    );
    expect(info.get("free_memory")).toBe("2913");
    expect(info.get("xen_version")).toBe("4.17.5");
  });

  it("say which impairments the kernel takes, naming the modules it lacks", () => {
    const all = { shaping: true, ifb: true, bridgeRules: true, netem: true };
    expect(impairmentCheck(all)).toEqual({
      name: "impairments",
      level: "ok",
      detail: "all: rate, loss, partitions, delay, jitter, corruption, duplication",
    });
    expect(impairmentCheck({ ...all, netem: false })).toMatchObject({
      level: "warn",
      detail: "rate, loss, partitions; this kernel lacks netem (sch_netem)",
    });
    expect(
      impairmentCheck({ shaping: false, ifb: false, bridgeRules: false, netem: false }).detail,
    ).toBe(
      "none; this kernel lacks htb, clsact, u32 or mirred (sch_htb, sch_ingress, cls_u32, act_mirred), ifb devices (ifb), nftables' bridge family (nf_tables, nft_numgen), netem (sch_netem)",
    );
  });

  it("show KSM off with what turning it on trades, and on with the memory it saves now", () => {
    expect(ksmCheck(undefined).detail).toBe("not in this kernel: VMs' alike pages stay apart");
    const off = ksmCheck({ running: false, pagesShared: 0, pagesSharing: 0 });
    expect(off.level).toBe("ok");
    expect(off.detail).toMatch(/^off; `shoal host ksm on` merges .*side channel between VMs/);
    const on = ksmCheck({ running: true, pagesShared: 2142, pagesSharing: 12296 });
    expect(on.detail).toMatch(
      /^on, 48M saved now by merging .*side channel.*`shoal host ksm off` ends it$/,
    );
  });
});

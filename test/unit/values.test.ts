import { describe, expect, it } from "vitest";
import {
  addressSlot,
  formatIpv4,
  makeSubnet,
  parseCidr,
  parseIpv4,
  slotAddress,
} from "../../src/core/ipv4.js";
import { checkUnicastMac, parseMac } from "../../src/core/mac.js";
import {
  expandNamePattern,
  isDnsLabel,
  isImageName,
  parseNamePattern,
} from "../../src/core/names.js";
import { formatSize, parseSize } from "../../src/core/size.js";
import { checkAuthorizedKey, checkKernelParam, isSafePath } from "../../src/core/syntax.js";

describe("sizes", () => {
  it("parse binary units in upper and lower case, with optional iB/B", () => {
    expect(parseSize("128M")).toBe(128 * 1024 ** 2);
    expect(parseSize("128m")).toBe(128 * 1024 ** 2);
    expect(parseSize("64MiB")).toBe(64 * 1024 ** 2);
    expect(parseSize("2GB")).toBe(2 * 1024 ** 3);
    expect(parseSize("1.5G")).toBe(1.5 * 1024 ** 3);
    expect(parseSize("4K")).toBe(4096);
    expect(parseSize("1T")).toBe(1024 ** 4);
  });

  it("refuse what is not a size", () => {
    for (const text of [
      "12XB",
      "128",
      "",
      "M",
      "-1G",
      "1e3M",
      "1,5G",
      "1.5.1G",
      "0x10M",
      "128 M B",
    ]) {
      expect(parseSize(text), text).toBeUndefined();
    }
  });

  it("refuse a fraction of a byte", () => {
    expect(parseSize("1.0001K")).toBeUndefined();
  });

  it("print the shortest exact spelling", () => {
    expect(formatSize(128 * 1024 ** 2)).toBe("128M");
    expect(formatSize(1536 * 1024 ** 2)).toBe("1536M");
    expect(formatSize(1024 ** 3)).toBe("1G");
    expect(formatSize(1000)).toBe("1000B");
  });
});

describe("names", () => {
  it("are lowercase DNS labels", () => {
    for (const good of ["a", "agent-001", "x".repeat(63), "0day"])
      expect(isDnsLabel(good), good).toBe(true);
    for (const bad of [
      "",
      "-a",
      "a-",
      "A",
      "a_b",
      "a.b",
      "a/b",
      "..",
      "a b",
      "x".repeat(64),
      "é",
    ]) {
      expect(isDnsLabel(bad), bad).toBe(false);
    }
  });

  it("of images may carry dots, never two in a row or at the ends", () => {
    for (const good of ["tiny", "debian-12.2", "base_v2"])
      expect(isImageName(good), good).toBe(true);
    for (const bad of ["..", "a..b", ".hidden", "a.", "a/b", "A", ""])
      expect(isImageName(bad), bad).toBe(false);
  });

  it("come from patterns with a plain or zero-padded counter", () => {
    const padded = parseNamePattern("agent-{n:03}");
    if (!padded.ok) throw new Error(padded.message);
    expect([1, 42, 1000].map((n) => expandNamePattern(padded.pattern, n))).toEqual([
      "agent-001",
      "agent-042",
      "agent-1000",
    ]);
    const plain = parseNamePattern("{n}-node");
    if (!plain.ok) throw new Error(plain.message);
    expect(expandNamePattern(plain.pattern, 7)).toBe("7-node");
    expect(parseNamePattern("agent").ok).toBe(false);
    expect(parseNamePattern("a{n:3}").ok).toBe(false);
    expect(parseNamePattern("A{n}").ok).toBe(false);
  });
});

describe("IPv4", () => {
  it("parses only four-part decimal addresses", () => {
    expect(parseIpv4("10.77.0.1")).toBe(0x0a4d0001);
    for (const bad of ["10.77.0", "10.77.0.256", "010.1.1.1", "1.2.3.4.5", "::1", "a.b.c.d"]) {
      expect(parseIpv4(bad), bad).toBeUndefined();
    }
    expect(formatIpv4(0xffffffff)).toBe("255.255.255.255");
  });

  it("parses subnets and refuses host bits, missing prefixes and /31 or /32", () => {
    expect(parseCidr("10.77.0.0/16")).toEqual({ ok: true, network: 0x0a4d0000, prefix: 16 });
    expect(parseCidr("0.0.0.0/0")).toEqual({ ok: true, network: 0, prefix: 0 });
    for (const bad of [
      "10.77.0.0",
      "10.77.0.0/",
      "10.77.0.0/16/1",
      "10.77.0.0/x",
      "10.77.0.1/16",
      "10.0.0.0/31",
      "10.0.0.0/32",
      "10.0.0.0/33",
    ]) {
      expect(parseCidr(bad).ok, bad).toBe(false);
    }
  });

  it("maps slots to addresses and back around the gateway", () => {
    const subnet = makeSubnet(0x0a000000, 29, 0x0a000004);
    expect(subnet.capacity).toBe(5);
    const addresses = [1, 2, 3, 4, 5].map((slot) => formatIpv4(slotAddress(subnet, slot)));
    expect(addresses).toEqual(["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6"]);
    for (const slot of [1, 2, 3, 4, 5])
      expect(addressSlot(subnet, slotAddress(subnet, slot))).toBe(slot);
    for (const reserved of [0x0a000000, 0x0a000004, 0x0a000007])
      expect(addressSlot(subnet, reserved)).toBeUndefined();
  });
});

describe("MACs", () => {
  it("are normalised to lowercase and must be unicast", () => {
    expect(parseMac("52:54:00:AB:cd:EF")).toBe("52:54:00:ab:cd:ef");
    expect(parseMac("52-54-00-ab-cd-ef")).toBeUndefined();
    expect(checkUnicastMac("53:54:00:00:00:01")).toContain("multicast");
    expect(checkUnicastMac("00:00:00:00:00:00")).toContain("not a usable address");
    expect(checkUnicastMac("52:54:00:00:00:01")).toBeUndefined();
  });
});

describe("values that reach config syntaxes", () => {
  it("kernel parameters: one token each, no quotes, no shoal-owned keys", () => {
    for (const good of [
      "quiet",
      "earlycon=uart8250,io,0x3f8,115200",
      "a.b-c_d=x:y/z",
      "systemd.setenv=A=B",
    ]) {
      expect(checkKernelParam(good), good).toBeUndefined();
    }
    for (const bad of [
      "a b",
      'a="b"',
      "a='b'",
      "a=\\",
      "a\nb",
      "=x",
      "",
      "--",
      "rdinit=/x",
      "shoal.base=/dev/sda",
      "é=1",
    ]) {
      expect(checkKernelParam(bad), bad).toBeDefined();
    }
  });

  it("paths: absolute, portable characters, no ..", () => {
    for (const good of ["/var/lib/shoal", "/tmp/a_b.c-d+e@f~g"])
      expect(isSafePath(good), good).toBe(true);
    for (const bad of ["relative", "/a b", "/a,b", '/a"b', "/a:b", "/a/../b", "/a\nb", "/a=b"]) {
      expect(isSafePath(bad), bad).toBe(false);
    }
  });

  it("authorized keys: a whole key of a known type", () => {
    const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGXKyw6Dw0aLSWTKhZ9mSD3wrzSUWaGSiGBOSkbp5XW8";
    expect(checkAuthorizedKey(key)).toBeUndefined();
    expect(checkAuthorizedKey(`${key} alice@laptop`)).toBeUndefined();
    expect(checkAuthorizedKey(key.slice(0, -8))).toContain("does not hold a whole ssh-ed25519 key");
    expect(checkAuthorizedKey(key.replace("ssh-ed25519", "ssh-rsa"))).toContain(
      "does not hold a whole ssh-rsa key",
    );
    expect(checkAuthorizedKey(`${key} a\tb`)).toContain("must be one public key line");
  });
});

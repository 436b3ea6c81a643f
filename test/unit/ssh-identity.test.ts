import { describe, expect, it } from "vitest";
import { kvmProbeArgv } from "../../src/backends/qemu/accel.js";
import { makeSubnet, parseCidr, subnetsOverlap } from "../../src/core/ipv4.js";
import { hostTapName } from "../../src/core/net.js";
import { SEED_PATHS, seedFiles } from "../../src/core/seed.js";
import { formatUsage } from "../../src/core/size.js";
import {
  dropbearPrivateKey,
  parsePrivateKeyFile,
  privateKeyFile,
  publicKeyLine,
  renderKnownHosts,
} from "../../src/core/ssh.js";
import { selectVms } from "../../src/fleet/select.js";

// RFC 8032, section 7.1, test 1: a published ed25519 key pair.
const key = {
  seed: Buffer.from("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60", "hex"),
  publicKey: Buffer.from("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "hex"),
};
const PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINdamAGCsQq31Uv+08lkBzoO4XLz2qYjJa8CGmj3B1Ea";

function sshStrings(data: Buffer, count: number): [Buffer[], Buffer] {
  const fields: Buffer[] = [];
  let rest = data;
  for (let i = 0; i < count; i++) {
    const length = rest.readUInt32BE(0);
    fields.push(rest.subarray(4, 4 + length));
    rest = rest.subarray(4 + length);
  }
  return [fields, rest];
}

describe("OpenSSH key files", () => {
  it("writes the public key as ssh-keygen does", () => {
    expect(publicKeyLine(key)).toBe(PUBLIC);
  });

  it("writes an unencrypted openssh-key-v1 private key holding seed and public key", () => {
    const text = privateKeyFile(key, "root@vm-1", 0x01020304);
    const lines = text.trimEnd().split("\n");
    expect(lines[0]).toBe("-----BEGIN OPENSSH PRIVATE KEY-----");
    expect(lines.at(-1)).toBe("-----END OPENSSH PRIVATE KEY-----");
    expect(lines.slice(1, -1).every((line) => line.length <= 70)).toBe(true);
    const data = Buffer.from(lines.slice(1, -1).join(""), "base64");
    const magic = Buffer.from("openssh-key-v1\0");
    expect(data.subarray(0, magic.length)).toEqual(magic);
    const [header, afterHeader] = sshStrings(data.subarray(magic.length), 3);
    expect(header.map(String)).toEqual(["none", "none", ""]);
    expect(afterHeader.readUInt32BE(0)).toBe(1);
    const [[publicBlob, section], end] = sshStrings(afterHeader.subarray(4), 2) as [
      Buffer[],
      Buffer,
    ];
    expect(end.length).toBe(0);
    expect(`ssh-ed25519 ${publicBlob?.toString("base64")}`).toBe(PUBLIC);
    if (!section) throw new Error("no private section");
    expect(section.length % 8).toBe(0);
    expect(section.readUInt32BE(0)).toBe(0x01020304);
    expect(section.readUInt32BE(4)).toBe(0x01020304);
    const [fields, padding] = sshStrings(section.subarray(8), 4);
    expect(String(fields[0])).toBe("ssh-ed25519");
    expect(fields[1]).toEqual(key.publicKey);
    expect(fields[2]).toEqual(Buffer.concat([key.seed, key.publicKey]));
    expect(String(fields[3])).toBe("root@vm-1");
    expect([...padding]).toEqual(Array.from({ length: padding.length }, (_, i) => i + 1));
  });

  it("writes dropbear's host key file: the key type, then seed and public key as one string", () => {
    const [fields, rest] = sshStrings(dropbearPrivateKey(key), 2);
    expect(rest.length).toBe(0);
    expect(String(fields[0])).toBe("ssh-ed25519");
    expect(fields[1]).toEqual(Buffer.concat([key.seed, key.publicKey]));
  });

  it("reads back the key of a private key file it wrote, and nothing else", () => {
    expect(parsePrivateKeyFile(privateKeyFile(key, "root@vm-1", 99))).toEqual(key);
    expect(parsePrivateKeyFile("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n")).toBeUndefined();
    // The same file with a cipher named: an encrypted key is not one shoal made.
    const lines = privateKeyFile(key, "x", 1).trim().split("\n");
    const data = Buffer.from(lines.slice(1, -1).join(""), "base64");
    data.write("aes2", data.indexOf("none"));
    const encrypted = [lines[0], data.toString("base64"), lines.at(-1)].join("\n");
    expect(parsePrivateKeyFile(encrypted)).toBeUndefined();
  });

  it("refuses a key of the wrong size", () => {
    expect(() => publicKeyLine({ seed: key.seed, publicKey: key.publicKey.subarray(1) })).toThrow(
      /^internal/,
    );
  });
});

describe("known_hosts", () => {
  it("lists each VM by name, name.fleet and address, then its key", () => {
    expect(
      renderKnownHosts([
        { hosts: ["vm-1", "vm-1.lab", "10.77.0.2"], publicKey: PUBLIC },
        { hosts: ["vm-2", "vm-2.lab", "10.77.0.3"], publicKey: PUBLIC },
      ]),
    ).toBe(`vm-1,vm-1.lab,10.77.0.2 ${PUBLIC}\nvm-2,vm-2.lab,10.77.0.3 ${PUBLIC}\n`);
  });

  it("refuses a host name that could add a second entry or an option", () => {
    expect(() =>
      renderKnownHosts([{ hosts: ["vm-1 @cert-authority"], publicKey: PUBLIC }]),
    ).toThrow(/^internal: known_hosts name/);
    expect(() => renderKnownHosts([{ hosts: ["vm-1"], publicKey: `${PUBLIC}\nx` }])).toThrow(
      /^internal: public key/,
    );
  });
});

describe("the identity seed", () => {
  const input = {
    vm: { name: "vm-1", hostname: "vm-1", machineId: "0123456789abcdef0123456789abcdef" },
    fleet: "lab",
    hostKey: { privateKey: privateKeyFile(key, "root@vm-1", 7), publicKey: PUBLIC },
    authorizedKeys: [`${PUBLIC} alice@laptop`],
  };

  it("holds hostname, machine-id, host key, sshd's key setting and root's authorized_keys, secrets 0600", () => {
    const files = seedFiles(input);
    expect(files.map((file) => [file.path, file.mode.toString(8)])).toEqual([
      ["etc/hostname", "644"],
      ["etc/machine-id", "444"],
      ["etc/ssh/ssh_host_ed25519_key", "600"],
      ["etc/ssh/ssh_host_ed25519_key.pub", "644"],
      ["etc/ssh/sshd_config.d/shoal-host-key.conf", "644"],
      ["etc/dropbear/dropbear_ed25519_host_key", "600"],
      ["root/.ssh/authorized_keys", "600"],
    ]);
    // What `shoal diff` leaves out as identity is exactly what the seed writes.
    expect(files.map((file) => file.path)).toEqual([...SEED_PATHS]);
    const content = Object.fromEntries(files.map((file) => [file.path, file.content]));
    expect(content["etc/hostname"]).toBe("vm-1\n");
    expect(content["etc/machine-id"]).toBe("0123456789abcdef0123456789abcdef\n");
    expect(content["etc/ssh/ssh_host_ed25519_key.pub"]).toBe(`${PUBLIC} root@vm-1\n`);
    expect(content["etc/ssh/sshd_config.d/shoal-host-key.conf"]).toContain(
      "\nHostKey /etc/ssh/ssh_host_ed25519_key\n",
    );
    expect(content["etc/dropbear/dropbear_ed25519_host_key"]).toEqual(dropbearPrivateKey(key));
    expect(content["root/.ssh/authorized_keys"]).toBe(`${PUBLIC} alice@laptop\n`);
  });

  it("refuses values that validation should have stopped", () => {
    expect(() => seedFiles({ ...input, vm: { ...input.vm, hostname: "a b" } })).toThrow(
      /^internal/,
    );
    expect(() => seedFiles({ ...input, authorizedKeys: ['command="x" ssh-ed25519 AAAA'] })).toThrow(
      /^internal/,
    );
    expect(() =>
      seedFiles({ ...input, hostKey: { ...input.hostKey, publicKey: "ssh-rsa AAAA" } }),
    ).toThrow(/^internal/);
    // A public key that is not the private key's.
    const other = { ...key, publicKey: Buffer.alloc(32, 1) };
    expect(() =>
      seedFiles({ ...input, hostKey: { ...input.hostKey, publicKey: publicKeyLine(other) } }),
    ).toThrow(/^internal: vm-1's host key files/);
  });
});

describe("picking VMs on the command line", () => {
  const known = ["db-1", "web-1", "web-2", "web-10"];

  it("takes names and glob patterns, in fleet order, each VM once", () => {
    expect(selectVms(["web-*", "web-1"], known)).toEqual(["web-1", "web-2", "web-10"]);
    expect(selectVms(["web-?", "db-1"], known)).toEqual(["db-1", "web-1", "web-2"]);
    expect(selectVms([], known)).toEqual(known);
  });

  it("refuses a pattern that matches no VM, as bad input", () => {
    expect(() => selectVms(["app-*"], known)).toThrow(/no VM of this fleet matches "app-\*"/);
  });
});

describe("disk use for people", () => {
  it("rounds to a readable size", () => {
    expect(
      [0, 512, 4096, 4.4 * 1024 ** 2, 150 * 1024 ** 2, 3 * 1024 ** 3].map(formatUsage),
    ).toEqual(["0B", "512B", "4.0K", "4.4M", "150M", "3.0G"]);
  });
});

describe("the KVM probe", () => {
  it("boots the kernel with no root under KVM, so it panics and QEMU exits at once; timeout(1) kills a hung one; QEMU runs confined as every VM's does", () => {
    expect(kvmProbeArgv("/images/abc/vmlinuz")).toEqual([
      "timeout",
      "--signal=KILL",
      "20",
      "setpriv",
      "--reuid=shoal-qemu",
      "--regid=shoal-qemu",
      "--init-groups",
      "--inh-caps=-all",
      "--bounding-set=-all",
      "--no-new-privs",
      "--",
      "qemu-system-x86_64",
      "-machine",
      "q35",
      "-accel",
      "kvm",
      "-cpu",
      "host",
      "-m",
      "128M",
      "-nodefaults",
      "-no-user-config",
      "-display",
      "none",
      "-serial",
      "stdio",
      "-no-reboot",
      "-kernel",
      "/images/abc/vmlinuz",
      "-append",
      "console=ttyS0 panic=-1",
      "-sandbox",
      "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]);
  });
});

describe("tap devices on a host bridge", () => {
  it("carry the owner (hashed) and the slot, in at most 15 bytes, distinct between fleets and state directories", () => {
    const lab = { root: "/var/lib/shoal", fleet: "lab" };
    expect(hostTapName(lab, 1)).toMatch(/^s[0-9a-f]{5}-1$/);
    expect(hostTapName(lab, 2 ** 24 - 1).length).toBeLessThanOrEqual(15);
    expect(hostTapName(lab, 7)).not.toBe(hostTapName({ ...lab, fleet: "lab2" }, 7));
    expect(hostTapName(lab, 7)).not.toBe(hostTapName({ ...lab, root: "/srv/shoal" }, 7));
    expect(hostTapName(lab, 7)).toBe(hostTapName({ ...lab }, 7));
  });
});

describe("subnets of fleets on host bridges", () => {
  const subnet = (cidr: string) => {
    const parsed = parseCidr(cidr);
    if (!parsed.ok) throw new Error(cidr);
    return makeSubnet(parsed.network, parsed.prefix);
  };

  it("overlap when they share any address", () => {
    expect(subnetsOverlap(subnet("10.77.0.0/16"), subnet("10.77.3.0/24"))).toBe(true);
    expect(subnetsOverlap(subnet("10.77.3.0/24"), subnet("10.77.0.0/16"))).toBe(true);
    expect(subnetsOverlap(subnet("10.77.0.0/24"), subnet("10.77.0.0/24"))).toBe(true);
    expect(subnetsOverlap(subnet("10.77.0.0/24"), subnet("10.77.1.0/24"))).toBe(false);
    expect(subnetsOverlap(subnet("10.76.0.0/16"), subnet("10.77.0.0/16"))).toBe(false);
  });
});

import { execFileSync } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { checkKernelParam } from "../../src/core/syntax.js";
import { ShoalError, SpecError } from "../../src/errors.js";
import { loadFleetFile, parseFleetText } from "../../src/spec/load.js";
import { fleetOf, problemsOf } from "../helpers/fleet.js";
import { useTempDirs } from "../helpers/tmp.js";

/**
 * Fleet files as an attacker or a slip of the keyboard writes them: each is refused with a
 * position, as `shoal validate` prints it (exit 2), never with an internal error (exit 70).
 */

const one = (text: string) => problemsOf(text)[0];

/** CPU time, which a loaded host does not stretch as it does wall time. */
function cpuMilliseconds(run: () => void): number {
  const before = process.cpuUsage();
  run();
  const used = process.cpuUsage(before);
  return (used.user + used.system) / 1000;
}

describe("YAML aliases and merge keys", () => {
  it("refuse an alias without an anchor, at the alias", () => {
    expect(problemsOf("name: a\nvm: *nope\n")).toEqual([
      "test.yaml:2:5 vm: the alias *nope has no anchor &nope before it",
    ]);
    expect(one("name: a\nvm: { memory: *m }\nx: &m 1G\n")).toBe(
      "test.yaml:2:15 vm.memory: the alias *m has no anchor &m before it",
    );
  });

  it("refuse an alias bomb (billion laughs) without expanding it", () => {
    let text = "name: a\nl0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n";
    for (let i = 1; i < 10; i++) {
      text += `l${i}: &l${i} [${Array(9)
        .fill(`*l${i - 1}`)
        .join(", ")}]\n`;
    }
    const took = cpuMilliseconds(() => {
      expect(problemsOf(text)).toEqual([
        "test.yaml:7:10 l5[0]: the file holds more than 100000 values (each alias counted as often as it is used); a fleet file needs far fewer",
      ]);
    });
    expect(took).toBeLessThan(2000);
  });

  it("refuse merges that chain or fan out into too many values", () => {
    let fan = "name: a\nm0: &m0 {x: 1}\n";
    for (let i = 1; i < 30; i++) fan += `m${i}: &m${i} {<<: [*m${i - 1}, *m${i - 1}]}\n`;
    expect(one(fan)).toBe(
      'test.yaml:16:17 m14["<<"][0]: the file holds more than 100000 values (each alias counted as often as it is used); a fleet file needs far fewer',
    );
  });

  it("refuse an alias inside the value its anchor marks", () => {
    expect(problemsOf("name: a\nvm: &v { layer: *v }\n")).toEqual([
      "test.yaml:2:17 vm.layer: the alias *v is inside the value &v marks",
    ]);
  });

  it("refuse merge keys of anything but mappings", () => {
    const message = "<< (merge) takes a mapping, an alias of one (*name), or a list of those";
    expect(problemsOf("name: a\nvm:\n  <<: 5\n")).toEqual([`test.yaml:3:7 vm: ${message}`]);
    expect(one("name: a\nvm: { <<: [5] }\n")).toBe(`test.yaml:2:11 vm: ${message}`);
    expect(one("name: a\nvm: { <<: [{ memory: 1G }, *s] }\ns: &s x\n")).toBe(
      `test.yaml:2:28 vm["<<"][1]: the alias *s has no anchor &s before it`,
    );
    expect(one("name: a\nimage: &s tiny\nvm: { <<: *s }\n")).toBe(`test.yaml:3:11 vm: ${message}`);
    expect(one("name: a\nimage: &s tiny\nvm: { <<: [*s] }\n")).toBe(
      `test.yaml:3:11 vm: ${message}`,
    );
  });

  it("keep merges of mappings, the keys given beside them winning", () => {
    const fleet = fleetOf(
      "name: a\nvm: &d { memory: 1G, vcpus: 2 }\nvms:\n  - { name: x, <<: [*d, { image: other }], vcpus: 4 }\n",
    );
    expect(fleet.vms[0]).toMatchObject({ memoryMiB: 1024, vcpus: 4, image: "other" });
  });

  it("point at a merged setting where it is written", () => {
    expect(one("name: a\nvm: &d { vcpus: 0 }\nvms:\n  - { name: x, <<: *d }\n")).toBe(
      "test.yaml:2:17 vm.vcpus: must be at least 1",
    );
  });
});

describe("YAML tags and directives", () => {
  it.each([
    ["!custom", "name: a\nvm: !custom\n  memory: 1G\n", "2:5 vm"],
    ["!!omap", "name: a\nvm: !!omap\n  - memory: 1G\n", "2:5 vm"],
    ["!!timestamp", "name: !!timestamp 2001-12-14\n", "1:7 name"],
    ["!!binary", "name: a\nvm: { memory: !!binary aGVsbG8= }\n", "2:15 vm.memory"],
    ["!!set", "name: a\nvm: !!set { memory }\n", "2:5 vm"],
    ["!!pairs", "name: a\nvms: !!pairs [{ name: x }]\n", "2:6 vms"],
    ["!!str", "name: !!str lab\n", "1:7 name"],
    ["!!int", "name: a\ncount: !!int 3\n", "2:8 count"],
    ["!", "name: ! lab\n", "1:7 name"],
    ["!<tag:yaml.org,2002:str>", "name: !<tag:yaml.org,2002:str> lab\n", "1:7 name"],
  ])("refuse %s with its position", (tag, text, where) => {
    expect(problemsOf(text)).toEqual([
      `test.yaml:${where}: the tag ${tag} is not allowed: a fleet file holds only text, numbers, true/false, lists and mappings`,
    ]);
  });

  it("refuse directives, which would switch to YAML 1.1's dates, yes/no and sexagesimals", () => {
    expect(problemsOf("%YAML 1.1\n---\nname: 2001-12-14\n")).toEqual([
      "test.yaml:1:1 (file): a fleet file has no use for YAML directives such as %YAML 1.1; remove it",
    ]);
    expect(one("%TAG !e! tag:example.com,2000:\n---\nname: a\n")).toContain(
      "no use for YAML directives",
    );
  });
});

describe("other YAML that is no fleet file", () => {
  it("refuse keys that are not text, without a warning from the yaml library", () => {
    const warnings: string[] = [];
    const record = (warning: Error) => warnings.push(warning.message);
    process.on("warning", record);
    try {
      expect(problemsOf("name: a\n? [a]\n: 1\n")).toEqual([
        "test.yaml:2:3 (file): a key must be text, like memory:, not a list",
      ]);
      expect(one("name: a\nvm: { { a: 1 }: 2 }\n")).toBe(
        "test.yaml:2:7 vm: a key must be text, like memory:, not a mapping",
      );
      expect(one("name: a\n&k kk: 1\n*k : 2\n")).toBe(
        "test.yaml:3:1 (file): a key must be text, like memory:, not an alias",
      );
    } finally {
      process.off("warning", record);
    }
    expect(warnings).toEqual([]);
  });

  it("refuse numbers no setting can hold", () => {
    expect(one("name: a\ncount: 1e400\n")).toBe(
      "test.yaml:2:8 count: 1e400 is not a number shoal can use (too large, infinite or not a number)",
    );
    expect(one("name: a\ncount: .nan\n")).toContain("count: .nan is not a number shoal can use");
    expect(one("name: a\ncount: -.inf\n")).toContain("count: -.inf is not a number shoal can use");
    expect(one("name: a\ncount: 99999999999999999999\n")).toBe(
      "test.yaml:2:8 count: 99999999999999999999 is not a number shoal can use (too large, infinite or not a number)",
    );
  });

  it("refuse nesting deeper than a fleet file needs, before the parser's stack runs out", () => {
    for (const text of [
      `name: a\nx: ${"[".repeat(100)}${"]".repeat(100)}\n`,
      `name: a\nx:\n  ${"- ".repeat(100)}x\n`,
      `name: a\nx: ${"[".repeat(500_000)}\n`,
    ]) {
      expect(one(text)).toMatch(
        /^test\.yaml:\d+:\d+ \(file\): nests lists and mappings more than 64 levels deep; a fleet file needs a few$/,
      );
    }
  });

  it("refuse a file of more YAML tokens than a fleet file has", () => {
    expect(one(`name: a\n${"]".repeat(300_000)}`)).toBe(
      "test.yaml:2:249993 (file): the file has more than 250000 YAML tokens; a fleet file has far fewer",
    );
  });

  it("refuse more anchors and aliases than a fleet file needs, before the library resolves them one scan each", () => {
    const aliases = Array(3000).fill("*a").join(", ");
    const took = cpuMilliseconds(() => {
      expect(one(`name: a\nx: [&a 1, ${aliases}]\n`)).toBe(
        "test.yaml:2:8199 (file): the file has more than 2048 anchors and aliases (&name, *name); a fleet file needs a few",
      );
    });
    expect(took).toBeLessThan(2000);
    const perVm = Array.from({ length: 1023 }, (_, i) => `  - { name: v${i}, <<: *d }`);
    const fleet = fleetOf(`name: a\nvm: &d { memory: 256M }\nvms:\n${perVm.join("\n")}\n`);
    expect(fleet.vms).toHaveLength(1023);
  });

  it("report many unknown keys in time linear in the file", () => {
    const keys = Array.from({ length: 34_000 }, (_, i) => `k${i}: 1`).join("\n");
    let problems: string[] = [];
    const took = cpuMilliseconds(() => {
      problems = problemsOf(`name: a\n${keys}\n`);
    });
    expect(problems[0]).toBe(
      "test.yaml:2:1 k0: unknown key; expected one of name, backend, image, count, vm, vms, network, groups, impairments, ssh, hosts, placement",
    );
    expect(problems.at(-1)).toBe("test.yaml:52:1 (file): and 33950 more problems");
    expect(took).toBeLessThan(4000);
  });

  it("refuse a second document", () => {
    expect(problemsOf("name: a\n---\nname: b\n")).toEqual([
      "test.yaml:2:1 (file): holds a second YAML document (after ---); a fleet file is one document",
    ]);
  });

  it("list at most 50 problems, then count the rest", () => {
    const problems = problemsOf(
      `name: a\nvm:\n  kernel_args: [${Array(80).fill("'a b'").join(", ")}]\n`,
    );
    expect(problems).toHaveLength(51);
    expect(problems[50]).toMatch(/^test\.yaml:3:\d+ \(file\): and 30 more problems$/);
  });
});

describe("errors echo at most a short, escaped excerpt of the file", () => {
  // Lines as in /etc/shadow (the hashes are made up).
  const hash = "$y$j9T$7MfGOSkDUcYvTqgvJvE0B/$1LT7vGqWqbVHP0i2nFxWd6d0E8Y3DOPeaGU/ICKm/x0";
  const shadow = `root:${hash}:19700:0:99999:7:::\ndaemon:*:19700:0:99999:7:::\nalice:$6$saltsalt$${"a".repeat(86)}:19700:0:99999:7:::\n`;

  it("print no password hash for a shadow file", () => {
    const problems = problemsOf(shadow);
    expect(problems).toEqual([
      "test.yaml:1:1 (file): not a fleet file: none of its keys is a fleet setting (name, backend, image, count, vm, vms, network, groups, impairments, ssh, hosts, placement)",
    ]);
  });

  it("print at most 40 characters of each line of a shadow file that also has a fleet key", () => {
    const output = problemsOf(`name: lab\n${shadow}`).join("\n");
    expect(output).toContain('["root:$y$j9T$7MfGOSkDUcYvTqgvJvE0B/$1LT7v…"]: unknown key');
    expect(output).not.toContain(hash);
    expect(output).not.toContain("a".repeat(41));
    for (const line of output.split("\n")) expect(line.length).toBeLessThan(200);
  });

  it("print none of the real /etc/shadow's hashes", async () => {
    const text = await readFile("/etc/shadow", "utf8");
    const secrets = text
      .split("\n")
      .map((line) => line.split(":")[1] ?? "")
      .filter((field) => field.length > 2);
    const output = problemsOf(text).join("\n");
    for (const secret of secrets) expect(output).not.toContain(secret);
    expect(output.split("\n")).toHaveLength(1);
  });

  it("cut long values and keys to 40 characters", () => {
    expect(one(`name: ${"x".repeat(5000)}\n`)).toBe(
      `test.yaml:1:7 name: "${"x".repeat(40)}…" is not a DNS label: 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'`,
    );
    expect(one(`name: a\nvm: { ${"k".repeat(900)}: 1 }\n`)).toBe(
      `test.yaml:2:7 vm["${"k".repeat(40)}…"]: unknown key; expected one of name, image, memory, vcpus, layer, kernel_args`,
    );
    expect(one(`name: a\nnetwork: { subnet: "${"1".repeat(3000)}" }\n`)).toBe(
      `test.yaml:2:20 network.subnet: "${"1".repeat(40)}…" is not an IPv4 subnet in CIDR form like 10.77.0.0/16`,
    );
  });

  it("escape control and format characters, so a file cannot drive the terminal", () => {
    const output = problemsOf(
      'name: "a\\e[2J\\u0007b"\nvm: { "x\\e]0;owned\\u0007\\u202e": 1, name: "\\u009b31m{n}" }\n',
    ).join("\n");
    const unsafe = [...output].filter((char) => {
      const code = char.codePointAt(0) ?? 0;
      return (char !== "\n" && code < 0x20) || (code >= 0x7f && code <= 0x9f) || code === 0x202e;
    });
    expect(unsafe).toEqual([]);
    expect(output).toContain('name: "a\\x1b[2J\\x07b" is not a DNS label');
    expect(output).toContain('vm["x\\x1b]0;owned\\x07\\u202e"]: unknown key');
    expect(output).toContain('gives names like "\\u009b31m1"');
  });
});

describe("cases the fuzz test found on main", () => {
  it("an empty key gets a field and a message, not an empty field", () => {
    expect(problemsOf(": 1\n")).toEqual([
      "test.yaml:1:1 (file): a key must be text, like memory:, not an empty key",
    ]);
    expect(problemsOf('name: a\n"": 1\n')).toEqual([
      'test.yaml:2:1 [""]: unknown key; expected one of name, backend, image, count, vm, vms, network, groups, impairments, ssh, hosts, placement',
    ]);
  });

  it("a NUL byte in the file is shown escaped, in a value or a key", () => {
    expect(problemsOf("\u0000\n")).toEqual([
      "test.yaml:1:1 (file): must be a mapping of fleet settings (name:, count:, vm:, ...), not text",
    ]);
    expect(problemsOf("name: a\n\u0000 ame: 1\n")).toEqual([
      'test.yaml:2:1 ["\\x00 ame"]: unknown key; expected one of name, backend, image, count, vm, vms, network, groups, impairments, ssh, hosts, placement',
    ]);
  });
});

describe("the fleet file itself", () => {
  const tempDir = useTempDirs();

  const refusal = async (path: string) => {
    try {
      await loadFleetFile(path);
    } catch (error) {
      if (error instanceof ShoalError) return { exit: error.exitCode, lines: error.lines() };
      throw error;
    }
    throw new Error(`${path} was accepted`);
  };

  it("a file that is not UTF-8 gets the position of its first bad byte", async () => {
    const dir = await tempDir();
    const file = join(dir, "latin1.yaml");
    await writeFile(
      file,
      Buffer.concat([
        Buffer.from("name: a\nvm: { image: caf"),
        Buffer.from([0xe9, 0x20, 0x7d, 0x0a]),
      ]),
    );
    expect(await refusal(file)).toEqual({
      exit: 2,
      lines: [`${file}:2:17 (file): byte 25 (0xe9) is not UTF-8; a fleet file is UTF-8 text`],
    });
    const bom = join(dir, "bom.yaml");
    await writeFile(bom, Buffer.from([0xef, 0xbb, 0xbf, ...Buffer.from("name: a\n"), 0xff]));
    expect((await refusal(bom)).lines).toEqual([
      `${bom}:2:1 (file): byte 12 (0xff) is not UTF-8; a fleet file is UTF-8 text`,
    ]);
    const cut = join(dir, "cut.yaml");
    await writeFile(cut, Buffer.concat([Buffer.from("name: a\n# é"), Buffer.from([0xe2, 0x82])]));
    expect((await refusal(cut)).lines).toEqual([
      `${cut}:2:4 (file): byte 13 (0xe2) is not UTF-8; a fleet file is UTF-8 text`,
    ]);
  });

  it("a FIFO is refused at once instead of waiting for a writer", async () => {
    const fifo = join(await tempDir(), "fleet.yaml");
    execFileSync("mkfifo", [fifo]);
    expect(await refusal(fifo)).toEqual({
      exit: 2,
      lines: [`${fifo} is a FIFO, not a fleet file; pass -f FILE, a regular file of YAML text`],
    });
  }, 5000);

  it("a device is refused without reading it", async () => {
    expect(await refusal("/dev/zero")).toEqual({
      exit: 2,
      lines: ["/dev/zero is a device, not a fleet file; pass -f FILE, a regular file of YAML text"],
    });
  }, 5000);

  it("a directory is refused", async () => {
    const dir = await tempDir();
    expect((await refusal(dir)).lines).toEqual([
      `${dir} is a directory, not a fleet file; pass -f FILE, a regular file of YAML text`,
    ]);
  });

  it("a file over 1 MiB is refused, one of 1 MiB read", async () => {
    const dir = await tempDir();
    const big = join(dir, "big.yaml");
    const padding = (size: number) => `name: a\n${"#".repeat(size - 9)}\n`;
    await writeFile(big, padding(1024 * 1024 + 1));
    expect(await refusal(big)).toEqual({
      exit: 2,
      lines: [
        `${big} is larger than 1 MiB, too large for a fleet file; pass -f FILE, a fleet file of YAML text`,
      ],
    });
    const limit = join(dir, "limit.yaml");
    await writeFile(limit, padding(1024 * 1024));
    expect((await loadFleetFile(limit)).name).toBe("a");
  });
});

describe("bounds that create and up enforce, and the host's limits", () => {
  it("refuse more VMs than the fleet's network takes, as create does, at count or vms", () => {
    const split = "split the fleet into several fleets (each gets its own network)";
    expect(problemsOf("name: a\ncount: 24001\n")).toEqual([
      `test.yaml:2:8 count: 24001 VMs are too many: a fleet's own network takes at most 24000 VMs (24 bridges of 1000); ${split}`,
    ]);
    expect(fleetOf("name: a\ncount: 4000\n").vms).toHaveLength(4000);
    const bridge = "network: { bridge: br0, managed: false }";
    expect(fleetOf(`name: a\ncount: 1023\n${bridge}\n`).vms).toHaveLength(1023);
    expect(one(`name: a\ncount: 1023\n${bridge}\nvms: [{ name: x, ip: 10.77.255.1 }]\n`)).toBe(
      `test.yaml:4:6 vms: 1024 VMs are too many: a host bridge takes at most 1023 VMs; ${split}`,
    );
    const listed = Array.from({ length: 1024 }, (_, i) => `  - name: v${i}`).join("\n");
    expect(one(`name: a\n${bridge}\nvms:\n${listed}\n`)).toBe(
      `test.yaml:4:3 vms: 1024 VMs are too many: a host bridge takes at most 1023 VMs; ${split}`,
    );
  });

  it("bound memory, vCPUs and layer sizes", () => {
    expect(one("name: a\nvm: { memory: 8T }\n")).toBe(
      "test.yaml:2:15 vm.memory: 8T is too large for memory; the maximum is 1T",
    );
    expect(fleetOf("name: a\nvm: { memory: 1T }\n").vms[0]?.memoryMiB).toBe(1024 * 1024);
    expect(one("name: a\nvm: { vcpus: 289 }\n")).toBe(
      "test.yaml:2:14 vm.vcpus: must be at most 288, what QEMU's q35 machine takes",
    );
    expect(fleetOf("name: a\nvm: { vcpus: 288 }\n").vms[0]?.vcpus).toBe(288);
    expect(one("name: a\nvm: { layer: { size: 16T } }\n")).toBe(
      "test.yaml:2:22 vm.layer.size: 16T is too large for a layer; the maximum is 8T",
    );
    expect(one("name: a\nvm: { layer: { type: tmpfs, size: 9T } }\n")).toContain(
      "9T is too large for a layer",
    );
    expect(fleetOf("name: a\nvm: { layer: { size: 8T } }\n").vms[0]?.layer.sizeBytes).toBe(
      8 * 1024 ** 4,
    );
  });

  it.each([
    ["127.0.0.0/8", "127.0.0.0/8 is in 127.0.0.0/8, the loopback range"],
    ["127.1.0.0/16", "127.1.0.0/16 is in 127.0.0.0/8, the loopback range"],
    ["224.0.0.0/4", "224.0.0.0/4 is in 224.0.0.0/4, the multicast range"],
    ["239.1.0.0/24", "239.1.0.0/24 is in 224.0.0.0/4, the multicast range"],
    [
      "0.0.0.0/0",
      "0.0.0.0/0 holds 0.0.0.0/8, the range of this network (RFC 1122), which is no host's",
    ],
    [
      "0.0.0.0/8",
      "0.0.0.0/8 is in 0.0.0.0/8, the range of this network (RFC 1122), which is no host's",
    ],
    [
      "240.0.0.0/4",
      "240.0.0.0/4 is in 240.0.0.0/4, the reserved range, with the broadcast address 255.255.255.255",
    ],
    [
      "255.255.255.252/30",
      "255.255.255.252/30 is in 240.0.0.0/4, the reserved range, with the broadcast address 255.255.255.255",
    ],
    [
      "169.254.0.0/16",
      "169.254.0.0/16 is in 169.254.0.0/16, the link-local range, which shoal's NAT links and cloud metadata use",
    ],
    [
      "169.254.169.0/24",
      "169.254.169.0/24 is in 169.254.0.0/16, the link-local range, which shoal's NAT links and cloud metadata use",
    ],
    [
      "128.0.0.0/1",
      "128.0.0.0/1 holds 169.254.0.0/16, the link-local range, which shoal's NAT links and cloud metadata use",
    ],
  ])("refuse the subnet %s", (subnet, message) => {
    const expected = `${message}; use a private range such as 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16`;
    expect(one(`name: a\nnetwork: { subnet: ${subnet} }\n`)).toBe(
      `test.yaml:2:20 network.subnet: ${expected}`,
    );
    expect(one(`name: a\nnetwork: { subnet: ${subnet}, nat: true }\n`)).toBe(
      `test.yaml:2:20 network.subnet: ${expected}`,
    );
  });

  it.each([
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "198.18.0.0/15",
    "192.0.2.0/24",
    "1.0.0.0/8",
    "126.255.255.252/30",
    "128.0.0.0/30",
    "223.255.255.0/24",
  ])("keep the unicast subnet %s", (subnet) => {
    expect(
      fleetOf(`name: a\ncount: 1\nnetwork: { subnet: ${subnet}, nat: true }\n`).subnet.cidr,
    ).toBe(subnet);
  });
});

describe("kernel parameters that would defeat the union root or the console", () => {
  it.each([
    ["systemd.machine-id=0123456789abcdef0123456789abcdef", "systemd.machine-id is set by shoal"],
    ["systemd.machine_id=0", "systemd.machine_id is set by shoal"],
    ["systemd.hostname=x", "systemd.hostname is set by shoal"],
    ["shoal.layer=tmpfs", "shoal.layer is set by shoal"],
    ["shoal.base-id=0", "shoal.base-id is set by shoal"],
    ["root=/dev/sda", "root is set by shoal"],
    ["rootfstype=ext4", "rootfstype is set by shoal"],
    ["rdinit=/bin/sh", "rdinit is set by shoal"],
    ["console=tty0", "console is set by shoal"],
    ["ro", "ro is set by shoal"],
    ["rw", "rw would have the image's initramfs mount the shared base writable"],
    ["rootflags=rw", "rootflags would change how the image's initramfs mounts the shared base"],
    ["init=/bin/sh", "init would run another program instead of the image's init"],
    ["initrd=/boot/other.img", "initrd would boot another initramfs"],
    ["noinitrd", "noinitrd would skip the initramfs that builds the union root"],
    ["nfsroot=10.0.0.1:/root", "nfsroot would take the root from NFS"],
    ["boot=nfs", "boot would have the image's initramfs mount another root"],
    ["break=premount", "break would stop the boot at a shell in the initramfs"],
    ["break", "break would stop the boot at a shell in the initramfs"],
    ["systemd.volatile=overlay", "systemd.volatile would put the root on tmpfs"],
  ])("refuse %s", (param, message) => {
    expect(checkKernelParam(param)).toMatch(new RegExp(`^${message.replaceAll(".", "\\.")}`));
    expect(one(`name: a\nvm: { kernel_args: [${param}] }\n`)).toContain(
      `test.yaml:2:21 vm.kernel_args[0]: ${message}`,
    );
  });

  it("keep the parameters a user may want", () => {
    for (const param of [
      "quiet",
      "loglevel=7",
      "earlycon=uart8250,io,0x3f8",
      "systemd.unit=multi-user.target",
      "systemd.log_level=debug",
      "root_delay_not_a_param=1",
      "shoal_layer=x",
    ]) {
      expect(checkKernelParam(param), param).toBeUndefined();
    }
  });
});

describe("what the errors are", () => {
  it("SpecError for every refusal of the text, so the exit status is 2", () => {
    for (const text of ["name: a\nvm: *x\n", "name: !!str a\n", "name: a\ncount: 1e400\n"]) {
      expect(() => parseFleetText(text, "f.yaml")).toThrow(SpecError);
    }
  });
});

import { describe, expect, it } from "vitest";
import { fleetOf, problemsOf } from "../helpers/fleet.js";

const KEY =
  "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGXKyw6Dw0aLSWTKhZ9mSD3wrzSUWaGSiGBOSkbp5XW8 you@host";

const EXAMPLE = `name: lab
backend: qemu
image: tiny
count: 250
vm:
  name: "agent-{n:03}"
  memory: 128M
  vcpus: 1
  layer: { type: disk, size: 256M }
  kernel_args: []
network:
  subnet: 10.77.0.0/16
ssh:
  authorized_keys: ["${KEY}"]
`;

describe("the fleet file from the issue", () => {
  it("gives 250 VMs named from the pattern with the fleet's settings", () => {
    const fleet = fleetOf(EXAMPLE);
    expect(fleet.name).toBe("lab");
    expect(fleet.backend).toBe("qemu");
    expect(fleet.vms).toHaveLength(250);
    expect(fleet.vms[0]).toMatchObject({
      name: "agent-001",
      hostname: "agent-001",
      index: 1,
      ip: "10.77.0.2",
      image: "tiny",
      memoryMiB: 128,
      vcpus: 1,
      layer: { type: "disk", sizeBytes: 256 * 1024 ** 2 },
      kernelArgs: [],
    });
    expect(fleet.vms[249]?.name).toBe("agent-250");
    expect(fleet.authorizedKeys).toEqual([KEY]);
  });
});

describe("built-in defaults", () => {
  it("make a complete fleet of three small VMs from a name alone", () => {
    const fleet = fleetOf("name: demo\n");
    expect(fleet.backend).toBe("qemu");
    expect(fleet.subnet.cidr).toBe("10.77.0.0/16");
    expect(fleet.vms.map((vm) => [vm.name, vm.ip, vm.image, vm.memoryMiB, vm.vcpus])).toEqual([
      ["vm-1", "10.77.0.2", "tiny", 128, 1],
      ["vm-2", "10.77.0.3", "tiny", 128, 1],
      ["vm-3", "10.77.0.4", "tiny", 128, 1],
    ]);
    expect(fleet.vms[0]?.layer).toEqual({
      type: "disk",
      sizeBytes: 1024 ** 3,
      onBaseChange: "warn",
      fallback: "none",
    });
  });

  it("give a tmpfs layer its own default size", () => {
    expect(fleetOf("name: demo\nvm: { layer: { type: tmpfs } }\n").vms[0]?.layer).toMatchObject({
      type: "tmpfs",
      sizeBytes: 64 * 1024 ** 2,
    });
  });

  it("use the first host address as gateway unless one is given", () => {
    expect(fleetOf("name: a\nnetwork: { subnet: 10.1.0.0/24 }\n").vms[0]?.ip).toBe("10.1.0.2");
    const withGateway = fleetOf(
      "name: a\ncount: 2\nnetwork: { subnet: 10.1.0.0/24, gateway: 10.1.0.2 }\n",
    );
    expect(withGateway.vms.map((vm) => vm.ip)).toEqual(["10.1.0.1", "10.1.0.3"]);
  });
});

describe("the image", () => {
  it("is taken from a VM's entry, else from vm:, else from the fleet", () => {
    const fleet = fleetOf(
      "name: lab\ncount: 2\nimage: fleet-wide\nvm: { image: every-vm }\nvms: [{ name: vm-2, image: own }]\n",
    );
    expect(fleet.vms.map((vm) => vm.image)).toEqual(["every-vm", "own"]);
    expect(fleetOf("name: lab\nimage: fleet-wide\n").vms[0]?.image).toBe("fleet-wide");
  });
});

describe("per-VM overrides", () => {
  const fleet = fleetOf(`name: lab
count: 3
image: base
vm:
  name: "agent-{n}"
  memory: 256M
  layer: { type: disk, size: 2G, on_base_change: reset }
  kernel_args: [quiet]
vms:
  - name: agent-2
    memory: 1G
    vcpus: 4
    image: debian
    layer: { size: 8G, fallback: tmpfs }
    kernel_args: [loglevel=7]
  - name: agent-3
    layer: { type: tmpfs }
`);
  const [one, two, three] = fleet.vms;

  it("leave VMs without an entry on the fleet's settings", () => {
    expect(one).toMatchObject({ image: "base", memoryMiB: 256, vcpus: 1, kernelArgs: ["quiet"] });
    expect(one?.layer).toEqual({
      type: "disk",
      sizeBytes: 2 * 1024 ** 3,
      onBaseChange: "reset",
      fallback: "none",
    });
  });

  it("replace each value a VM sets, and merge its layer key by key", () => {
    expect(two).toMatchObject({
      image: "debian",
      memoryMiB: 1024,
      vcpus: 4,
      kernelArgs: ["loglevel=7"],
    });
    expect(two?.layer).toEqual({
      type: "disk",
      sizeBytes: 8 * 1024 ** 3,
      onBaseChange: "reset",
      fallback: "tmpfs",
    });
  });

  it("give a layer of another type that type's default size, not the fleet's disk size", () => {
    expect(three?.layer).toEqual({
      type: "tmpfs",
      sizeBytes: 64 * 1024 ** 2,
      onBaseChange: "reset",
      fallback: "none",
    });
  });

  it("do not change anyone's identity", () => {
    const plain = fleetOf('name: lab\ncount: 3\nvm: { name: "agent-{n}" }\n');
    const identity = (vm: (typeof fleet.vms)[number]) => [
      vm.name,
      vm.mac,
      vm.ip,
      vm.machineId,
      vm.index,
    ];
    expect(fleet.vms.map(identity)).toEqual(plain.vms.map(identity));
  });
});

describe("malformed fleet files get one line each with position and field", () => {
  const cases: [string, string, string[]][] = [
    [
      "an unknown key",
      "name: lab\ncolor: blue\n",
      [
        "test.yaml:2:1 color: unknown key; expected one of name, backend, image, count, vm, vms, network, groups, impairments, ssh, hosts, placement",
      ],
    ],
    [
      "an unknown nested key",
      "name: lab\nvm:\n  memroy: 1G\n",
      [
        "test.yaml:3:3 vm.memroy: unknown key; expected one of name, image, memory, vcpus, layer, kernel_args",
      ],
    ],
    [
      "a bad CIDR",
      "name: lab\nnetwork:\n  subnet: 10.77.0.0/33\n",
      [
        'test.yaml:3:11 network.subnet: "10.77.0.0/33" is not an IPv4 subnet in CIDR form like 10.77.0.0/16',
      ],
    ],
    [
      "a CIDR with host bits",
      "name: lab\nnetwork: { subnet: 10.77.1.0/16 }\n",
      ["test.yaml:2:20 network.subnet: 10.77.1.0/16 has host bits set; the subnet is 10.77.0.0/16"],
    ],
    [
      "a count larger than the subnet",
      "name: lab\ncount: 254\nnetwork: { subnet: 10.0.0.0/24 }\n",
      [
        "test.yaml:2:8 count: 254 VMs do not fit in network.subnet 10.0.0.0/24, which has 253 VM addresses (the gateway excluded); use a larger subnet",
      ],
    ],
    [
      "duplicate VM names",
      "name: lab\nvms:\n  - name: web\n  - name: db\n  - name: web\n",
      ['test.yaml:5:11 vms[2].name: "web" is listed twice (also vms[0])'],
    ],
    [
      "a name with /",
      "name: lab\nvms: [{ name: a/b }]\n",
      [
        `test.yaml:2:15 vms[0].name: "a/b" is not a DNS label: 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'`,
      ],
    ],
    [
      "a name with ..",
      "name: ..\n",
      [
        `test.yaml:1:7 name: ".." is not a DNS label: 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'`,
      ],
    ],
    [
      "a name with a space",
      'name: lab\nvm: { name: "agent {n}" }\n',
      [
        `test.yaml:2:13 vm.name: gives names like "agent 1", which is not a DNS label: 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'`,
      ],
    ],
    [
      "an uppercase name",
      "name: Lab\n",
      [
        `test.yaml:1:7 name: "Lab" is not a DNS label: 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'`,
      ],
    ],
    [
      "memory 12XB",
      "name: lab\nvm:\n  memory: 12XB\n",
      [
        'test.yaml:3:11 vm.memory: "12XB" is not a size; use a number with a binary unit K, M, G or T, like 128M or 1.5G',
      ],
    ],
    [
      "a kernel argument with a newline",
      'name: lab\nvm:\n  kernel_args: ["quiet\\ninit=/bin/sh"]\n',
      [
        "test.yaml:3:17 vm.kernel_args[0]: must be one kernel parameter, key or key=value, in printable ASCII without spaces, quotes or backslashes",
      ],
    ],
    [
      "a kernel argument with a quote",
      "name: lab\nvm:\n  kernel_args: ['a=\"b c\"']\n",
      [
        "test.yaml:3:17 vm.kernel_args[0]: must be one kernel parameter, key or key=value, in printable ASCII without spaces, quotes or backslashes",
      ],
    ],
    [
      "an empty file",
      "",
      [
        "test.yaml:1:1 (file): the file is empty; a fleet file needs at least a name, like `name: lab`",
      ],
    ],
    [
      "a file of comments only",
      "# nothing yet\n",
      [
        "test.yaml:1:1 (file): the file is empty; a fleet file needs at least a name, like `name: lab`",
      ],
    ],
    [
      "a file that is not YAML",
      "name: lab\nvm: { memory: 1G\ncount: 3\n",
      [
        "test.yaml:3:1 (file): not valid YAML: Flow map in block collection must be sufficiently indented and end with a }",
      ],
    ],
    [
      "a list where a mapping is expected",
      "name: lab\nvm:\n  - memory: 1G\n",
      ["test.yaml:3:3 vm: must be a mapping (key: value), not a list"],
    ],
    [
      "a list as the whole file",
      "- name: lab\n",
      [
        "test.yaml:1:1 (file): must be a mapping of fleet settings (name:, count:, vm:, ...), not a list",
      ],
    ],
  ];
  it.each(cases)("%s", (_what, text, expected) => {
    expect(problemsOf(text)).toEqual(expected);
  });
});

describe("validation reports every problem at once", () => {
  it("lists schema and cross-field problems together, in file order", () => {
    const problems = problemsOf(`name: Lab
colour: red
vm:
  memory: 64X
vms:
  - name: a
    extra: 1
  - name: a
`);
    expect(problems).toEqual([
      `test.yaml:1:7 name: "Lab" is not a DNS label: 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'`,
      "test.yaml:2:1 colour: unknown key; expected one of name, backend, image, count, vm, vms, network, groups, impairments, ssh, hosts, placement",
      'test.yaml:4:11 vm.memory: "64X" is not a size; use a number with a binary unit K, M, G or T, like 128M or 1.5G',
      "test.yaml:7:5 vms[0].extra: unknown key; expected one of name, ip, mac, image, memory, vcpus, layer, kernel_args",
      'test.yaml:8:11 vms[1].name: "a" is listed twice (also vms[0])',
    ]);
  });
});

describe("field rules", () => {
  const one = (text: string) => problemsOf(text)[0];

  it("refuse a bare number as a size, since its unit would be a guess", () => {
    expect(one("name: a\nvm: { memory: 128 }\n")).toBe(
      "test.yaml:2:15 vm.memory: must be text, not number 128",
    );
  });

  it("refuse memory below 32M and sizes that are not whole MiB", () => {
    expect(one("name: a\nvm: { memory: 16M }\n")).toContain(
      "16M is too small for memory; the minimum is 32M",
    );
    expect(one("name: a\nvm: { memory: 100.5M }\n")).toContain(
      "100.5M is not a whole number of MiB",
    );
  });

  it("accept binary units in several spellings", () => {
    for (const [text, mib] of [
      ["1G", 1024],
      ["1.5g", 1536],
      ["512MiB", 512],
      ["2048M", 2048],
      ["1T", 1024 * 1024],
    ] as const) {
      expect(fleetOf(`name: a\nvm: { memory: ${text} }\n`).vms[0]?.memoryMiB).toBe(mib);
    }
  });

  it("explain a subnet too small for any VM", () => {
    expect(one("name: a\nnetwork: { subnet: 10.0.0.0/31 }\n")).toBe(
      "test.yaml:2:20 network.subnet: /31 leaves no address for VMs; use /30 or larger",
    );
  });

  it("check vcpus, count and backend", () => {
    expect(one("name: a\nvm: { vcpus: 0 }\n")).toBe("test.yaml:2:14 vm.vcpus: must be at least 1");
    expect(one("name: a\nvm: { vcpus: 1.5 }\n")).toBe(
      "test.yaml:2:14 vm.vcpus: must be a whole number, not number 1.5",
    );
    expect(one("name: a\ncount: -1\n")).toBe("test.yaml:2:8 count: must be at least 0");
    expect(one("name: a\nbackend: kvm\n")).toBe(
      'test.yaml:2:10 backend: text "kvm" is not one of: qemu, xl, libvirt',
    );
  });

  it("require a fleet name", () => {
    expect(one("count: 2\n")).toBe("test.yaml:1:1 name: is required");
  });

  it("refuse kernel parameters that shoal sets or that end the kernel's part", () => {
    expect(one("name: a\nvm: { kernel_args: [root=/dev/sda] }\n")).toBe(
      "test.yaml:2:21 vm.kernel_args[0]: root is set by shoal and cannot be given in kernel_args",
    );
    expect(one("name: a\nvm: { kernel_args: [shoal.layer=tmpfs] }\n")).toContain(
      "shoal.layer is set by shoal",
    );
    expect(one("name: a\nvm: { kernel_args: [systemd.machine_id=0] }\n")).toContain(
      "systemd.machine_id is set by shoal",
    );
    expect(one('name: a\nvm: { kernel_args: ["--"] }\n')).toContain('must not be "--"');
  });

  it("accept ordinary kernel parameters, with commas and = in values", () => {
    const fleet = fleetOf(
      "name: a\nvm: { kernel_args: [quiet, 'earlycon=uart8250,io,0x3f8', 'systemd.setenv=A=b,c'] }\n",
    );
    expect(fleet.vms[0]?.kernelArgs).toEqual([
      "quiet",
      "earlycon=uart8250,io,0x3f8",
      "systemd.setenv=A=b,c",
    ]);
  });

  it("refuse a kernel command line longer than Linux takes", () => {
    // Short enough alone; shoal's own parameters make the line too long.
    const args = Array.from({ length: 118 }, (_, i) => `param${i}=xxxxxxxx`);
    expect(one(`name: a\nvm: { kernel_args: [${args.join(", ")}] }\n`)).toMatch(
      /^test\.yaml:2:20 vm\.kernel_args: makes vm-1's kernel command line \d+ bytes long; Linux takes at most 2047$/,
    );
  });

  it("check name patterns", () => {
    expect(one('name: a\nvm: { name: "agent" }\n')).toBe(
      'test.yaml:2:13 vm.name: must contain the counter exactly once, as {n} or {n:03} (zero-padded), like "agent-{n:03}"',
    );
    expect(one('name: a\nvm: { name: "{n}-{n}" }\n')).toContain(
      "must contain the counter exactly once",
    );
    expect(one(`name: a\ncount: 10\nvm: { name: "${"x".repeat(62)}{n}" }\n`)).toContain(
      `gives "${"x".repeat(62)}10" for VM 10, which is not a DNS label`,
    );
  });

  it("check authorized keys, down to the key inside the base64", () => {
    expect(fleetOf(`name: a\nssh: { authorized_keys: ["${KEY}"] }\n`).authorizedKeys).toEqual([
      KEY,
    ]);
    expect(
      one('name: a\nssh: { authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA you"] }\n'),
    ).toContain("does not hold a whole ssh-ed25519 key");
    expect(one(`name: a\nssh: { authorized_keys: ['command="sh" ${KEY}'] }\n`)).toContain(
      "must be one public key line",
    );
    expect(one(`name: a\nssh: { authorized_keys: ["${KEY}\\nssh-rsa AAAA"] }\n`)).toContain(
      "must be one public key line",
    );
    expect(one('name: a\nssh: { authorized_keys: ["ssh-foo AAAA x"] }\n')).toContain(
      "key type ssh-foo is not one of",
    );
  });

  it("check fixed addresses", () => {
    const base = "name: a\nnetwork: { subnet: 10.0.0.0/24 }\nvms:\n";
    expect(one(`${base}  - { name: x, ip: 10.0.1.5 }\n`)).toBe(
      "test.yaml:4:20 vms[0].ip: 10.0.1.5 is outside network.subnet 10.0.0.0/24",
    );
    expect(one(`${base}  - { name: x, ip: 10.0.0.1 }\n`)).toContain(
      "10.0.0.1 is the subnet's gateway address",
    );
    expect(one(`${base}  - { name: x, ip: 10.0.0.0 }\n`)).toContain("the subnet's network address");
    expect(one(`${base}  - { name: x, ip: 10.0.0.255 }\n`)).toContain(
      "the subnet's broadcast address",
    );
    expect(one(`${base}  - { name: x, ip: 10.0.0.9 }\n  - { name: y, ip: 10.0.0.9 }\n`)).toBe(
      "test.yaml:5:20 vms[1].ip: 10.0.0.9 is already x's address",
    );
    expect(one(`${base}  - { name: x, ip: 10.0.0.300 }\n`)).toContain(
      '"10.0.0.300" is not an IPv4 address',
    );
  });

  it("check the gateway", () => {
    expect(one("name: a\nnetwork: { subnet: 10.0.0.0/24, gateway: 10.0.1.1 }\n")).toBe(
      "test.yaml:2:42 network.gateway: 10.0.1.1 is outside network.subnet 10.0.0.0/24",
    );
    expect(one("name: a\nnetwork: { subnet: 10.0.0.0/24, gateway: 10.0.0.255 }\n")).toContain(
      "is the subnet's broadcast address",
    );
  });

  it("put VMs on the fleet's own network unless a host bridge is given, with managed: false", () => {
    expect(fleetOf("name: a\n").network).toEqual({ kind: "isolated", nat: false });
    expect(fleetOf("name: a\nnetwork: { nat: true }\n").network).toEqual({
      kind: "isolated",
      nat: true,
    });
    expect(fleetOf("name: a\nnetwork: { bridge: xenbr0, managed: false }\n").network).toEqual({
      kind: "host-bridge",
      bridge: "xenbr0",
    });
    expect(one("name: a\nnetwork: { bridge: br0 }\n")).toContain(
      "bridge: attaches VMs to a bridge shoal does not manage; add managed: false",
    );
    expect(one("name: a\nnetwork: { managed: false }\n")).toContain(
      "managed: false needs the bridge: to attach the VMs to",
    );
    expect(one("name: a\nnetwork: { bridge: br0, managed: false, nat: true }\n")).toContain(
      "nat: is for the fleet's own network",
    );
    expect(one("name: a\nnetwork: { bridge: 'br0; reboot', managed: false }\n")).toContain(
      "is not a network interface name",
    );
  });

  it("check fixed MACs", () => {
    const base = "name: a\nvms:\n";
    expect(one(`${base}  - { name: x, mac: "01:00:5e:00:00:01" }\n`)).toContain(
      "is a multicast address",
    );
    expect(one(`${base}  - { name: x, mac: "52:54:00:zz:00:01" }\n`)).toContain(
      "is not a MAC address",
    );
    expect(
      one(
        `${base}  - { name: x, mac: "52:54:00:00:00:01" }\n  - { name: y, mac: "52:54:00:00:00:01" }\n`,
      ),
    ).toBe("test.yaml:4:21 vms[1].mac: 52:54:00:00:00:01 is already x's MAC");
  });

  it("take count VMs plus extra VMs only when the extras have a fixed address", () => {
    const text = 'name: a\ncount: 2\nvm: { name: "n{n}" }\nvms:\n  - { name: server }\n';
    expect(one(text)).toBe(
      'test.yaml:5:13 vms[0].name: "server" is not one of the 2 VMs that count and vm.name make; give it an ip: to add it beside them, or drop count to list every VM by name',
    );
    const fleet = fleetOf(`${text.slice(0, -3)}, ip: 10.77.0.100 }\n`);
    expect(fleet.vms.map((vm) => [vm.name, vm.ip])).toEqual([
      ["n1", "10.77.0.2"],
      ["n2", "10.77.0.3"],
      ["server", "10.77.0.100"],
    ]);
  });

  it("refuse a fixed address that belongs to a counted VM", () => {
    expect(one("name: a\ncount: 5\nvms:\n  - { name: extra, ip: 10.77.0.4 }\n")).toBe(
      "test.yaml:4:24 vms[0].ip: 10.77.0.4 is already vm-3's address",
    );
  });
});

describe("YAML features", () => {
  it("resolve anchors and merge keys", () => {
    const fleet = fleetOf(`name: a
vm: &defaults { memory: 512M }
vms:
  - { name: x, <<: *defaults, vcpus: 2 }
`);
    expect(fleet.vms[0]).toMatchObject({ name: "x", memoryMiB: 512, vcpus: 2 });
  });

  it("refuse duplicate keys", () => {
    expect(problemsOf("name: a\nname: b\n")).toEqual([
      "test.yaml:2:1 name: is given twice in the same mapping; keep one",
    ]);
  });
});

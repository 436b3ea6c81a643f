import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { stateLayout } from "../../src/state/layout.js";
import { writeFleetRecord } from "../../src/state/store.js";
import { type CliResult, shoal } from "../helpers/cli.js";
import { createdRecord, fleetOf } from "../helpers/fleet.js";
import { useTempDirs } from "../helpers/tmp.js";

const tempDir = useTempDirs();
const packageJson = JSON.parse(
  await readFile(new URL("../../package.json", import.meta.url), "utf8"),
) as { version: string };

async function fleetFile(
  text: string | Buffer,
  name = "fleet.yaml",
): Promise<{ dir: string; path: string; state: string }> {
  const dir = await tempDir();
  const path = join(dir, name);
  await writeFile(path, text);
  return { dir, path, state: join(dir, "state") };
}

function expectOneLineError(result: CliResult, path: string) {
  expect(result.code).toBe(2);
  expect(result.stdout).toBe("");
  const lines = result.stderr.split("\n").filter(Boolean);
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(
    new RegExp(`^${path.replaceAll(/[.*+?^${}()|[\]\\]/g, "\\$&")}:\\d+:\\d+ \\S+: \\S.*$`),
  );
  expect(result.stderr).not.toMatch(/^\s+at /m);
}

describe("malformed fleet files", () => {
  const cases: [string, string | Buffer][] = [
    ["an unknown key", "name: lab\nflavour: large\n"],
    ["a bad CIDR", "name: lab\nnetwork: { subnet: 10.77.0.0/40 }\n"],
    [
      "a count larger than its subnet",
      "name: lab\ncount: 300\nnetwork: { subnet: 10.77.0.0/24 }\n",
    ],
    ["duplicate VM names", "name: lab\nvms: [{ name: a }, { name: a }]\n"],
    ["a name with /", "name: lab\nvms: [{ name: a/b }]\n"],
    ["a name with ..", "name: lab\nvms: [{ name: '..' }]\n"],
    ["a name with a space", "name: lab\nvms: [{ name: 'a b' }]\n"],
    ["an uppercase name", "name: Lab\n"],
    ["memory 12XB", "name: lab\nvm: { memory: 12XB }\n"],
    ["a kernel argument with a newline", 'name: lab\nvm: { kernel_args: ["a\\nb"] }\n'],
    ["a kernel argument with a quote", "name: lab\nvm: { kernel_args: ['a=\"b\"'] }\n"],
    ["an empty file", ""],
    ["a file that is not YAML", "name: lab\n  count: [3\n"],
    ["a binary file", Buffer.from([0x6e, 0x61, 0xff, 0xfe, 0x00, 0x01])],
    ["a YAML list where a mapping is expected", "name: lab\nnetwork: [10.77.0.0/16]\n"],
  ];

  it.each(cases)(
    "%s: one line with its position, exit code 2, no stack trace, for validate and plan",
    async (_what, text) => {
      const { path, state } = await fleetFile(text);
      for (const verb of ["validate", "plan"]) {
        const result = await shoal([verb, "-f", path, "--state-dir", state]);
        if (Buffer.isBuffer(text)) {
          expect(result.code).toBe(2);
          expect(result.stderr).toBe(
            `${path}:1:3 (file): byte 3 (0xff) is not UTF-8; a fleet file is UTF-8 text\n`,
          );
        } else {
          expectOneLineError(result, path);
        }
      }
    },
  );

  it("are reported whole, every problem on its own line", async () => {
    const { path } = await fleetFile("name: Lab\nflavour: x\nvm: { memory: 1X, vcpus: 0 }\n");
    const result = await shoal(["validate", "-f", path]);
    expect(result.code).toBe(2);
    expect(result.stderr.trim().split("\n")).toEqual([
      `${path}:1:7 name: "Lab" is not a DNS label: 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'`,
      `${path}:2:1 flavour: unknown key; expected one of name, backend, image, count, vm, vms, network, groups, impairments, ssh, hosts, placement`,
      `${path}:3:15 vm.memory: "1X" is not a size; use a number with a binary unit K, M, G or T, like 128M or 1.5G`,
      `${path}:3:26 vm.vcpus: must be at least 1`,
    ]);
  });
});

/** Two libvirt hosts that do not exist: a fleet file's bad input is refused before any is asked. */
const TWO_HOSTS =
  '  - { name: h1, uri: "qemu+ssh://root@192.0.2.11/system" }\n  - { name: h2, uri: "qemu+ssh://root@192.0.2.12/system" }\n';

describe("a fleet over libvirt hosts with bad hosts: or placement:", () => {
  const cases: [string, string][] = [
    [
      "an unknown URI",
      'name: lab\nbackend: libvirt\nhosts:\n  - { name: h1, uri: "vbox:///session" }\n',
    ],
    [
      "a host named twice",
      'name: lab\nbackend: libvirt\nhosts:\n  - { name: h1, uri: "qemu+ssh://root@192.0.2.11/system" }\n  - { name: h1, uri: "qemu+ssh://root@192.0.2.12/system" }\n',
    ],
    [
      "a pin naming no host",
      `name: lab\nbackend: libvirt\ncount: 2\nhosts:\n${TWO_HOSTS}placement: { pin: [ { vms: vm-1, host: h9 } ] }\n`,
    ],
    [
      "capacity exceeded",
      'name: lab\nbackend: libvirt\ncount: 3\nhosts:\n  - { name: h1, uri: "qemu+ssh://root@192.0.2.11/system", capacity: { vms: 2 } }\n',
    ],
  ];

  it.each(cases)(
    "%s: `up` says so in one line with its position, exit code 2, and makes nothing",
    async (_what, text) => {
      const { path, state } = await fleetFile(text);
      const result = await shoal(["up", "-f", path, "--state-dir", state]);
      expectOneLineError(result, path);
      // No state directory, so nothing on any host either: none was asked.
      await expect(readdir(state)).rejects.toThrow(/ENOENT/);
    },
  );
});

describe("shoal validate", () => {
  it("reads shoal.yaml from the working directory by default", async () => {
    const { dir } = await fleetFile("name: lab\ncount: 4\n", "shoal.yaml");
    const result = await shoal(["validate"], { cwd: dir });
    expect(result).toEqual({
      code: 0,
      stdout: "shoal.yaml: fleet lab is valid: 4 VMs on qemu, subnet 10.77.0.0/16\n",
      stderr: "",
    });
  });

  it("says how to proceed when there is no fleet file", async () => {
    const dir = await tempDir();
    const result = await shoal(["validate"], { cwd: dir });
    expect(result.code).toBe(2);
    expect(result.stderr).toBe(
      "shoal: no fleet file shoal.yaml; pass -f FILE, or write shoal.yaml (examples/ has some)\n",
    );
  });

  it("accepts every example fleet", async () => {
    const examples = await readdir("examples");
    expect(examples.length).toBeGreaterThan(3);
    for (const example of examples) {
      const result = await shoal(["validate", "-f", `examples/${example}`]);
      expect(result.code, result.stderr).toBe(0);
    }
  });
});

describe("shoal plan", () => {
  it("prints 250 VMs with unique MACs, IPs and machine-ids as JSON", async () => {
    const { path, state } = await fleetFile(await readFile("examples/lab.yaml"));
    const result = await shoal(["plan", "-f", path, "--json", "--state-dir", state]);
    expect(result.code, result.stderr).toBe(0);
    const vms = JSON.parse(result.stdout) as Record<string, unknown>[];
    expect(vms).toHaveLength(250);
    for (const key of ["name", "hostname", "mac", "ip", "machineId"]) {
      expect(new Set(vms.map((vm) => vm[key])).size, key).toBe(250);
    }
    expect(vms[0]).toMatchObject({
      name: "agent-001",
      hostname: "agent-001",
      ip: "10.77.0.2",
      layer: { type: "disk", size: "256M" },
      state: "new",
      actions: ["create", "start"],
    });
  });

  it("plans 4000 VMs, more than one bridge takes, in a /16", async () => {
    const { path, state } = await fleetFile(
      'name: big\ncount: 4000\nvm: { name: "n{n:04}" }\nnetwork: { subnet: 10.80.0.0/16 }\n',
    );
    const result = await shoal(["plan", "-f", path, "--json", "--state-dir", state]);
    const vms = JSON.parse(result.stdout) as { mac: string; ip: string }[];
    expect(vms).toHaveLength(4000);
    expect(new Set(vms.map((vm) => vm.mac)).size).toBe(4000);
    expect(new Set(vms.map((vm) => vm.ip)).size).toBe(4000);
    expect(vms.at(-1)?.ip).toBe("10.80.15.161");
  });

  it("prints a table with name, hostname, MAC, IP, layer, state and action, and a summary", async () => {
    const result = await shoal([
      "plan",
      "-f",
      "examples/demo.yaml",
      "--state-dir",
      await tempDir(),
    ]);
    expect(result.code, result.stderr).toBe(0);
    expect(
      result.stdout.split("\n").map((line) => line.replace(/52:54:00(:[0-9a-f]{2}){3}/, "MAC")),
    ).toEqual([
      "fleet demo: 3 VMs on qemu, subnet 10.77.0.0/16, gateway 10.77.0.1",
      "NAME  HOSTNAME  MAC                IP         LAYER    STATE  ACTION",
      "vm-1  vm-1      MAC  10.77.0.2  disk 1G  new    create, start",
      "vm-2  vm-2      MAC  10.77.0.3  disk 1G  new    create, start",
      "vm-3  vm-3      MAC  10.77.0.4  disk 1G  new    create, start",
      "3 to create, 3 to start",
      "",
    ]);
  });

  it("shows each VM's host for a fleet over libvirt hosts, in the table and the JSON (pins first, then spread)", async () => {
    const { path, state } = await fleetFile(
      `name: lab\nbackend: libvirt\ncount: 3\nhosts:\n${TWO_HOSTS}placement: { pin: [ { vms: vm-3, host: h1 } ] }\n`,
    );
    const table = await shoal(["plan", "-f", path, "--state-dir", state]);
    expect(table.code, table.stderr).toBe(0);
    const rows = table.stdout.split("\n");
    expect(rows[0]).toBe(
      "fleet lab: 3 VMs on libvirt (2 hosts), subnet 10.77.0.0/16, gateway 10.77.0.1",
    );
    expect(rows[1]).toMatch(/^NAME\s+HOSTNAME\s+HOST\s+MAC/);
    expect(rows.slice(2, 5).map((row) => row.split(/\s+/).slice(0, 3))).toEqual([
      ["vm-1", "vm-1", "h2"],
      ["vm-2", "vm-2", "h1"],
      ["vm-3", "vm-3", "h1"],
    ]);
    const json = await shoal(["plan", "-f", path, "--json", "--state-dir", state]);
    const vms = JSON.parse(json.stdout) as { name: string; host: string }[];
    expect(vms.map((vm) => [vm.name, vm.host])).toEqual([
      ["vm-1", "h2"],
      ["vm-2", "h1"],
      ["vm-3", "h1"],
    ]);
  });

  it("compares the fleet file with the recorded fleet and what is on disk", async () => {
    const { path, state } = await fleetFile("name: lab\ncount: 3\n");
    const layout = stateLayout(state);
    const recorded = fleetOf("name: lab\ncount: 4\nvms: [{ name: vm-2, memory: 64M }]\n");
    const record = createdRecord(recorded);
    await writeFleetRecord(layout, record);
    for (const name of ["vm-1", "vm-2", "vm-4"])
      await mkdir(layout.fleet("lab").vm(name).dir, { recursive: true });
    const result = await shoal(["plan", "-f", path, "--json", "--state-dir", state]);
    const plan = JSON.parse(result.stdout) as {
      name: string;
      state: string;
      actions: string[];
      changes: string[];
    }[];
    expect(
      plan.map(({ name, state, actions, changes }) => ({ name, state, actions, changes })),
    ).toEqual([
      { name: "vm-1", state: "stopped", actions: ["start"], changes: [] },
      { name: "vm-2", state: "stopped", actions: ["recreate", "start"], changes: ["memory"] },
      { name: "vm-3", state: "missing", actions: ["create", "start"], changes: [] },
      { name: "vm-4", state: "stopped", actions: ["delete"], changes: [] },
    ]);
  });

  it("takes the state directory from SHOAL_STATE_DIR, and --state-dir over it", async () => {
    const bad = await shoal(["plan", "-f", "examples/demo.yaml"], {
      env: { SHOAL_STATE_DIR: "/tmp/with space" },
    });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(
      /^shoal: state directory "\/tmp\/with space" is not usable; it must be an absolute path/,
    );
    const good = await shoal(["plan", "-f", "examples/demo.yaml", "--state-dir", await tempDir()], {
      env: { SHOAL_STATE_DIR: "/tmp/with space" },
    });
    expect(good.code, good.stderr).toBe(0);
  });

  it("stops quietly when its reader closes the pipe early", async () => {
    const { path, state } = await fleetFile("name: big\ncount: 1023\n");
    const { spawnSync } = await import("node:child_process");
    const result = spawnSync(
      "sh",
      ["-c", `node bin/shoal.js plan -f ${path} --state-dir ${state} | head -1`],
      { encoding: "utf8" },
    );
    expect(result.stdout).toBe(
      "fleet big: 1023 VMs on qemu, subnet 10.77.0.0/16, gateway 10.77.0.1\n",
    );
    expect(result.stderr).toBe("");
  });
});

describe("shoal itself", () => {
  it("prints its version", async () => {
    expect(await shoal(["--version"])).toEqual({
      code: 0,
      stdout: `${packageJson.version}\n`,
      stderr: "",
    });
  });

  it("lists its commands and global options in help", async () => {
    const result = await shoal(["help"]);
    expect(result.code).toBe(0);
    for (const text of [
      "validate",
      "plan",
      "schema",
      "--state-dir",
      "SHOAL_STATE_DIR",
      "/var/lib/shoal",
      "--dry-run",
      "--debug",
    ]) {
      expect(result.stdout).toContain(text);
    }
    const plan = await shoal(["help", "plan"]);
    expect(plan.stdout).toContain("--json");
    expect(plan.stdout).toContain('-f, --file <file>  the fleet file (default: "shoal.yaml")');
  });

  it("exits 2 on an unknown command or option", async () => {
    expect((await shoal(["frobnicate"])).code).toBe(2);
    expect((await shoal(["plan", "--bogus"])).code).toBe(2);
  });

  it("prints the JSON Schema that schema/shoal.schema.json holds, so editors see the current schema", async () => {
    const result = await shoal(["schema"]);
    expect(result.stdout).toBe(await readFile("schema/shoal.schema.json", "utf8"));
    const schema = JSON.parse(result.stdout) as {
      additionalProperties: boolean;
      properties: Record<string, unknown>;
    };
    expect(schema.additionalProperties).toBe(false);
    expect(Object.keys(schema.properties)).toEqual([
      "name",
      "backend",
      "image",
      "count",
      "vm",
      "vms",
      "network",
      "groups",
      "impairments",
      "ssh",
      "hosts",
      "placement",
    ]);
  });
});

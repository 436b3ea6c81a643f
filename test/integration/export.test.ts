import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { shoal } from "../helpers/cli.js";
import { useTempDirs } from "../helpers/tmp.js";

/**
 * `shoal export dhcp` checked by the DHCP servers it is for: what they accept, and that it holds
 * exactly the addresses `shoal plan` promises the VMs.
 */

const DNSMASQ = "/usr/sbin/dnsmasq";
// Not skipped when missing: a DHCP server that was never asked proves nothing about the export.
const DHCPD = "/usr/sbin/dhcpd";

const tempDir = useTempDirs();

// A /20 and an address given by hand, so neither the netmask nor the VMs' addresses are the
// defaults a careless export could get right by accident.
const FLEET = `name: edge
count: 3
network: { subnet: 10.88.16.0/20 }
vm: { name: "node-{n}" }
vms:
  - { name: node-3, ip: 10.88.31.200, mac: "52:54:00:12:34:56" }
`;
const ISC_SUBNET = "subnet 10.88.16.0 netmask 255.255.240.0 {}\n";

interface Setup {
  dir: string;
  file: string;
  /** The state directory export is given, which it must leave alone (plan gets another). */
  state: string;
  planned: string[];
}

async function setup(): Promise<Setup> {
  const dir = await tempDir();
  const file = join(dir, "edge.yaml");
  await writeFile(file, FLEET);
  const plan = await shoal(["plan", "--json", "-f", file, "--state-dir", join(dir, "plan-state")]);
  expect(plan.code, plan.stderr).toBe(0);
  const vms = JSON.parse(plan.stdout) as { mac: string; ip: string; hostname: string }[];
  expect(vms).toHaveLength(3);
  return {
    dir,
    file,
    state: join(dir, "state"),
    planned: vms.map((vm) => `${vm.mac} ${vm.ip} ${vm.hostname}`).sort(),
  };
}

async function exportDhcp(
  { file, state }: Setup,
  ...format: string[]
): Promise<{ text: string; path: string }> {
  const result = await shoal(["export", "dhcp", "--file", file, "--state-dir", state, ...format]);
  expect(result.stderr).toBe("");
  expect(result.code).toBe(0);
  const path = `${file}.${format.at(-1) ?? "default"}.conf`;
  await writeFile(path, result.stdout);
  return { text: result.stdout, path };
}

function run(argv: readonly string[]) {
  const [command, ...args] = argv;
  if (command === undefined) throw new Error("no command");
  const result = spawnSync(command, args, { encoding: "utf8", env: { ...process.env, LANG: "C" } });
  if (result.error) throw result.error;
  return { code: result.status, output: `${result.stdout}${result.stderr}` };
}

describe("shoal export dhcp", () => {
  it("gives dnsmasq, by default, exactly the planned reservations, and dnsmasq accepts them", async () => {
    const fleet = await setup();
    const { text, path } = await exportDhcp(fleet);
    expect((await exportDhcp(fleet, "--format", "dnsmasq")).text).toBe(text);

    const reservations = text
      .split("\n")
      .filter((line) => line !== "" && !line.startsWith("#"))
      .map((line) => {
        const match = /^dhcp-host=([0-9a-f:]+),([0-9.]+),([a-z0-9-]+),infinite$/.exec(line);
        expect(match, line).not.toBeNull();
        return `${match?.[1]} ${match?.[2]} ${match?.[3]}`;
      });
    expect(reservations.sort()).toEqual(fleet.planned);

    expect(run([DNSMASQ, "--test", `--conf-file=${path}`])).toEqual({
      code: 0,
      output: "dnsmasq: syntax check OK.\n",
    });
    // The check above means something only if dnsmasq reads dhcp-host lines when it checks.
    const broken = `${path}.broken`;
    await writeFile(broken, text.replace(",node-1,", ",node 1,"));
    expect(run([DNSMASQ, "--test", `--conf-file=${broken}`]).code).not.toBe(0);
  });

  it("gives ISC dhcpd exactly the planned reservations, and dhcpd accepts them in its subnet", async () => {
    expect(existsSync(DHCPD), `${DHCPD} is missing: apt-get install isc-dhcp-server`).toBe(true);
    const fleet = await setup();
    const { text } = await exportDhcp(fleet, "-f", fleet.file, "--format", "isc");

    const hosts = [
      ...text.matchAll(
        /^ {2}host edge-[a-z0-9-]+ \{ hardware ethernet ([0-9a-f:]+); fixed-address ([0-9.]+); option host-name "([a-z0-9-]+)"; \}$/gm,
      ),
    ].map((match) => `${match[1]} ${match[2]} ${match[3]}`);
    expect(hosts.sort()).toEqual(fleet.planned);

    // The export leaves the subnet declaration to the user's dhcpd.conf; this one is that file.
    const config = join(fleet.dir, "dhcpd.conf");
    await writeFile(config, `${ISC_SUBNET}${text}`);
    const checked = run([DHCPD, "-t", "-cf", config]);
    expect(checked.code, checked.output).toBe(0);
    // As with dnsmasq: a check that passes anything would pass the export too.
    await writeFile(config, `${ISC_SUBNET}${text.replace("fixed-address", "fixed-adress")}`);
    expect(run([DHCPD, "-t", "-cf", config]).code).not.toBe(0);
  });

  it("needs neither the state directory nor a fleet brought up", async () => {
    const fleet = await setup();
    await exportDhcp(fleet, "--format", "isc");
    await exportDhcp(fleet, "--format", "dnsmasq");
    expect(existsSync(fleet.state)).toBe(false);
  });

  it("refuses an unknown format with one line and exit code 2", async () => {
    const fleet = await setup();
    const result = await shoal(["export", "dhcp", "-f", fleet.file, "--format", "xml"]);
    expect(result.code).toBe(2);
    expect(result.stdout).toBe("");
    expect(result.stderr.split("\n").filter(Boolean)).toEqual([
      "error: option '--format <format>' argument 'xml' is invalid. Allowed choices are dnsmasq, isc.",
    ]);
  });
});

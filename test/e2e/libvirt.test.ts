import { execFile } from "node:child_process";
import { chmod, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { imageVolumes, poolName } from "../../src/backends/libvirt/names.js";
import { type ImageMeta, imageBoot } from "../../src/image/store.js";
import { stateLayout } from "../../src/state/layout.js";
import { type CliResult, shoal } from "../helpers/cli.js";
import { sharedImage } from "../helpers/images.js";
import { type LibvirtHost, LibvirtHosts } from "../helpers/libvirt-hosts.js";
import { useFileTempDir } from "../helpers/tmp.js";
import { sha256 } from "../helpers/vm.js";

/**
 * A fleet over two libvirt hosts on this machine (test/helpers/libvirt-hosts.ts), each with its own
 * libvirtd and sshd in namespaces of its own, reached from a control namespace over `qemu+ssh://`,
 * where shoal runs. The tests build on each other, in order.
 */

const exec = promisify(execFile);
const stateDir = useFileTempDir("shoal-libvirt-");
const hostsDir = useFileTempDir("shoal-libvirt-hosts-");
let state: string;
let file: string;
let image: ImageMeta;
/** The base's sha256 before any host had it. */
let baseSum: string;
let hosts: LibvirtHosts | undefined;

function theHosts(): LibvirtHosts {
  if (!hosts) throw new Error("the libvirt hosts did not start");
  return hosts;
}

async function virsh(host: LibvirtHost, ...args: string[]): Promise<string> {
  return (await theHosts().virsh(host, ...args)).stdout;
}

/** shoal as the control namespace runs it, with the test's state directory. */
function run(args: readonly string[]): Promise<CliResult> {
  return shoal(["--state-dir", state, ...args], { namespace: theHosts().control });
}

async function ok(args: readonly string[]): Promise<string> {
  const result = await run(args);
  expect(result.code, `shoal ${args.join(" ")}\n${result.stderr}\n${result.stdout}`).toBe(0);
  return result.stdout;
}

const lines = (text: string) => text.split("\n").filter(Boolean);

beforeAll(async () => {
  state = stateDir();
  await chmod(state, 0o755);
  image = await sharedImage(state, "tiny", { from: "busybox" });
  baseSum = await sha256(imageBoot(stateLayout(state), image).base);
  hosts = new LibvirtHosts({
    dir: hostsDir(),
    tag: String(process.pid),
    count: 2,
    subnet: "10.253.0",
  });
  await hosts.start();
  file = join(state, "lab.yaml");
  await writeFile(
    file,
    [
      "name: lab",
      "backend: libvirt",
      "count: 6",
      "vm: { layer: { type: disk, size: 64M } }",
      "hosts:",
      ...hosts.hosts.map((host) => `  - { name: ${host.name}, uri: "${host.uri}" }`),
      "",
    ].join("\n"),
  );
});

afterAll(async () => {
  await run(["destroy", "-f", file, "--yes"]).catch(() => undefined);
  await hosts?.stop();
});

describe("a fleet over two libvirt hosts", () => {
  it("comes up 3 and 3 with `shoal up`, the base sent once to each host and checked there", async () => {
    await ok(["up", "-f", file]);
    for (const host of theHosts().hosts) {
      expect(lines(await virsh(host, "list", "--name"))).toHaveLength(3);
      const volumes = lines(await virsh(host, "vol-list", "--pool", poolName(state))).map(
        (line) => line.trim().split(/\s+/)[0],
      );
      expect(volumes).toEqual(expect.arrayContaining(Object.values(imageVolumes(image.id))));
    }
    const again = await run(["--debug", "up", "-f", file]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).not.toContain("vol-upload");
  });

  it("lets VMs on different hosts reach each other by name, and `exec --all` reach all 6", async () => {
    // spread: vm-1 on h1, vm-2 on h2.
    const ping = await run([
      "exec",
      "-f",
      file,
      "vm-1",
      "--",
      "ping",
      "-c",
      "3",
      "-W",
      "5",
      "vm-2",
    ]);
    expect(ping.code, ping.stderr + ping.stdout).toBe(0);
    const all = await ok(["exec", "-f", file, "--all", "--", "hostname"]);
    expect(all).toEqual(expect.stringContaining("vm-6"));
    for (let n = 1; n <= 6; n++) expect(all).toContain(`vm-${n}`);
  });

  it("shows the VMs of a host whose libvirtd stopped as unreachable; `up` leaves them and says so, the others keep working; all are back with the daemon", async () => {
    const [h1] = theHosts().hosts as [LibvirtHost];
    const states = async () =>
      (
        JSON.parse(await ok(["ps", "-f", file, "--json"])) as {
          name: string;
          host: string;
          state: string;
        }[]
      ).map((row) => [row.name, row.host, row.state]);
    await theHosts().stopDaemon(h1);
    try {
      expect(await states()).toEqual([
        ["vm-1", "h1", "unreachable"],
        ["vm-2", "h2", "running"],
        ["vm-3", "h1", "unreachable"],
        ["vm-4", "h2", "running"],
        ["vm-5", "h1", "unreachable"],
        ["vm-6", "h2", "running"],
      ]);
      const up = await run(["up", "-f", file]);
      expect(up.code, up.stderr).toBe(0);
      expect(up.stderr).toContain(
        "host h1 cannot be reached: its VMs vm-1, vm-3, vm-5 are left as they are until it is back",
      );
      const others = await ok(["exec", "-f", file, "vm-2", "vm-4", "vm-6", "--", "hostname"]);
      for (const vm of ["vm-2", "vm-4", "vm-6"]) expect(others).toContain(`${vm}: ${vm}`);
    } finally {
      await theHosts().startDaemon(h1);
    }
    expect((await states()).map(([, , state]) => state)).toEqual(Array(6).fill("running"));
  });

  it("`destroy` leaves nothing on either host; the base is unchanged", async () => {
    await ok(["destroy", "-f", file, "--yes"]);
    for (const host of theHosts().hosts) {
      expect(await virsh(host, "list", "--all", "--name")).toBe("");
      expect(await virsh(host, "pool-list", "--all", "--name")).toBe("");
      const links = (await exec("ip", ["-n", host.namespace, "-o", "link", "show"])).stdout;
      expect(links).not.toMatch(/-br|-vx/);
    }
    expect(await sha256(imageBoot(stateLayout(state), image).base)).toBe(baseSum);
  });
});

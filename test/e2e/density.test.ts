import { chmod, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { destroyAllFleets, shoalOk } from "../helpers/cli.js";
import { sharedImage } from "../helpers/images.js";
import { useFileTempDir } from "../helpers/tmp.js";
import { killQemusMentioning, qemuPidsMentioning } from "../helpers/vm.js";

/**
 * Many VMs on shoal's defaults for memory (software emulation's bounded translation cache, the
 * balloon that hands freed memory back, boot admission): a fleet of 30 tiny VMs, half on disk
 * layers and half on tmpfs, comes up and every VM answers. Memory is checked loosely here;
 * bench/density.ts holds the targets.
 */

const COUNT = 30;
const stateDir = useFileTempDir("shoal-density-");
const fleetDir = useFileTempDir("shoal-density-fleets-");
let state: string;

beforeAll(async () => {
  state = stateDir();
  // As a host's state directory is: dnsmasq (user nobody) and QEMU (shoal-qemu) get through it.
  await chmod(state, 0o755);
  await sharedImage(state, "tiny", { from: "busybox" });
});

afterAll(async () => {
  await destroyAllFleets(state);
  await killQemusMentioning(state);
});

/** A QEMU's proportional share of the host memory it uses, in MiB. */
async function pssMiB(pid: number): Promise<number> {
  const rollup = await readFile(`/proc/${pid}/smaps_rollup`, "utf8");
  return Number(/^Pss:\s+(\d+) kB$/m.exec(rollup)?.[1]) / 1024;
}

describe("a fleet of 30 tiny VMs", () => {
  it("comes up on the defaults, disk and tmpfs layers mixed, and every VM answers `exec` as itself", async () => {
    const tmpfs = Array.from({ length: COUNT / 2 }, (_, i) => `vm-${2 * i + 2}`);
    const file = join(fleetDir(), "dense.yaml");
    await writeFile(
      file,
      [
        "name: dense",
        `count: ${COUNT}`,
        "vm: { layer: { size: 64M } }",
        "network: { subnet: 10.82.0.0/24 }",
        "vms:",
        ...tmpfs.map((name) => `  - { name: ${name}, layer: { type: tmpfs } }`),
        "",
      ].join("\n"),
    );
    const up = JSON.parse(await shoalOk(state, ["up", "-f", file, "--json"])) as {
      name: string;
      ok: boolean;
    }[];
    expect(up.filter((row) => row.ok)).toHaveLength(COUNT);
    // Booted is not yet listening: `wait` returns once every VM takes an SSH login.
    await shoalOk(state, ["wait", "-f", file, "--timeout", "300"]);

    const answers = JSON.parse(
      await shoalOk(state, [
        "exec",
        "-f",
        file,
        "--all",
        "--json",
        "--",
        "echo $(hostname) $(cat /sys/module/page_reporting/parameters/page_reporting_order) $(grep -c ' / overlay ' /proc/mounts)",
      ]),
    ) as { name: string; exitCode: number; stdout: string }[];
    expect(answers).toHaveLength(COUNT);
    for (const answer of answers) {
      // Its own name, free pages reported in 128 KiB chunks, a union root.
      expect(answer.stdout, answer.name).toBe(`${answer.name} 5 1\n`);
    }

    // Loosely: QEMU's defaults alone left an idle tiny VM at about 217 MiB here, these at about 150.
    const pids = await qemuPidsMentioning(state);
    expect(pids).toHaveLength(COUNT);
    const pss = await Promise.all(pids.map(pssMiB));
    const mean = pss.reduce((sum, value) => sum + value, 0) / pss.length;
    expect(mean).toBeLessThan(200);
  });
});

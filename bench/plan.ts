/**
 * How long `shoal plan` takes for a 250-VM fleet, 4000 VMs (four bridges' worth), and 10,000 VMs
 * over 10 libvirt hosts: in-process (parse, validate, derive identities, place, plan) and as a
 * whole command (Node start-up included). Run after scripts/setup with `npx tsx bench/plan.ts`.
 * Goals: well under a second for the first two, under 2 s for the 10,000 over 10 hosts.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { planFleet } from "../src/core/plan.js";
import { placeFleet } from "../src/fleet/planning.js";
import { parseFleetText } from "../src/spec/load.js";

const RUNS = 7;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? Number.NaN;
}

function timeIt(work: () => void): number {
  const started = process.hrtime.bigint();
  work();
  return Number(process.hrtime.bigint() - started) / 1e6;
}

const dir = mkdtempSync(join(tmpdir(), "shoal-bench-"));
try {
  const hosts = Array.from(
    { length: 10 },
    (_, i) => `  - { name: h${i + 1}, uri: "qemu+ssh://root@10.0.0.${11 + i}/system" }`,
  ).join("\n");
  for (const [count, onHosts] of [
    [250, false],
    [4000, false],
    [10_000, true],
  ] as const) {
    const text = onHosts
      ? `name: lab\nbackend: libvirt\ncount: ${count}\nvm: { name: "agent-{n:05}" }\nnetwork: { subnet: 10.64.0.0/14 }\nhosts:\n${hosts}\n`
      : `name: lab\ncount: ${count}\nvm: { name: "agent-{n:04}" }\nnetwork: { subnet: 10.77.0.0/16 }\n`;
    const file = join(dir, `fleet-${count}.yaml`);
    writeFileSync(file, text);
    const inProcess = median(
      Array.from({ length: RUNS }, () =>
        timeIt(() => {
          const fleet = parseFleetText(text, file);
          planFleet({
            desired: placeFleet(fleet, new Map()),
            recorded: new Map(),
            observed: new Map(),
            goal: "running",
          });
        }),
      ),
    );
    const command = median(
      Array.from({ length: RUNS }, () =>
        timeIt(() => {
          const result = spawnSync(
            process.execPath,
            ["bin/shoal.js", "plan", "--json", "-f", file, "--state-dir", dir],
            { maxBuffer: 256 * 1024 * 1024 },
          );
          if (result.status !== 0) throw new Error(result.stderr.toString());
        }),
      ),
    );
    console.log(
      `${count} VMs${onHosts ? " over 10 hosts" : ""}: in-process ${inProcess.toFixed(1)} ms, shoal plan --json ${command.toFixed(0)} ms (median of ${RUNS})`,
    );
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

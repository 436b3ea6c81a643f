/**
 * How long `shoal plan` takes for a 250-VM fleet and 4000 VMs, four bridges' worth: in-process (parse, validate,
 * derive identities, plan) and as a whole command (Node start-up included). Run after
 * scripts/setup with `npx tsx bench/plan.ts`. Goal: well under a second for both.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { planFleet } from "../src/core/plan.js";
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
  for (const count of [250, 4000]) {
    const text = `name: lab\ncount: ${count}\nvm: { name: "agent-{n:04}" }\nnetwork: { subnet: 10.77.0.0/16 }\n`;
    const file = join(dir, `fleet-${count}.yaml`);
    writeFileSync(file, text);
    const inProcess = median(
      Array.from({ length: RUNS }, () =>
        timeIt(() => {
          const fleet = parseFleetText(text, file);
          planFleet({
            desired: fleet.vms,
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
      `${count} VMs: in-process ${inProcess.toFixed(1)} ms, shoal plan --json ${command.toFixed(0)} ms (median of ${RUNS})`,
    );
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

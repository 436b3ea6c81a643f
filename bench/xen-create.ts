/**
 * How long backend xl takes to create and boot 1, 5 and 10 PV domUs of the tiny image (128M each,
 * the least Debian's kernel boots in with room; disk and tmpfs layers mixed), one after another (`up --workers 1`) against side by side
 * (`up --workers N`), and how many loop devices dom0 holds per domU, in one run. It runs in the
 * real-Xen test environment (test/helpers/xen-lab.ts: Xen inside QEMU, software emulation), so
 * the times are that environment's, not a real host's. `up` returns once every domU has booted.
 * Run after scripts/setup with `npx tsx bench/xen-create.ts` (root; about 20 minutes). Targets: no
 * failed creation; 10 side by side at least 3 times faster than one after another (the lab's dom0
 * has 2 emulated CPUs, which bounds this there); at most one
 * loop device per base plus each domU's own disks (its seed, its disk layer).
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { XenLab } from "../test/helpers/xen-lab.js";

const COUNTS = [1, 5, 10];

function shoalOnHost(state: string, args: readonly string[]): void {
  const result = spawnSync(process.execPath, ["bin/shoal.js", "--state-dir", state, ...args], {
    encoding: "utf8",
  });
  if (result.status !== 0) throw new Error(`shoal ${args.join(" ")}: ${result.stderr}`);
}

function fleetFile(count: number): string {
  const tmpfs = Array.from({ length: count }, (_, i) => i + 1)
    .filter((n) => n % 2 === 0)
    .map((n) => `{ name: vm-${n}, layer: { type: tmpfs } }`);
  return [
    "name: bench",
    "backend: xl",
    `count: ${count}`,
    "vm: { layer: { type: disk, size: 64M } }",
    `vms: [${tmpfs.join(", ")}]`,
    "",
  ].join("\n");
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "shoal-bench-xen-"));
  const state = join(dir, "state");
  shoalOnHost(state, ["image", "build", "tiny", "--from", "busybox"]);
  const lab = new XenLab({
    dir: join(dir, "lab"),
    images: state,
    namespace: `shoal-benchxen-${process.pid}`,
  });
  try {
    const started = Date.now();
    await lab.start();
    console.log(`lab up in ${((Date.now() - started) / 1000).toFixed(0)} s`);
    const inDom0 = async (command: string, input = "") => {
      const result = await lab.ssh(command, input);
      if (result.code !== 0) throw new Error(`${command}: ${result.stderr}`);
      return result.stdout;
    };
    // The image's first `up` also unpacks its kernel for Xen (once per image): timed on its own,
    // so that the rows below compare creation and boot only.
    await inDom0("cat > /root/bench.yaml", fleetFile(1));
    const firstBegun = Date.now();
    await inDom0("shoal up -f /root/bench.yaml >/dev/null");
    const firstUp = (Date.now() - firstBegun) / 1000;
    await inDom0("shoal destroy -f /root/bench.yaml --yes >/dev/null");
    console.log(`first up of the image (1 domU, its kernel unpacked): ${firstUp.toFixed(1)} s`);
    const rows: string[][] = [];
    for (const count of COUNTS) {
      await inDom0("cat > /root/bench.yaml", fleetFile(count));
      const seconds: number[] = [];
      let loopsPerDomU = 0;
      for (const workers of count === 1 ? [1] : [1, count]) {
        const begun = Date.now();
        await inDom0(`shoal up -f /root/bench.yaml --workers ${workers} >/dev/null`);
        seconds.push((Date.now() - begun) / 1000);
        const loops = Number(await inDom0("losetup --list --noheadings | wc -l"));
        loopsPerDomU = loops / count;
        await inDom0(`shoal destroy -f /root/bench.yaml --yes --workers ${count} >/dev/null`);
        const left = Number(await inDom0("losetup --list --noheadings | wc -l"));
        if (left !== 0) throw new Error(`${left} loop devices left after destroy`);
      }
      const [serial = Number.NaN, parallel = serial] = seconds;
      rows.push([
        String(count),
        serial.toFixed(1),
        parallel.toFixed(1),
        (serial / parallel).toFixed(1),
        loopsPerDomU.toFixed(2),
      ]);
    }
    console.log(
      "| domUs | one after another (s) | side by side (s) | speed-up | loop devices per domU |",
    );
    console.log("| ---: | ---: | ---: | ---: | ---: |");
    for (const row of rows) console.log(`| ${row.join(" | ")} |`);
  } finally {
    await lab.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();

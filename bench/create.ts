/**
 * What making 200 VMs costs, per VM, with shoal and with what a user would do instead, in one run
 * on one base image:
 *   - `shoal create` of a 200-VM fleet (blank sparse layer, identity seed and SSH host key, QEMU
 *     definition, record; the whole command, Node start-up included);
 *   - a full copy of the base image per VM (`cp`, then `sync`);
 *   - a qcow2 linked clone per VM (`qemu-img create -f qcow2 -b BASE -F raw`), one command per VM.
 * Disk is what `du` counts for the VMs' files (allocated blocks), divided by 200.
 * Run after scripts/setup with `npx tsx bench/create.ts` (root; about a minute). Target: per VM,
 * faster than the qcow2 clone and under 1 MiB of disk.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stateLayout } from "../src/state/layout.js";
import { linkedClone, shoal } from "./tools.js";

const COUNT = 200;
const MiB = 1024 ** 2;

function timed(work: () => void): number {
  const started = process.hrtime.bigint();
  work();
  return Number(process.hrtime.bigint() - started) / 1e6;
}

function diskUse(dir: string): number {
  return Number(execFileSync("du", ["-s", "-B1", dir]).toString().split("\t")[0]);
}

const dir = mkdtempSync(join(tmpdir(), "shoal-bench-"));
try {
  const state = join(dir, "state");
  shoal(state, ["image", "build", "tiny", "--from", "busybox"]);
  const image = JSON.parse(shoal(state, ["image", "inspect", "tiny"])) as {
    id: string;
    size: number;
  };
  const base = stateLayout(state).image(image.id).base;
  const fleet = join(dir, "fleet.yaml");
  writeFileSync(fleet, `name: bench\ncount: ${COUNT}\nvm: { layer: { type: disk, size: 1G } }\n`);

  const results: [string, number, number][] = [];
  const shoalMs = timed(() => shoal(state, ["create", "-f", fleet]));
  results.push(["shoal create", shoalMs, diskUse(stateLayout(state).fleet("bench").dir)]);

  const copies = join(dir, "copies");
  mkdirSync(copies);
  const copyMs = timed(() => {
    for (let i = 1; i <= COUNT; i++) execFileSync("cp", [base, join(copies, `vm-${i}.img`)]);
    execFileSync("sync", ["-f", copies]);
  });
  results.push(["full copy (cp)", copyMs, diskUse(copies)]);
  rmSync(copies, { recursive: true, force: true });

  const clones = join(dir, "clones");
  mkdirSync(clones);
  const cloneMs = timed(() => {
    for (let i = 1; i <= COUNT; i++) {
      linkedClone(base, join(clones, `vm-${i}.qcow2`));
    }
  });
  results.push(["qcow2 linked clone", cloneMs, diskUse(clones)]);

  console.log(
    `${COUNT} VMs on the tiny image (base ${(image.size / MiB).toFixed(0)} MiB, ${(diskUse(base) / MiB).toFixed(1)} MiB allocated)`,
  );
  console.log("method               per VM      disk per VM");
  for (const [method, ms, bytes] of results) {
    console.log(
      `${method.padEnd(20)} ${`${(ms / COUNT).toFixed(2)} ms`.padEnd(11)} ${(bytes / COUNT / 1024).toFixed(0)} KiB`,
    );
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

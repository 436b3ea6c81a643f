/**
 * How many VMs this host runs, side by side with the do-it-yourself way, in one run:
 *   - shoal: `shoal up` of N VMs on its defaults (the base mapped for DAX, bounded translation
 *     cache, free page reporting, boot admission), then `shoal wait`;
 *   - do it yourself: plain QEMU with its default settings, every VM started at once, each over a
 *     qcow2 overlay of the same base (`qemu-img create -b`), user-mode networking with SSH
 *     forwarded to a port of 127.0.0.1. Same kernel, shoal's initramfs and identity seeds, so that
 *     both boot the same system and answer the same SSH key.
 * Both keep the VMs' writes in tmpfs layers inside the guests, so that the host's page cache shows
 * what reading the base costs; both run under software emulation, or KVM with SHOAL_ACCEL=kvm.
 * For each N: seconds until every VM answers SSH (and, for shoal, that time against N single
 * boots divided by the CPUs), host memory per VM once idle (the drop of MemAvailable, and the mean
 * PSS of the QEMU processes), idle CPU per VM, how much of the base the host's page cache holds,
 * and the memory the guests report as used. The do-it-yourself run is left out where its VMs
 * would not fit in this host's memory (at QEMU's default footprint).
 *
 * Where N VMs of their configured memory do not fit in the memory available (200 tiny VMs of 128M
 * on 24 GiB), shoal runs them the way a user who chooses to would: KSM on (`shoal host ksm on`,
 * ksmd scanning 1000 pages per wake-up instead of 100, so that it keeps up with the boots), the
 * guests booted with nokaslr (so their kernels' pages are alike), `up --overcommit`; KSM is left
 * as it was found.
 *
 * Run as root after scripts/setup: `npx tsx bench/density.ts [--tiny 10,50,100,200] [--debian 5,20]`
 * (those are the defaults; over an hour on 2 cores under software emulation). Writes
 * bench/results/density.json, density.md (the table) and density.svg (memory per VM against N).
 */
import { execFileSync, spawnSync } from "node:child_process";
import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { QEMU_GUEST_DEVICES } from "../src/backends/qemu/render.js";
import { renderKernelCmdline } from "../src/core/cmdline.js";
import { parseSize } from "../src/core/size.js";
import { KSM_DIR, readKsm, setKsm } from "../src/host/ksm.js";
import { parseFleetText } from "../src/spec/load.js";
import { stateLayout } from "../src/state/layout.js";
import { BENCH_ACCEL, linkedClone, shoal } from "./tools.js";

const IDLE_SECONDS = 60;
const CPU_WINDOW_SECONDS = 30;
/** An idle VM of QEMU's defaults took about 217 MiB (tiny, 128M) and 770 MiB (Debian, 384M) here. */
const DIY_FOOTPRINT_MIB = { tiny: 230, debian: 800 } as const;
const IMAGES = {
  tiny: { build: ["--from", "busybox"], memory: "128M" },
  debian: { build: ["--from", "debian:bookworm"], memory: "384M" },
} as const;
type ImageName = keyof typeof IMAGES;

function counts(flag: string, fallback: number[]): number[] {
  const at = process.argv.indexOf(flag);
  if (at < 0) return fallback;
  return (process.argv[at + 1] ?? "").split(",").filter(Boolean).map(Number);
}

const sleep = (seconds: number) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));

function meminfoMiB(): Record<string, number> {
  const fields: Record<string, number> = {};
  for (const [, key, kib] of readFileSync("/proc/meminfo", "utf8").matchAll(
    /^(\w+):\s+(\d+) kB$/gm,
  ))
    fields[key ?? ""] = Number(kib) / 1024;
  return fields;
}

function pssMiB(pid: number): number {
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
  return Number(/^Pss:\s+(\d+) kB$/m.exec(rollup)?.[1]) / 1024;
}

function cpuTicks(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
  return Number(fields[11]) + Number(fields[12]);
}

function guestUsedMiB(meminfo: string): number {
  const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(meminfo)?.[1]);
  return (kib("MemTotal") - kib("MemAvailable")) / 1024;
}

interface Figures {
  memAvailableDropMiB: number;
  meanPssMiB: number;
  idleCpuPercent: number;
  baseCachedMiB: number;
  guestUsedMiB: number;
}

/** One run; without figures when not every VM answered (`note` says what became of the others). */
interface Row extends Partial<Figures> {
  image: ImageName;
  count: number;
  way: "shoal" | "shoal, KSM, nokaslr, --overcommit" | "plain QEMU + qcow2";
  answered: number;
  secondsToSsh?: number;
  /** secondsToSsh against count single boots divided by the CPUs (the target: at most 1.1). */
  againstSingleBoots?: number;
  note?: string;
}

/** How much of `file` the host's page cache holds. */
function cachedMiB(file: string): number {
  const bytes = execFileSync("fincore", ["--bytes", "--noheadings", "--output", "RES", file]);
  return Number(bytes.toString().trim()) / 1024 / 1024;
}

/** What every run measures once its VMs answer SSH: idle memory and CPU, then the guests' view. */
async function measure(
  pids: readonly number[],
  before: Record<string, number>,
  base: string,
  guestMeminfo: () => string[],
): Promise<Figures> {
  await sleep(IDLE_SECONDS);
  const after = meminfoMiB();
  const ticks = pids.map(cpuTicks);
  await sleep(CPU_WINDOW_SECONDS);
  const busy = pids.reduce((sum, pid, i) => sum + cpuTicks(pid) - (ticks[i] ?? 0), 0);
  const used = guestMeminfo().map(guestUsedMiB);
  const n = pids.length;
  return {
    memAvailableDropMiB: ((before.MemAvailable ?? 0) - (after.MemAvailable ?? 0)) / n,
    meanPssMiB: pids.reduce((sum, pid) => sum + pssMiB(pid), 0) / n,
    // Clock ticks are 1/100 s.
    idleCpuPercent: busy / CPU_WINDOW_SECONDS / n,
    baseCachedMiB: cachedMiB(base),
    guestUsedMiB: used.reduce((sum, value) => sum + value, 0) / used.length,
  };
}

/** The host's memory with its page cache emptied, but for what every run reads itself (Node and shoal, ssh). */
function settle(state: string): Record<string, number> {
  execFileSync("sync");
  writeFileSync("/proc/sys/vm/drop_caches", "3");
  shoal(state, ["image", "ls"]);
  spawnSync("ssh", ["-V"]);
  return meminfoMiB();
}

function shoalFleet(dir: string, image: ImageName, count: number, ksm: boolean): string {
  const file = join(dir, `shoal-${image}-${count}${ksm ? "-ksm" : ""}.yaml`);
  const kernelArgs = ksm ? ", kernel_args: [nokaslr]" : "";
  writeFileSync(
    file,
    `name: d${image[0]}${count}${ksm ? "k" : ""}\ncount: ${count}\nimage: ${image}\nvm: { memory: ${IMAGES[image].memory}, layer: { type: tmpfs }${kernelArgs} }\nnetwork: { subnet: 10.84.0.0/16 }\n`,
  );
  return file;
}

/** Seconds from `up` until every VM answers SSH. */
function bringUp(state: string, file: string, overcommit: boolean): number {
  const started = Date.now();
  shoal(state, ["up", "-f", file, "--timeout", "3600", ...(overcommit ? ["--overcommit"] : [])]);
  shoal(state, ["wait", "-f", file, "--timeout", "3600"]);
  return (Date.now() - started) / 1000;
}

/** One VM brought up alone on the quiet host: the unit of the bring-up target. */
function singleBoot(state: string, dir: string, image: ImageName): number {
  const file = shoalFleet(dir, image, 1, false);
  settle(state);
  const seconds = bringUp(state, file, false);
  shoal(state, ["destroy", "-f", file, "--yes"]);
  return seconds;
}

/** Runs `work` with KSM on and scanning faster, then puts KSM back as it was found. */
async function withKsm<T>(work: () => Promise<T>): Promise<T> {
  const scanRate = join(KSM_DIR, "pages_to_scan");
  const wasRunning = (await readKsm())?.running ?? false;
  const foundRate = readFileSync(scanRate, "utf8").trim();
  writeFileSync(scanRate, "1000");
  await setKsm(true);
  try {
    return await work();
  } finally {
    await setKsm(wasRunning);
    writeFileSync(scanRate, foundRate);
  }
}

async function shoalRun(
  state: string,
  dir: string,
  image: ImageName,
  count: number,
  oneBootSeconds: number,
): Promise<Row> {
  const ksm = count * memoryMiB(image) > 0.9 * (meminfoMiB().MemAvailable ?? 0);
  const file = shoalFleet(dir, image, count, ksm);
  const name = parseFleetText(readFileSync(file, "utf8"), file).name;
  const run = async (): Promise<Row> => {
    const before = settle(state);
    const secondsToSsh = bringUp(state, file, ksm);
    const vmsDir = join(stateLayout(state).fleet(name).dir, "vms");
    const pids = readdirSync(vmsDir).map((vm) =>
      Number(readFileSync(join(vmsDir, vm, "qemu.pid"), "utf8")),
    );
    const figures = await measure(pids, before, baseOf(state, image), () =>
      (
        JSON.parse(
          shoal(state, ["exec", "-f", file, "--all", "--json", "--", "cat /proc/meminfo"]),
        ) as { stdout: string }[]
      ).map((outcome) => outcome.stdout),
    );
    shoal(state, ["destroy", "-f", file, "--yes"]);
    return {
      image,
      count,
      way: ksm ? "shoal, KSM, nokaslr, --overcommit" : "shoal",
      answered: count,
      secondsToSsh,
      againstSingleBoots: secondsToSsh / ((count * oneBootSeconds) / availableParallelism()),
      ...figures,
    };
  };
  return ksm ? withKsm(run) : run();
}

function memoryMiB(image: ImageName): number {
  return (parseSize(IMAGES[image].memory) ?? 0) / 1024 / 1024;
}

function baseOf(state: string, image: ImageName): string {
  return (JSON.parse(shoal(state, ["image", "inspect", image])) as { files: { base: string } })
    .files.base;
}

function sshArgs(key: string, port: number, command: string): string[] {
  return [
    "-i",
    key,
    "-p",
    String(port),
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=5",
    "-o",
    "LogLevel=ERROR",
    "root@127.0.0.1",
    command,
  ];
}

async function plainRun(state: string, dir: string, image: ImageName, count: number): Promise<Row> {
  // shoal makes the identity seeds (and the key that logs in); QEMU and qcow2 do the rest.
  const file = join(dir, `plain-${image}-${count}.yaml`);
  const name = `p${image[0]}${count}`;
  const text = `name: ${name}\ncount: ${count}\nimage: ${image}\nvm: { memory: ${IMAGES[image].memory}, layer: { type: tmpfs } }\n`;
  writeFileSync(file, text);
  shoal(state, ["create", "-f", file]);
  const fleet = parseFleetText(text, file);
  const meta = JSON.parse(shoal(state, ["image", "inspect", image])) as {
    id: string;
    files: { base: string; kernel: string; initrd: string };
  };
  const work = join(dir, name);
  mkdirSync(work);
  const key = join(stateLayout(state).fleet(name).dir, "ssh", "id_ed25519");
  const before = settle(state);
  const started = Date.now();
  const pids: number[] = [];
  fleet.vms.forEach((vm, i) => {
    const overlay = join(work, `${vm.name}.qcow2`);
    linkedClone(meta.files.base, overlay);
    const pidFile = join(work, `${vm.name}.pid`);
    execFileSync("qemu-system-x86_64", [
      "-machine",
      "q35",
      "-accel",
      BENCH_ACCEL,
      "-m",
      `${vm.memoryMiB}M`,
      "-nodefaults",
      "-display",
      "none",
      "-kernel",
      meta.files.kernel,
      "-initrd",
      meta.files.initrd,
      "-append",
      renderKernelCmdline(QEMU_GUEST_DEVICES, vm, { baseId: meta.id }),
      "-drive",
      `file=${overlay},if=virtio,format=qcow2`,
      "-drive",
      `file=${stateLayout(state).fleet(name).vm(vm.name).seed},if=virtio,format=raw,readonly=on`,
      "-nic",
      `user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:${30_000 + i}-:22`,
      "-serial",
      `file:${join(work, `${vm.name}.log`)}`,
      "-daemonize",
      "-pidfile",
      pidFile,
    ]);
    pids.push(Number(readFileSync(pidFile, "utf8")));
  });
  // All at once, a guest may never come up: under software emulation on a loaded host Linux can
  // find its timer broken and panic. Such a VM, or one still silent at the deadline, is reported.
  const deadline = started + Math.max(600, 20 * count) * 1000;
  const waiting = new Map(fleet.vms.map((vm, i) => [30_000 + i, vm.name]));
  const lost: string[] = [];
  while (waiting.size > 0 && Date.now() < deadline) {
    for (const [port, vm] of waiting) {
      if (spawnSync("ssh", sshArgs(key, port, "true")).status === 0) waiting.delete(port);
      const panic = /Kernel panic - [^\n]*/.exec(readFileSync(join(work, `${vm}.log`), "utf8"));
      if (panic) {
        lost.push(`${vm}: ${panic[0].trim()}`);
        waiting.delete(port);
      }
    }
    await sleep(2);
  }
  for (const vm of waiting.values())
    lost.push(`${vm}: no SSH after ${(deadline - started) / 1000} s`);
  const secondsToSsh = (Date.now() - started) / 1000;
  try {
    if (lost.length > 0) {
      return {
        image,
        count,
        way: "plain QEMU + qcow2",
        answered: count - lost.length,
        note: lost.join("; "),
      };
    }
    const figures = await measure(pids, before, meta.files.base, () =>
      fleet.vms.map((_, i) =>
        execFileSync("ssh", sshArgs(key, 30_000 + i, "cat /proc/meminfo")).toString(),
      ),
    );
    return { image, count, way: "plain QEMU + qcow2", answered: count, secondsToSsh, ...figures };
  } finally {
    for (const pid of pids) process.kill(pid, "SIGKILL");
    shoal(state, ["destroy", "-f", file, "--yes"]);
  }
}

function table(rows: readonly Row[]): string {
  const lines = [
    "| image | N | way | answered SSH | s to SSH | against N boots / CPUs | MemAvailable drop / VM | mean QEMU PSS | idle CPU / VM | base in host page cache | guest used |",
    "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  const shown = (value: number | undefined, digits: number, unit: string) =>
    value === undefined ? "-" : `${value.toFixed(digits)}${unit}`;
  for (const row of rows) {
    lines.push(
      `| ${row.image} | ${row.count} | ${row.way} | ${row.answered} | ${shown(row.secondsToSsh, 0, "")} | ${shown(row.againstSingleBoots, 2, " x")} | ${shown(row.memAvailableDropMiB, 0, " MiB")} | ${shown(row.meanPssMiB, 0, " MiB")} | ${shown(row.idleCpuPercent, 1, " %")} | ${shown(row.baseCachedMiB, 0, " MiB")} | ${shown(row.guestUsedMiB, 0, " MiB")} |`,
    );
  }
  const notes = rows.filter((row) => row.note !== undefined);
  return `${lines.join("\n")}\n${notes.map((row) => `\n${row.image} ${row.count}, ${row.way}: ${row.note}\n`).join("")}`;
}

/** Mean QEMU PSS per VM against N, one line per image and way, on log-scaled N. */
function plot(rows: readonly Row[]): string {
  const [width, height, left, bottom] = [640, 360, 60, 40];
  const xs = [...new Set(rows.map((row) => row.count))].sort((a, b) => a - b);
  const maxY = Math.max(...rows.map((row) => row.meanPssMiB ?? 0), 1) * 1.1;
  const x = (n: number) =>
    left +
    ((Math.log(n) - Math.log(xs[0] ?? 1)) /
      Math.max(Math.log(xs.at(-1) ?? 2) - Math.log(xs[0] ?? 1), 1e-9)) *
      (width - left - 20);
  const y = (mib: number) => height - bottom - (mib / maxY) * (height - bottom - 20);
  const colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"];
  const series = [...new Set(rows.map((row) => `${row.image}, ${row.way}`))];
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    "<title>Host memory per idle VM (mean QEMU PSS) against the number of VMs</title>",
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<line x1="${left}" y1="${y(0)}" x2="${width - 20}" y2="${y(0)}" stroke="black"/>`,
    `<line x1="${left}" y1="20" x2="${left}" y2="${y(0)}" stroke="black"/>`,
    `<text x="${width / 2}" y="${height - 8}" text-anchor="middle">VMs (N)</text>`,
    `<text x="14" y="${height / 2}" transform="rotate(-90 14 ${height / 2})" text-anchor="middle">mean QEMU PSS per VM (MiB)</text>`,
    ...xs.map((n) => `<text x="${x(n)}" y="${y(0) + 16}" text-anchor="middle">${n}</text>`),
    ...[0, 0.25, 0.5, 0.75, 1].map(
      (f) =>
        `<text x="${left - 6}" y="${y(f * maxY) + 4}" text-anchor="end">${(f * maxY).toFixed(0)}</text>`,
    ),
  ];
  series.forEach((name, i) => {
    const points = rows
      .filter((row) => `${row.image}, ${row.way}` === name && row.meanPssMiB !== undefined)
      .map((row) => `${x(row.count).toFixed(1)},${y(row.meanPssMiB ?? 0).toFixed(1)}`);
    const colour = colours[i % colours.length];
    parts.push(
      `<polyline fill="none" stroke="${colour}" stroke-width="2" points="${points.join(" ")}"/>`,
      ...points.map((point) => {
        const [px, py] = point.split(",");
        return `<circle cx="${px}" cy="${py}" r="3" fill="${colour}"/>`;
      }),
      `<text x="${left + 10}" y="${20 + 16 * i}" fill="${colour}">${name}</text>`,
    );
  });
  parts.push("</svg>");
  return `${parts.join("\n")}\n`;
}

function writeResults(rows: readonly Row[], header: string): void {
  const results = join("bench", "results");
  mkdirSync(results, { recursive: true });
  writeFileSync(join(results, "density.json"), `${JSON.stringify({ header, rows }, null, 2)}\n`);
  writeFileSync(join(results, "density.md"), `${header}\n\n${table(rows)}`);
  writeFileSync(join(results, "density.svg"), plot(rows));
  console.log(`${header}\n\n${table(rows)}`);
}

async function run(): Promise<void> {
  const plan: [ImageName, number[]][] = [
    ["tiny", counts("--tiny", [10, 50, 100, 200])],
    ["debian", counts("--debian", [5, 20])],
  ];
  const dir = mkdtempSync(join(tmpdir(), "shoal-bench-"));
  chmodSync(dir, 0o755);
  const state = join(dir, "state");
  const rows: Row[] = [];
  let header = `${availableParallelism()} CPUs, ${(meminfoMiB().MemTotal ?? 0).toFixed(0)} MiB, ${BENCH_ACCEL}; ${new Date().toISOString()}`;
  const add = (row: Row) => {
    rows.push(row);
    writeResults(rows, header);
  };
  try {
    for (const [image, ns] of plan) {
      if (ns.length === 0) continue;
      shoal(state, ["image", "build", image, ...IMAGES[image].build]);
      const oneBoot = singleBoot(state, dir, image);
      header += `; one ${image} VM alone answers SSH after ${oneBoot.toFixed(1)} s`;
      for (const n of ns) {
        add(await shoalRun(state, dir, image, n, oneBoot));
        if (n * DIY_FOOTPRINT_MIB[image] < 0.9 * (meminfoMiB().MemAvailable ?? 0)) {
          add(await plainRun(state, dir, image, n));
        } else {
          console.log(
            `${image} ${n}: plain QEMU left out, ${n} x ${DIY_FOOTPRINT_MIB[image]} MiB would not fit`,
          );
        }
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// --replot writes the table and the plot again from the last run's density.json.
if (process.argv.includes("--replot")) {
  const last = JSON.parse(readFileSync(join("bench", "results", "density.json"), "utf8")) as
    | Row[]
    | { header: string; rows: Row[] };
  if (Array.isArray(last)) writeResults(last, "(machine not recorded)");
  else writeResults(last.rows, last.header);
} else {
  await run();
}

import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { domainUuid } from "../../src/backends/xl/xen.js";
import { namespaceName } from "../../src/core/net.js";
import { stateLayout } from "../../src/state/layout.js";
import { sharedImage } from "../helpers/images.js";
import { DOM0_ROOT, prebuilt } from "../helpers/prebuilt.js";
import { useFileTempDir } from "../helpers/tmp.js";
import { sha256 } from "../helpers/vm.js";
import { XenLab } from "../helpers/xen-lab.js";

/**
 * backend: xl on real Xen: shoal runs in the dom0 of a Xen booted inside QEMU (see
 * helpers/xen-lab.ts) and brings up PV domUs of the tiny image there. The tests build on each
 * other, in order, on one fleet.
 */

const hostState = useFileTempDir("shoal-xen-state-");
const labDir = useFileTempDir("shoal-xen-lab-");
let lab: XenLab | undefined;
const bases: Record<string, { path: string; sum: string }> = {};

const FLEET_FILE = "/root/xf.yaml";
/** shoal's default state directory, which it uses in dom0. */
const DOM0_STATE = "/var/lib/shoal";
// Ten domUs side by side at first, half of them with a tmpfs layer; then the fleet file shrinks
// to two for down/up, upgrade and the crash, which each boot every domU again: every domain boots
// under Xen inside QEMU's software emulation, and two keep those within the test budget. 128M
// each: Debian's kernel alone takes 58 MiB of a PV domU, and 64M does not boot (README).
const WIDE = 10;
const NARROW = 2;
/** Between the two VMs' groups: 40 ms each way, on the domUs' vifs in the fleet's namespace. */
const IMPAIRED = [
  "groups: { a: vm-1, b: vm-2 }",
  "impairments: [ { group: a, to: b, delay: 40ms } ]",
];
const vmNames = (count: number) => Array.from({ length: count }, (_, i) => `vm-${i + 1}`);
/** The fleet's VMs as the fleet file has them now. */
let VMS = vmNames(WIDE);
/** Even-numbered VMs have a tmpfs layer, odd ones a disk layer. */
const hasTmpfsLayer = (vm: string) => Number(vm.slice(3)) % 2 === 0;
function fleetFile(count: number, image?: string): string {
  const tmpfs = vmNames(count).filter(hasTmpfsLayer);
  return [
    "name: xf",
    "backend: xl",
    `count: ${count}`,
    "vm: { layer: { type: disk, size: 64M } }",
    `vms: [${tmpfs.map((vm) => `{ name: ${vm}, layer: { type: tmpfs } }`).join(", ")}]`,
    ...(image ? [`image: ${image}`] : []),
    // The narrow fleet's two VMs are two groups, 40 ms apart each way, from its first `up`.
    ...(count === NARROW ? IMPAIRED : []),
    "",
  ].join("\n");
}
/** What the fleet's domUs hold in dom0: the base once, each one's seed and each disk layer. */
const loopsFor = (vms: readonly string[]) =>
  1 + vms.length + vms.filter((vm) => !hasTmpfsLayer(vm)).length;

async function writeFleetFile(text: string): Promise<void> {
  const written = await theLab().ssh(`cat > ${FLEET_FILE}`, text);
  expect(written.code, written.stderr).toBe(0);
}

function theLab(): XenLab {
  if (!lab) throw new Error("the Xen lab did not start");
  return lab;
}

/** A command in dom0 that must succeed; its stdout. */
async function inDom0(command: string): Promise<string> {
  const result = await theLab().ssh(command);
  expect(result.code, `${command}\n${result.stderr}`).toBe(0);
  return result.stdout;
}

async function shoalOk(...args: string[]): Promise<string> {
  const result = await theLab().shoal(args);
  expect(result.code, `shoal ${args.join(" ")}\n${result.stderr}\n${result.stdout}`).toBe(0);
  return result.stdout;
}

interface UpRow {
  name: string;
  state: string;
  done: string[];
  ok: boolean;
}

/**
 * `up` of the whole fleet at once; its rows for the fleet's VMs (not for VMs it deleted). Ten
 * domUs booting under a Xen that is itself emulated take minutes each: they are given 10.
 */
async function up(): Promise<UpRow[]> {
  const rows = JSON.parse(
    await shoalOk("up", "-f", FLEET_FILE, "--workers", String(WIDE), "--timeout", "600", "--json"),
  ) as UpRow[];
  const kept = rows.filter((row) => VMS.includes(row.name));
  expect(kept.map((row) => [row.name, row.state, row.ok])).toEqual(
    VMS.map((vm) => [vm, "running", true]),
  );
  return rows;
}

/** Each VM's answer to a shell line, through `shoal exec --all` (SSH over the fleet's network). */
async function answers(line: string): Promise<Record<string, string>> {
  const outcomes = JSON.parse(
    await shoalOk("exec", "-f", FLEET_FILE, "--all", "--json", "--", line),
  ) as { name: string; exitCode: number; stdout: string }[];
  return Object.fromEntries(outcomes.map((outcome) => [outcome.name, outcome.stdout.trim()]));
}

/**
 * The shortest round trip between the two domUs with 1 ms each way. This lab's dom0 runs under
 * emulation, whose timers fire late by some milliseconds (more under load): a delay of 1 ms pays
 * that as 40 ms does, so the path's 80 ms are measured over it.
 */
let control = 0;
let ips: Record<string, string> | undefined;

/** Round trips of `count` pings from one VM to another, in ms: min, avg and max as ping has them. */
async function roundTrips(from: string, to: string, count: number) {
  if (ips === undefined) {
    const ps = JSON.parse(await shoalOk("ps", "-f", FLEET_FILE, "--json")) as {
      name: string;
      ip: string;
    }[];
    ips = Object.fromEntries(ps.map((row) => [row.name, row.ip]));
  }
  const out = await shoalOk(
    "exec",
    "-f",
    FLEET_FILE,
    from,
    "--",
    "ping",
    "-q",
    "-c",
    String(count),
    "-i",
    "0.2",
    `${ips[to]}`,
  );
  const [, min, avg, max] = /min\/avg\/max = ([\d.]+)\/([\d.]+)\/([\d.]+)/.exec(out) ?? [];
  expect(min, out).toBeDefined();
  return { min: Number(min), avg: Number(avg), max: Number(max) };
}

/** The domUs Xen has, by name. */
async function domains(): Promise<string[]> {
  const list = await inDom0("xl list");
  return list
    .split("\n")
    .slice(1)
    .map((line) => line.split(/\s+/)[0] ?? "")
    .filter((name) => name !== "" && name !== "Domain-0")
    .sort();
}

beforeAll(async () => {
  const state = hostState();
  for (const [name, copy] of [
    ["tiny", 1],
    ["tiny-next", 2],
  ] as const) {
    const image = await sharedImage(state, name, { from: "busybox", copy });
    bases[name] = {
      path: `${DOM0_STATE}/images/${image.id}/base.img`,
      sum: await sha256(stateLayout(state).image(image.id).base),
    };
  }
  // Assigned before it starts: afterAll stops whatever of it started, also after a timeout.
  const dom0Root = await prebuilt(inject("imageCache"), DOM0_ROOT);
  lab = new XenLab({
    dir: labDir(),
    images: state,
    namespace: `shoal-xenlab-${process.pid}`,
    ...(dom0Root === undefined ? {} : { dom0Root }),
  });
  await lab.start();
  await writeFleetFile(fleetFile(WIDE));
});

afterAll(async () => {
  await lab?.stop();
});

/** dom0's loop devices: device, read-only flag and backing file. */
async function loops(): Promise<{ device: string; ro: string; file: string }[]> {
  return (await inDom0("losetup --list --noheadings --output NAME,RO,BACK-FILE"))
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => {
      const [device = "", ro = "", file = ""] = line.trim().split(/\s+/);
      return { device, ro, file };
    });
}

/** The device each running domU's first disk (xvda, the base) is, from its xenstore backend. */
async function baseDevices(): Promise<string[]> {
  const out = await inDom0(
    `for id in $(xenstore-list /local/domain/0/backend/vbd); do xenstore-read /local/domain/0/backend/vbd/$id/51712/physical-device-path; done`,
  );
  return out.split("\n").filter(Boolean);
}

/** A value for each VM, by name. */
function everyVm<T>(value: (vm: string) => T): Record<string, T> {
  return Object.fromEntries(VMS.map((vm) => [vm, value(vm)]));
}

describe("backend xl on real Xen", () => {
  it("`shoal doctor` in dom0 finds everything backend xl needs, and what the fleet takes", async () => {
    const doctor = await shoalOk("doctor", "-f", FLEET_FILE);
    expect(doctor).toMatch(/^Xen dom0\s+ok\s+control domain$/m);
    expect(doctor).toMatch(/^xenstored\s+(ok|WARN)\s+/m);
    expect(doctor).toMatch(/^dom0\s+ok\s+1024 MiB, 2 vCPUs/m);
    expect(doctor).toMatch(
      /^xenconsoled\s+ok\s+running, logs guest consoles in \/var\/log\/xen\/console$/m,
    );
    expect(doctor).toMatch(
      new RegExp(
        `^loop devices\\s+ok\\s+0 attached, at most \\d+; the fleet needs ${loopsFor(VMS)}$`,
        "m",
      ),
    );
    expect(doctor).toMatch(
      new RegExp(
        `^Xen memory\\s+ok\\s+Xen 4\\.17\\.\\d+, \\d+ MiB free, the fleet needs ${128 * WIDE} MiB$`,
        "m",
      ),
    );
    expect(doctor).toContain("backend xl can run VMs on this host");
  });

  it("refuses, before anything is made, a fleet that needs more memory than Xen has free", async () => {
    await inDom0(
      "printf 'name: big\\nbackend: xl\\ncount: 2\\nvm: { memory: 4096M }\\n' > /root/big.yaml",
    );
    const refused = await theLab().shoal(["up", "-f", "/root/big.yaml"]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(
      /^shoal: no room in this Xen host: the domUs to start need 8192 MiB and Xen has \d+ MiB free; fewer or smaller VMs/m,
    );
    // No domain, no VM; the fleet's lock is all that is there (taken before the fleet is looked
    // at), and goes.
    expect(
      await inDom0(
        "xl list | wc -l; ls /var/lib/shoal/fleets/big/vms 2>/dev/null | wc -l; rm -rf /var/lib/shoal/fleets/big",
      ),
    ).toBe("2\n0\n");
  });

  it("brings up PV domUs side by side on one read-only loop device of the base, each with its own layer and identity", async () => {
    const rows = await up();
    expect(rows.every((row) => row.done.join() === "create,start")).toBe(true);
    expect(await domains()).toEqual(VMS.map((vm) => `xf.${vm}`).sort());
    // The base once, read-only; a seed each; a layer each for the disk-layer domUs.
    const attached = await loops();
    const base = attached.filter((loop) => loop.file === bases.tiny?.path);
    expect(base.map((loop) => loop.ro)).toEqual(["1"]);
    expect(attached).toHaveLength(loopsFor(VMS));
    expect(await baseDevices()).toEqual(VMS.map(() => base[0]?.device));
    // Each domU also leaves a mark in its root, which `console` reads back below.
    const identities = await answers(
      "echo $(hostname) $(cat /etc/machine-id); echo from-$(hostname) > /root/mark",
    );
    expect(Object.keys(identities).sort()).toEqual([...VMS].sort());
    const ids = new Set<string>();
    for (const vm of VMS) {
      const [hostname, machineId] = (identities[vm] ?? "").split(" ");
      expect(hostname).toBe(vm);
      expect(machineId).toMatch(/^[0-9a-f]{32}$/);
      ids.add(machineId ?? "");
    }
    expect(ids.size).toBe(VMS.length);
    // Each VM's vif is on the fleet's bridge, in the fleet's namespace, not in dom0's.
    const namespace = namespaceName({ root: DOM0_STATE, fleet: "xf" });
    expect(await inDom0(`ip -n ${namespace} -o link show master shoal0 | wc -l`)).toBe(
      `${VMS.length}\n`,
    );
    expect(await inDom0("ip -o link | grep -c vif || true")).toBe("0\n");
    // Each domain carries its VM's UUID, which tells it from a domain of its name another state
    // directory made.
    const listed = await inDom0("xl list -v");
    for (const vm of VMS) {
      expect(listed).toMatch(
        new RegExp(`^xf\\.${vm} .* ${domainUuid({ root: DOM0_STATE, fleet: "xf" }, vm)} `, "m"),
      );
    }
  });

  it("shows the domUs in `ps`, their boot in `logs`, and answers on `console` with what it wrote itself", async () => {
    const ps = JSON.parse(await shoalOk("ps", "-f", FLEET_FILE, "--json")) as {
      name: string;
      state: string;
      backend: string;
      uptimeSeconds: number | null;
    }[];
    expect(ps).toHaveLength(VMS.length);
    for (const row of ps) {
      expect(row.state).toBe("running");
      expect(row.backend).toBe("xl");
      expect(row.uptimeSeconds).toBeGreaterThan(0);
    }
    expect(await shoalOk("logs", "--file", FLEET_FILE, "vm-2")).toContain(
      "shoal: root is the union of base",
    );
    // Every domU wrote its mark before this one reads it back: over one shared base, a write that
    // reached the base (or another's layer) would show another domU's mark here.
    const console = await theLab().ssh(
      `(echo 'echo answer-$((6 * 7)) $(cat /root/mark)'; sleep 3) | shoal console -f ${FLEET_FILE} vm-2`,
    );
    expect(console.code, console.stderr).toBe(0);
    expect(console.stdout).toContain("answer-42 from-vm-2");
  });

  it("keeps disk-layer changes across `down` and `up`, releasing every loop device in between; a tmpfs layer starts empty; VMs taken out of the fleet file go", async () => {
    // Ten emulated domUs shutting down at once may take longer than the default 60 s each.
    const down = await shoalOk(
      "down",
      "-f",
      FLEET_FILE,
      "--workers",
      String(WIDE),
      "--timeout",
      "300",
    );
    for (const vm of VMS) {
      if (new RegExp(`^${vm}\\s+clean$`, "m").test(down)) continue;
      // What the guest did with its power button, for the failure below.
      const log = await theLab().shoal(["logs", "--file", FLEET_FILE, vm]);
      expect(down, `${vm}'s console ends with:\n${log.stdout.slice(-2000)}`).toMatch(
        new RegExp(`^${vm}\\s+clean$`, "m"),
      );
    }
    expect(await domains()).toEqual([]);
    expect(await loops()).toEqual([]);
    const removed = VMS.slice(NARROW);
    VMS = vmNames(NARROW);
    await writeFleetFile(fleetFile(NARROW));
    const rows = await up();
    const deleted = rows.filter((row) => row.done.includes("delete")).map((row) => row.name);
    expect(deleted.sort()).toEqual(removed.sort());
    expect(await inDom0("ls /var/lib/shoal/fleets/xf/vms")).toBe(`${VMS.join("\n")}\n`);
    expect(await loops()).toHaveLength(loopsFor(VMS));
    expect(await answers("cat /root/mark 2>/dev/null || echo none")).toEqual(
      everyVm((vm) => (hasTmpfsLayer(vm) ? "none" : `from-${vm}`)),
    );
  });

  it("`upgrade` moves every domU to a new base with its layer kept, and the old base's loop device goes", async () => {
    // As a user does it: the fleet file names the new image, `upgrade` moves the VMs to it.
    await writeFleetFile(fleetFile(NARROW, "tiny-next"));
    const upgraded = JSON.parse(
      await shoalOk("upgrade", "-f", FLEET_FILE, "--max-unavailable", String(NARROW), "--json"),
    ) as { name: string; outcome: string }[];
    expect(upgraded.map((report) => report.outcome)).toEqual(VMS.map(() => "upgraded"));
    const attached = await loops();
    expect(attached.filter((loop) => loop.file === bases.tiny?.path)).toEqual([]);
    const next = attached.filter((loop) => loop.file === bases["tiny-next"]?.path);
    expect(next.map((loop) => loop.ro)).toEqual(["1"]);
    expect(await baseDevices()).toEqual(VMS.map(() => next[0]?.device));
    expect(await answers("cat /root/mark 2>/dev/null || echo none")).toEqual(
      everyVm((vm) => (hasTmpfsLayer(vm) ? "none" : `from-${vm}`)),
    );
  });

  it("delays traffic between groups on the domUs' vifs with Debian's kernel's netem: 40 ms each way adds 80 ms to a round trip, within 10%; jitter spreads it", async () => {
    // The fleet file's 40 ms, on since the narrow fleet's `up` and kept through the upgrade.
    const delayed = await roundTrips("vm-1", "vm-2", 20);
    await shoalOk("net", "set", "-f", FLEET_FILE, "--group", "a", "--to", "b", "--delay", "1ms");
    const least = await roundTrips("vm-1", "vm-2", 20);
    control = least.min;
    const shown = (trips: typeof least) => `${trips.min}/${trips.avg}/${trips.max}`;
    console.log(
      `Xen lab: ping vm-1 -> vm-2 min/avg/max with 1 ms each way ${shown(least)} ms, with 40 ms ${shown(delayed)} ms`,
    );
    expect(Math.abs(delayed.min - control - 78)).toBeLessThan(8);
    const jitter = ["--delay", "40ms", "--jitter", "10ms"];
    await shoalOk("net", "set", "-f", FLEET_FILE, "--group", "a", "--to", "b", ...jitter);
    const jittered = await roundTrips("vm-1", "vm-2", 20);
    console.log(`Xen lab: with 10 ms of jitter each way ${shown(jittered)} ms`);
    // 80 ms give or take 20: spread out, and never below the shortest the jitter allows.
    expect(jittered.max - jittered.min).toBeGreaterThan(10);
    expect(jittered.min).toBeGreaterThan(control + 58 - 8);
    await shoalOk("net", "reset", "-f", FLEET_FILE);
  });

  it("shows a domU destroyed behind shoal's back as crashed; an `up` SIGKILLed while it boots the domU again is finished by the next `up`, the domU running once", async () => {
    await inDom0("xl destroy xf.vm-2");
    const ps = JSON.parse(await shoalOk("ps", "-f", FLEET_FILE, "--json")) as {
      name: string;
      state: string;
    }[];
    expect(Object.fromEntries(ps.map((row) => [row.name, row.state]))).toEqual(
      everyVm((vm) => (vm === "vm-2" ? "crashed" : "running")),
    );
    await inDom0(
      `shoal up -f ${FLEET_FILE} 2>/tmp/up.err & up=$!
       until grep -q booting /tmp/up.err; do sleep 0.2; done
       kill -9 $up`,
    );
    const rows = await up();
    expect(rows.filter((row) => row.done.length > 0)).toEqual([]);
    expect(await domains()).toEqual(VMS.map((vm) => `xf.${vm}`).sort());
    expect(await answers("hostname")).toEqual(everyVm((vm) => vm));
    expect(await loops()).toHaveLength(loopsFor(VMS));
    // vm-2 came back on a new vif, which took the path's delay as the domain started.
    const again = await roundTrips("vm-1", "vm-2", 10);
    expect(Math.abs(again.min - control - 78)).toBeLessThan(8);
  });

  it("`destroy` leaves no domain, loop device, xenstore backend, vif, namespace or file; the bases are unchanged", async () => {
    await shoalOk("destroy", "-f", FLEET_FILE, "--yes", "--workers", String(NARROW));
    expect(await domains()).toEqual([]);
    expect(await loops()).toEqual([]);
    // libxl removed every disk's and interface's backend entry.
    expect(
      await inDom0(
        "for kind in vbd vif; do xenstore-list /local/domain/0/backend/$kind 2>/dev/null; done | wc -l",
      ),
    ).toBe("0\n");
    expect(await inDom0("ip -o link | grep -c vif || true")).toBe("0\n");
    expect(await inDom0("ip netns list")).toBe("");
    expect(await inDom0("ls -A /var/lib/shoal/fleets")).toBe("");
    expect(await inDom0("ls -A /var/lib/shoal/host/xl-bases 2>/dev/null || true")).toBe("");
    expect(await inDom0("ls -A /var/log/xen/console")).toBe("");
    expect(await inDom0("ls /var/log/xen | grep -c '^xl-' || true")).toBe("0\n");
    expect(await inDom0("ps -eo args= | grep -c '^xl create' || true")).toBe("0\n");
    for (const base of Object.values(bases)) {
      expect((await inDom0(`sha256sum ${base.path}`)).split(" ")[0]).toBe(base.sum);
    }
  });
});

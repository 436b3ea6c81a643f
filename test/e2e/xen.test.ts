import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { namespaceName } from "../../src/core/net.js";
import { domainUuid } from "../../src/core/xen.js";
import { stateLayout } from "../../src/state/layout.js";
import { sharedImage } from "../helpers/images.js";
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
let baseSum = "";
let basePath = "";

const FLEET_FILE = "/root/xf.yaml";
/** shoal's default state directory, which it uses in dom0. */
const DOM0_STATE = "/var/lib/shoal";
// Two domUs, one of each layer type: every domain boots under Xen inside QEMU's software
// emulation, a minute or more each.
const FLEET = "name: xf\nbackend: xl\ncount: 2\nvms: [{ name: vm-2, layer: { type: tmpfs } }]\n";
const VMS = ["vm-1", "vm-2"];

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

async function up(): Promise<UpRow[]> {
  const rows = JSON.parse(await shoalOk("up", "-f", FLEET_FILE, "--json")) as UpRow[];
  expect(rows.map((row) => [row.name, row.state, row.ok])).toEqual(
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
  const image = await sharedImage(state, "tiny", { from: "busybox" });
  basePath = `/var/lib/shoal/images/${image.id}/base.img`;
  baseSum = await sha256(stateLayout(state).image(image.id).base);
  // Assigned before it starts: afterAll stops whatever of it started, also after a timeout.
  lab = new XenLab({ dir: labDir(), images: state, namespace: `shoal-xenlab-${process.pid}` });
  await lab.start();
  const written = await theLab().ssh(`cat > ${FLEET_FILE}`, FLEET);
  expect(written.code, written.stderr).toBe(0);
});

afterAll(async () => {
  await lab?.stop();
});

describe("backend xl on real Xen", () => {
  it("`shoal doctor` in dom0 finds everything backend xl needs", async () => {
    const doctor = await shoalOk("doctor", "-f", FLEET_FILE);
    expect(doctor).toMatch(/^Xen dom0\s+ok\s+control domain$/m);
    expect(doctor).toMatch(
      /^xenconsoled\s+ok\s+running, logs guest consoles in \/var\/log\/xen\/console$/m,
    );
    expect(doctor).toMatch(
      /^Xen memory\s+ok\s+Xen 4\.17\.\d+, \d+ MiB free, the fleet needs 256 MiB$/m,
    );
    expect(doctor).toContain("backend xl can run VMs on this host");
  });

  it("brings up 2 PV domUs on one base, each with its own layer and identity", async () => {
    const rows = await up();
    expect(rows.every((row) => row.done.join() === "create,start")).toBe(true);
    expect(await domains()).toEqual(["xf.vm-1", "xf.vm-2"]);
    // Xen's block script attached the one raw base read-only once per domU.
    const loops = (await inDom0("losetup --list --noheadings --output RO,BACK-FILE"))
      .trim()
      .split("\n")
      .map((line) => line.trim().split(/\s+/));
    expect(loops.filter(([, file]) => file === basePath)).toEqual(VMS.map(() => ["1", basePath]));
    const identities = await answers("echo $(hostname) $(cat /etc/machine-id)");
    const ids = new Set<string>();
    for (const vm of VMS) {
      const [hostname, machineId] = (identities[vm] ?? "").split(" ");
      expect(hostname).toBe(vm);
      expect(machineId).toMatch(/^[0-9a-f]{32}$/);
      ids.add(machineId ?? "");
    }
    expect(ids.size).toBe(2);
    // Each VM's vif is on the fleet's bridge, in the fleet's namespace, not in dom0's.
    const namespace = namespaceName({ root: DOM0_STATE, fleet: "xf" });
    expect(await inDom0(`ip -n ${namespace} -o link show master shoal0 | wc -l`)).toBe("2\n");
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

  it("keeps what one domU writes out of the others", async () => {
    await shoalOk("exec", "-f", FLEET_FILE, "vm-1", "--", "echo from-vm-1 > /root/mark");
    expect(await answers("cat /root/mark 2>/dev/null || echo none")).toEqual({
      "vm-1": "from-vm-1",
      "vm-2": "none",
    });
    await shoalOk("exec", "-f", FLEET_FILE, "vm-2", "--", "echo from-vm-2 > /root/mark");
    expect(await answers("cat /root/mark")).toEqual({ "vm-1": "from-vm-1", "vm-2": "from-vm-2" });
  });

  it("shows the domUs in `ps`, their boot in `logs`, and answers on `console`", async () => {
    const ps = JSON.parse(await shoalOk("ps", "-f", FLEET_FILE, "--json")) as {
      name: string;
      state: string;
      backend: string;
      uptimeSeconds: number | null;
    }[];
    for (const row of ps) {
      expect(row.state).toBe("running");
      expect(row.backend).toBe("xl");
      expect(row.uptimeSeconds).toBeGreaterThan(0);
    }
    expect(await shoalOk("logs", "--file", FLEET_FILE, "vm-2")).toContain(
      "shoal: root is the union of base",
    );
    const console = await theLab().ssh(
      `(echo 'echo answer-$((6 * 7))'; sleep 3) | shoal console -f ${FLEET_FILE} vm-2`,
    );
    expect(console.code, console.stderr).toBe(0);
    expect(console.stdout).toContain("answer-42");
  });

  it("keeps disk-layer changes across `down` and `up`; a tmpfs layer starts empty", async () => {
    const down = await shoalOk("down", "-f", FLEET_FILE);
    expect(down).toMatch(/^vm-1\s+clean$/m);
    expect(down).toMatch(/^vm-2\s+clean$/m);
    expect(await domains()).toEqual([]);
    expect(await inDom0("losetup --list --noheadings | wc -l")).toBe("0\n");
    await up();
    expect(await answers("cat /root/mark 2>/dev/null || echo none")).toEqual({
      "vm-1": "from-vm-1",
      "vm-2": "none",
    });
  });

  it("shows a domU destroyed behind shoal's back as crashed; an `up` SIGKILLed while it boots the domU again is finished by the next `up`, the domU running once", async () => {
    await inDom0("xl destroy xf.vm-2");
    const ps = JSON.parse(await shoalOk("ps", "-f", FLEET_FILE, "--json")) as {
      name: string;
      state: string;
    }[];
    expect(ps.map((row) => [row.name, row.state])).toEqual([
      ["vm-1", "running"],
      ["vm-2", "crashed"],
    ]);
    await inDom0(
      `shoal up -f ${FLEET_FILE} 2>/tmp/up.err & up=$!
       until grep -q booting /tmp/up.err; do sleep 0.2; done
       kill -9 $up`,
    );
    const rows = await up();
    expect(rows[0]?.done).toEqual([]);
    expect(await domains()).toEqual(["xf.vm-1", "xf.vm-2"]);
    expect(await answers("hostname")).toEqual({ "vm-1": "vm-1", "vm-2": "vm-2" });
  });

  it("`destroy` leaves no domain, loop device, vif, namespace or file; the base is unchanged", async () => {
    await shoalOk("destroy", "-f", FLEET_FILE, "--yes");
    expect(await domains()).toEqual([]);
    expect(await inDom0("losetup --list --noheadings | wc -l")).toBe("0\n");
    expect(await inDom0("ip -o link | grep -c vif || true")).toBe("0\n");
    expect(await inDom0("ip netns list")).toBe("");
    expect(await inDom0("ls -A /var/lib/shoal/fleets")).toBe("");
    expect(await inDom0("ls -A /var/log/xen/console")).toBe("");
    expect(await inDom0("ls /var/log/xen | grep -c '^xl-' || true")).toBe("0\n");
    expect(await inDom0("ps -eo args= | grep -c '^xl create' || true")).toBe("0\n");
    expect((await inDom0(`sha256sum ${basePath}`)).split(" ")[0]).toBe(baseSum);
  });
});

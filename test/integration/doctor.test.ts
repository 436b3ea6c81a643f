import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { shoal } from "../helpers/cli.js";
import { useFileTempDir, useTempDirs } from "../helpers/tmp.js";

/** `shoal doctor` on this machine, which has QEMU (KVM or not) and is no Xen dom0. */

const tempDir = useTempDirs();
// One state directory, so that the KVM probe runs once (its answer is kept per host boot).
const stateDir = useFileTempDir("shoal-doctor-");

describe("shoal doctor", () => {
  it("finds QEMU's tools with their versions and says whether KVM or software emulation will run VMs", async () => {
    const result = await shoal(["--state-dir", stateDir(), "doctor"]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/^shoal doctor: backend qemu$/m);
    expect(result.stdout).toMatch(/^qemu-system-x86_64 +ok +QEMU emulator version \d+\.\d+/m);
    expect(result.stdout).toMatch(/^dnsmasq +ok +Dnsmasq version \d/m);
    expect(result.stdout).toMatch(/^ssh +ok +OpenSSH_\d/m);
    // scripts/setup made QEMU's user, in /dev/kvm's group.
    expect(result.stdout).toMatch(
      /^QEMU user +ok +shoal-qemu \(uid \d+\): each QEMU runs as it, under its seccomp sandbox$/m,
    );
    // The same probe `up` runs: KVM works, or it says why and that TCG will be used.
    expect(result.stdout).toMatch(/^KVM +(ok +works|WARN +.*software emulation \(TCG\))/m);
    expect(result.stdout).toMatch(
      /^KSM +ok +(off; `shoal host ksm on`|on, [\d.]+[BKMG] saved now)/m,
    );
    // This kind of machine's kernel shapes and filters but has no netem; Debian's has it all.
    expect(result.stdout).toMatch(
      /^impairments +(ok +all: rate, loss, partitions, delay, jitter, corruption, duplication|WARN +rate, loss, partitions; this kernel lacks netem \(sch_netem\))$/m,
    );
    expect(result.stdout.trim().split("\n").at(-1)).toBe("backend qemu can run VMs on this host");
  });

  it("says clearly that xl cannot run here and why, with the fix, and exits 1", async () => {
    const result = await shoal(["--state-dir", stateDir(), "doctor", "--backend", "xl"]);
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(
      /^Xen dom0 +FAIL +this host is not a Xen dom0, so backend xl cannot run VMs here: /m,
    );
    expect(result.stdout).toContain("fix: boot the host into Xen");
    expect(result.stderr.trim()).toMatch(
      /^shoal: backend xl cannot run VMs on this host: (xl, )?(xenstore-read, )?Xen dom0$/,
    );
  });

  it("checks the fleet file's backend and its host bridge; a bad --backend is bad input", async () => {
    const dir = await tempDir();
    const file = join(dir, "shoal.yaml");
    await writeFile(
      file,
      "name: doc\nnetwork: { subnet: 10.121.0.0/24, bridge: br-nosuch, managed: false }\n",
    );
    const result = await shoal(["--state-dir", stateDir(), "doctor", "-f", file]);
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(/^shoal doctor: backend qemu \(fleet doc\)$/m);
    expect(result.stdout).toMatch(
      /^bridge +FAIL +network\.bridge br-nosuch does not exist on this host$/m,
    );
    const bad = await shoal(["--state-dir", dir, "doctor", "--backend", "vbox"]);
    expect(bad.code).toBe(2);
  });
});

describe("shoal host ksm", () => {
  const run = "/sys/kernel/mm/ksm/run";
  let before: string;
  beforeAll(async () => {
    before = (await readFile(run, "utf8")).trim();
  });
  // Host-wide: put back what the host had (0 and 2 both mean stopped; 2 also unmerged).
  afterAll(async () => {
    await writeFile(run, before === "1" ? "1" : "2");
  });

  it("turns merging on and off for the whole host only when asked, saying what it trades", async () => {
    const shown = await shoal(["host", "ksm"]);
    expect(shown.code, shown.stderr).toBe(0);
    expect((await readFile(run, "utf8")).trim()).toBe(before);

    const on = await shoal(["host", "ksm", "on"]);
    expect(on.code, on.stderr).toBe(0);
    expect((await readFile(run, "utf8")).trim()).toBe("1");
    expect(on.stdout).toMatch(/^KSM: on, [\d.]+[BKMG] saved now .*side channel between VMs/);

    const off = await shoal(["host", "ksm", "off"]);
    expect(off.code, off.stderr).toBe(0);
    // Stopped and every merged page unmerged: nothing stays shared between VMs.
    expect((await readFile(run, "utf8")).trim()).toBe("2");
    expect(off.stdout).toMatch(/^KSM: off; `shoal host ksm on` merges/);

    const bad = await shoal(["host", "ksm", "maybe"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("Allowed choices are on, off");
  });
});

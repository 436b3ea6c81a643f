import { appendFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { waitForBoot } from "../../src/guest/boot-wait.js";
import { useTempDirs } from "../helpers/tmp.js";

const tempDir = useTempDirs();

/** A boot watch on a fresh serial log, counting how often the hypervisor is asked. */
async function watched(timeoutMs: number, stoppedAnswer?: string, untilBooted = false) {
  const serialLog = join(await tempDir(), "serial.log");
  await writeFile(serialLog, "an earlier boot: shoal: root is the union of base and layer\n");
  const { size: offset } = await stat(serialLog);
  const asked: number[] = [];
  const begun = Date.now();
  const outcome = (...lines: { afterMs: number; line: string }[]) => {
    for (const { afterMs, line } of lines) {
      setTimeout(() => void appendFile(serialLog, line), afterMs);
    }
    return waitForBoot({
      vm: "vm-1",
      serialLog,
      offset,
      timeoutMs,
      untilBooted,
      stopped: async () => {
        asked.push(Date.now() - begun);
        return stoppedAnswer;
      },
    });
  };
  return { outcome, asked };
}

describe("waiting for a boot", () => {
  it("reads only this boot's output, and asks the hypervisor once, not at every look at the log", async () => {
    const watch = await watched(10_000);
    expect(
      await watch.outcome({ afterMs: 1_200, line: "shoal: root is the union of base and layer\n" }),
    ).toEqual({ ready: true });
    expect(watch.asked).toHaveLength(1);
  });

  it("names the guest's FATAL line", async () => {
    const watch = await watched(10_000);
    expect(
      await watch.outcome({ afterMs: 300, line: "shoal: FATAL: no layer device\x1b[0m\r\n" }),
    ).toEqual({ ready: false, why: "no layer device\\x1b[0m" });
  });

  it("gives up at once when the guest's kernel panics, naming the panic", async () => {
    const watch = await watched(10_000);
    expect(
      await watch.outcome({
        afterMs: 300,
        line: "[    1.2] Kernel panic - not syncing: IO-APIC + timer doesn't work!\x07 Boot with apic=debug\r\n",
      }),
    ).toEqual({
      ready: false,
      why: "its kernel panicked: IO-APIC + timer doesn't work!\\x07 Boot with apic=debug; it keeps running, see `shoal logs vm-1`",
    });
    expect(watch.asked.length).toBeLessThanOrEqual(1);
  });

  it("says so when the VM stopped while booting", async () => {
    const watch = await watched(10_000, "powered-off");
    expect(await watch.outcome()).toEqual({
      ready: false,
      why: "it stopped while booting (powered-off); see `shoal logs vm-1`",
    });
  });

  it("for an image that reports its boot, waits past the union root until it does", async () => {
    const watch = await watched(10_000, undefined, true);
    const begun = Date.now();
    expect(
      await watch.outcome(
        { afterMs: 300, line: "shoal: root is the union of base and layer\n" },
        { afterMs: 2_000, line: "shoal-identity: hostname=vm-1 machine-id=1 hostkey=k\n" },
      ),
    ).toEqual({ ready: true });
    expect(Date.now() - begun).toBeGreaterThanOrEqual(2_000);
  });

  it("counts a boot whose image never reported by the timeout as booted once its union root was up", async () => {
    const watch = await watched(2_000, undefined, true);
    const begun = Date.now();
    expect(
      await watch.outcome({ afterMs: 300, line: "shoal: root is the union of base and layer\n" }),
    ).toEqual({ ready: true });
    expect(Date.now() - begun).toBeGreaterThanOrEqual(2_000);
  });

  it("does not take an identity line from before the union root as the boot's end", async () => {
    const watch = await watched(2_000, undefined, true);
    const begun = Date.now();
    expect(
      await watch.outcome({
        afterMs: 300,
        line: "shoal-identity: hostname=vm-1 machine-id=1 hostkey=k\nshoal: root is the union of base and layer\n",
      }),
    ).toEqual({ ready: true });
    expect(Date.now() - begun).toBeGreaterThanOrEqual(2_000);
  });

  it("gives up at the timeout, having asked the hypervisor every 5 s and once more at the end", async () => {
    const watch = await watched(6_000);
    expect(await watch.outcome()).toEqual({
      ready: false,
      why: "not booted after 6 s; it keeps running, see `shoal logs vm-1`",
    });
    expect(watch.asked).toHaveLength(3);
    expect(watch.asked[1]).toBeGreaterThanOrEqual(5_000);
    expect(watch.asked[2]).toBeGreaterThanOrEqual(6_000);
  }, 15_000);
});

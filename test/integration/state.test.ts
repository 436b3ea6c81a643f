import { type ChildProcess, spawn } from "node:child_process";
import { mkdir, readdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ExitCode, ShoalError } from "../../src/errors.js";
import { ProcessRunner } from "../../src/host/runner.js";
import { removeStaleTempFiles, writeFileAtomic } from "../../src/state/atomic.js";
import { checkSocketPaths, stateLayout } from "../../src/state/layout.js";
import { acquireLock, FleetLocked } from "../../src/state/lock.js";
import { readFleetRecord, recordedSpecs, writeFleetRecord } from "../../src/state/store.js";
import { createdRecord, fleetOf } from "../helpers/fleet.js";
import { useTempDirs } from "../helpers/tmp.js";

const tempDir = useTempDirs();
const SRC = new URL("../../src/", import.meta.url).href;
const children: ChildProcess[] = [];

afterEach(() => {
  for (const child of children.splice(0)) child.kill("SIGKILL");
});

/** Runs a module snippet in a separate node process on shoal's sources (tsx), as a second shoal would. */
function nodeProcess(code: string): ChildProcess {
  const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", code], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  children.push(child);
  return child;
}

function firstLine(child: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    let buffered = "";
    child.stdout?.on("data", (chunk) => {
      buffered += chunk;
      if (buffered.includes("\n")) resolve(buffered.split("\n")[0] ?? "");
    });
    child.on("exit", (code) => reject(new Error(`child exited with ${code} before printing`)));
  });
}

function exited(child: ChildProcess): Promise<void> {
  return new Promise((resolve) =>
    child.exitCode !== null || child.signalCode !== null
      ? resolve()
      : child.on("exit", () => resolve()),
  );
}

/** Another process that takes the lock and reports "locked"; optionally starts a long-lived child first. */
function holder(lock: string, options: { spawnSleeper?: boolean } = {}): ChildProcess {
  return nodeProcess(`
    const { acquireLock } = await import("${SRC}state/lock.js");
    const { ProcessRunner } = await import("${SRC}host/runner.js");
    const { spawn } = await import("node:child_process");
    await acquireLock(new ProcessRunner(), ${JSON.stringify(lock)}, { subject: "fleet lab", command: "up", waitSeconds: 0 });
    ${options.spawnSleeper ? 'const s = spawn("sleep", ["30"], { detached: true, stdio: "ignore" }); s.unref(); console.log("sleeper " + s.pid);' : ""}
    console.log("locked " + process.pid);
    process.stdin.on("data", () => process.exit(0));
  `);
}

describe("atomic writes", () => {
  it("write the content with exactly the mode asked for, whatever the umask", async () => {
    const dir = await tempDir();
    const previous = process.umask(0o077);
    try {
      await writeFileAtomic(join(dir, "public"), "a", 0o644);
    } finally {
      process.umask(previous);
    }
    await writeFileAtomic(join(dir, "secret"), "b", 0o600);
    expect((await stat(join(dir, "public"))).mode & 0o777).toBe(0o644);
    expect((await stat(join(dir, "secret"))).mode & 0o777).toBe(0o600);
    expect(await readFile(join(dir, "secret"), "utf8")).toBe("b");
    expect(await readdir(dir)).toEqual(["public", "secret"]);
  });

  it("leave the old or the new content when the writer is killed, never a mix", async () => {
    const dir = await tempDir();
    const path = join(dir, "state.json");
    const small = "x".repeat(10);
    const large = "y".repeat(4 * 1024 * 1024);
    await writeFile(path, small);
    for (let round = 0; round < 5; round++) {
      const writer = nodeProcess(`
        const { writeFileAtomic } = await import("${SRC}state/atomic.js");
        console.log("writing");
        for (let i = 0; ; i++) await writeFileAtomic(${JSON.stringify(path)}, i % 2 ? ${JSON.stringify(small)} : "y".repeat(${large.length}));
      `);
      await firstLine(writer);
      await new Promise((resolve) => setTimeout(resolve, 20 + round * 37));
      writer.kill("SIGKILL");
      await exited(writer);
      const content = await readFile(path, "utf8");
      expect([small.length, large.length]).toContain(content.length);
      expect(content === small || content === large).toBe(true);
    }
    // The killed writers' temporary files are cleaned up by the next command.
    const removed = await removeStaleTempFiles(dir);
    expect(await readdir(dir)).toEqual(["state.json"]);
    expect(removed.every((name) => name.endsWith(".shoal-tmp"))).toBe(true);
  });

  it("keep the temporary files of a live writer", async () => {
    const dir = await tempDir();
    const live = `.state.json.${process.pid}.abcd1234.shoal-tmp`;
    await writeFile(join(dir, live), "");
    expect(await removeStaleTempFiles(dir)).toEqual([]);
    expect(await readdir(dir)).toEqual([live]);
  });
});

describe("the fleet lock", () => {
  it("makes a second command fail at once with who holds it, when it may not wait", async () => {
    const lock = join(await tempDir(), "fleets", "lab", "lock");
    const other = holder(lock);
    const pid = Number((await firstLine(other)).split(" ")[1]);
    const failure = await acquireLock(new ProcessRunner(), lock, {
      subject: "fleet lab",
      command: "down",
      waitSeconds: 0,
      hint: "wait for it to finish, or give --lock-wait SECONDS to wait for it",
    }).catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(FleetLocked);
    expect((failure as FleetLocked).exitCode).toBe(ExitCode.locked);
    expect((failure as FleetLocked).lines()[0]).toMatch(
      new RegExp(
        `^fleet lab is busy: shoal up \\(pid ${pid}, since \\S+\\) holds its lock; wait for it to finish, or give --lock-wait SECONDS to wait for it$`,
      ),
    );
  });

  it("makes a second command wait until the first finishes", async () => {
    const lock = join(await tempDir(), "lock");
    const other = holder(lock);
    await firstLine(other);
    const waits: unknown[] = [];
    setTimeout(() => other.stdin?.write("done\n"), 300);
    const taken = await acquireLock(new ProcessRunner(), lock, {
      subject: "fleet lab",
      command: "up",
      waitSeconds: 20,
      onWait: (h) => waits.push(h),
    });
    expect(waits).toEqual([expect.objectContaining({ command: "up", pid: other.pid })]);
    expect(JSON.parse(await readFile(lock, "utf8"))).toMatchObject({
      pid: process.pid,
      command: "up",
    });
    await taken.release();
    // Released, the lock names nobody: whoever takes it next is not shown as this command.
    expect(await readFile(lock, "utf8")).toBe("");
  });

  it("held shared, lets other shared holders in and keeps an exclusive one out until the last goes", async () => {
    const lock = join(await tempDir(), "lock");
    const options = { subject: "the base", command: "xl create", waitSeconds: 0 };
    const runner = new ProcessRunner();
    const first = await acquireLock(runner, lock, { ...options, shared: true });
    const second = await acquireLock(runner, lock, { ...options, shared: true });
    await expect(acquireLock(runner, lock, options)).rejects.toThrow(FleetLocked);
    await first.release();
    await expect(acquireLock(runner, lock, options)).rejects.toThrow(FleetLocked);
    await second.release();
    const alone = await acquireLock(runner, lock, options);
    await expect(acquireLock(runner, lock, { ...options, shared: true })).rejects.toThrow(
      FleetLocked,
    );
    await alone.release();
  });

  it("gives up after waiting as long as it was told", async () => {
    const lock = join(await tempDir(), "lock");
    await firstLine(holder(lock));
    await expect(
      acquireLock(new ProcessRunner(), lock, {
        subject: "fleet lab",
        command: "up",
        waitSeconds: 1,
      }),
    ).rejects.toThrow("and did not finish within 1s");
  });

  it("is free again at once when its holder is killed with SIGKILL", async () => {
    const lock = join(await tempDir(), "lock");
    const other = holder(lock);
    await firstLine(other);
    other.kill("SIGKILL");
    await exited(other);
    const taken = await acquireLock(new ProcessRunner(), lock, {
      subject: "fleet lab",
      command: "up",
      waitSeconds: 0,
    });
    await taken.release();
  });

  it("is not kept by processes its holder started, such as VMs that outlive shoal", async () => {
    const lock = join(await tempDir(), "lock");
    const other = holder(lock, { spawnSleeper: true });
    const sleeper = Number((await firstLine(other)).split(" ")[1]);
    try {
      other.kill("SIGKILL");
      await exited(other);
      expect(() => process.kill(sleeper, 0)).not.toThrow();
      const taken = await acquireLock(new ProcessRunner(), lock, {
        subject: "fleet lab",
        command: "up",
        waitSeconds: 0,
      });
      await taken.release();
    } finally {
      process.kill(sleeper, "SIGKILL");
    }
  });

  it("is taken even in dry-run mode, where it changes nothing on the host", async () => {
    const lock = join(await tempDir(), "lock");
    await firstLine(holder(lock));
    const dryRun = new ProcessRunner({ dryRun: true, log: () => {} });
    await expect(
      acquireLock(dryRun, lock, { subject: "fleet lab", command: "up", waitSeconds: 0 }),
    ).rejects.toBeInstanceOf(FleetLocked);
  });
});

describe("the fleet record", () => {
  it("reads back what was written, and nothing for a fleet never recorded", async () => {
    const layout = stateLayout(await tempDir());
    expect(await readFleetRecord(layout, "lab")).toBeUndefined();
    const fleet = fleetOf("name: lab\ncount: 2\n");
    const stamp = "2026-01-01T00:00:00.000Z";
    const record = createdRecord(fleet, stamp);
    await writeFleetRecord(layout, record);
    const read = await readFleetRecord(layout, "lab");
    expect(read).toEqual(record);
    expect(recordedSpecs(read)).toEqual(new Map(fleet.vms.map((vm) => [vm.name, vm])));
  });

  it("refuses a state file it cannot read, saying which and what to do", async () => {
    const layout = stateLayout(await tempDir());
    await mkdir(layout.fleet("lab").dir, { recursive: true });
    await writeFile(layout.fleet("lab").state, '{"version": 99}');
    const failure = await readFleetRecord(layout, "lab").catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(ShoalError);
    expect((failure as ShoalError).lines()[0]).toBe(
      `the state file ${layout.fleet("lab").state} is not one shoal can read; it was written by another shoal version or edited by hand; restore it: it is the index of the fleet's VMs and their layers`,
    );
  });
});

describe("the state layout", () => {
  it("refuses a state directory whose path would break a config", () => {
    expect(() => stateLayout("/tmp/a,b")).toThrow('state directory "/tmp/a,b" is not usable');
    expect(() => stateLayout("/tmp/a b")).toThrow(ShoalError);
  });

  it("resolves a relative state directory against the working directory", () => {
    expect(stateLayout("state").root).toBe(join(process.cwd(), "state"));
  });

  it("refuses socket paths longer than Unix sockets take", () => {
    const layout = stateLayout(`/${"s".repeat(40)}`);
    expect(() => checkSocketPaths(layout, "lab", ["vm-1"])).not.toThrow();
    const failure = (() => {
      try {
        checkSocketPaths(layout, "x".repeat(30), ["y".repeat(30)]);
      } catch (error) {
        return error as ShoalError;
      }
      return undefined;
    })();
    expect(failure?.exitCode).toBe(ExitCode.badInput);
    expect(failure?.lines()[0]).toMatch(
      /socket path .* is 1\d\d bytes; Unix sockets take at most 107; use a shorter --state-dir, fleet name or VM name$/,
    );
  });
});

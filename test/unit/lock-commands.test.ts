import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { acquireLock, FleetLocked } from "../../src/state/lock.js";
import { RecordingRunner } from "../helpers/recording-runner.js";
import { useTempDirs } from "../helpers/tmp.js";

const tempDir = useTempDirs();

describe("the fleet lock's commands", () => {
  it("try flock without blocking first, then wait as long as allowed, on the lock file passed as fd 3", async () => {
    const runner = new RecordingRunner((command) => ({
      code: command.argv.includes("--nonblock") ? 1 : 0,
    }));
    const lock = await acquireLock(runner, join(await tempDir(), "lock"), {
      subject: "fleet lab",
      command: "up",
      waitSeconds: 5,
    });
    await lock.release();
    expect(runner.argvs).toEqual([
      ["flock", "--exclusive", "--nonblock", "3"],
      ["flock", "--exclusive", "--wait", "5", "3"],
    ]);
    expect(
      runner.commands.every((command) => command.probe === true && typeof command.fd3 === "number"),
    ).toBe(true);
  });

  it("do not wait at all when told not to", async () => {
    const runner = new RecordingRunner(() => ({ code: 1 }));
    await expect(
      acquireLock(runner, join(await tempDir(), "lock"), {
        subject: "fleet lab",
        command: "up",
        waitSeconds: 0,
      }),
    ).rejects.toBeInstanceOf(FleetLocked);
    expect(runner.argvs).toEqual([["flock", "--exclusive", "--nonblock", "3"]]);
  });
});

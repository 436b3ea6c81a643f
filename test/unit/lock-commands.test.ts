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

  it("name only the remedies of the lock at hand: the fleet's --lock-wait is not every lock's", async () => {
    const busy = (hint?: string) =>
      acquireLock(new RecordingRunner(() => ({ code: 1 })), join(dir, "lock"), {
        subject: "Xen's domain creation",
        command: "xl create",
        waitSeconds: 0,
        ...(hint === undefined ? {} : { hint }),
      }).catch((error: unknown) => (error as FleetLocked).lines());
    const dir = await tempDir();
    expect(await busy()).toEqual([
      "Xen's domain creation is busy: another shoal command holds its lock; wait for it to finish",
    ]);
    expect(await busy("see `xl list`")).toEqual([
      "Xen's domain creation is busy: another shoal command holds its lock; see `xl list`",
    ]);
  });
});

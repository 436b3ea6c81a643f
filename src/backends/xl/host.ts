import { readFile } from "node:fs/promises";
import { isSafePath } from "../../core/syntax.js";
import { ShoalError } from "../../errors.js";
import { ifExists } from "../../host/paths.js";
import { processesNamed } from "../../host/processes.js";
import type { Runner } from "../../host/runner.js";
import { loopDeviceLimit, parseXlInfo, type XenRoom, xenconsoledGuestLogDir } from "./xen.js";

export const XENCONSOLED_FIX =
  "start xenconsoled with --log=guest (Debian: XENCONSOLED_ARGS=--log=guest in /etc/default/xen, then /etc/init.d/xen restart)";

/** Where xenconsoled writes guest consoles; an error that says how to fix it when it does not. */
export async function consoleLogDir(processes = processesNamed): Promise<string> {
  const daemons = await processes("xenconsoled");
  if (daemons.length === 0) {
    throw new ShoalError("xenconsoled is not running: domUs would have no console or log", {
      hint: "/etc/init.d/xen start",
    });
  }
  // Only root's xenconsoled says where consoles go: shoal, as root, makes links in that directory.
  for (const { uid, argv } of daemons) {
    const dir = uid === 0 ? xenconsoledGuestLogDir(argv) : undefined;
    if (dir === undefined) continue;
    if (!isSafePath(dir)) {
      throw new ShoalError(
        `xenconsoled logs guest consoles in ${JSON.stringify(dir.slice(0, 80))}, which is no plain absolute path`,
        { hint: "give xenconsoled a --log-dir such as /var/log/xen/console" },
      );
    }
    return dir;
  }
  throw new ShoalError("xenconsoled does not log guest consoles, so shoal cannot see VMs boot", {
    hint: XENCONSOLED_FIX,
  });
}

/** What this dom0 has room for: Xen's free memory (`xl info`), loop devices attached and possible. */
export async function xenRoom(runner: Runner, sys = "/sys"): Promise<XenRoom> {
  const info = parseXlInfo((await runner.run({ argv: ["xl", "info"], probe: true })).stdout);
  const freeMemoryMiB = Number(info.get("free_memory"));
  if (!Number.isFinite(freeMemoryMiB)) {
    throw new ShoalError("`xl info` shows no free_memory", {
      hint: "is this a Xen dom0? (`shoal doctor --backend xl`)",
    });
  }
  const listing = await runner.run({
    argv: ["losetup", "--list", "--noheadings", "--output", "NAME"],
    probe: true,
  });
  const maxPart = Number(
    ((await ifExists(readFile(`${sys}/module/loop/parameters/max_part`, "utf8"))) ?? "0").trim(),
  );
  return {
    xenVersion: info.get("xen_version") ?? "?",
    freeMemoryMiB,
    loopDevicesAttached: listing.stdout.split("\n").filter((line) => line.trim() !== "").length,
    loopDeviceLimit: loopDeviceLimit(Number.isInteger(maxPart) ? maxPart : 0),
  };
}

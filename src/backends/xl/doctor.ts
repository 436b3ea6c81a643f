import { readFile } from "node:fs/promises";
import type { CheckResult } from "../../core/doctor.js";
import { ShoalError, undefinedUnlessBug } from "../../errors.js";
import { deviceCheck } from "../../host/doctor.js";
import { ifExists, pathExists } from "../../host/paths.js";
import { processesNamed } from "../../host/processes.js";
import type { Runner } from "../../host/runner.js";
import { consoleLogDir, XENCONSOLED_FIX, xenRoom } from "./host.js";
import { parseDom0, type XenNeeds, xenShortfall } from "./xen.js";

/**
 * Xen: shoal must run in dom0 of a host booted through the Xen hypervisor, with xenstored (xl
 * create hangs without it) and xenconsoled (consoles and logs), loop devices for file-backed disks,
 * and enough free memory in Xen for the fleet.
 */
export async function checkXenHost(
  runner: Runner,
  needs: XenNeeds | undefined,
): Promise<CheckResult[]> {
  const capabilities = await ifExists(readFile("/proc/xen/capabilities", "utf8"));
  if (capabilities === undefined || !capabilities.includes("control_d")) {
    const why =
      capabilities === undefined
        ? (await pathExists("/sys/hypervisor/type"))
          ? "/proc/xen/capabilities is missing (xenfs not mounted?)"
          : "the machine was not booted through the Xen hypervisor (no /proc/xen, no /sys/hypervisor)"
        : "this is a Xen guest (domU), not the control domain";
    return [
      {
        name: "Xen dom0",
        level: "fail",
        detail: `this host is not a Xen dom0, so backend xl cannot run VMs here: ${why}`,
        fix: "boot the host into Xen (Debian: apt-get install xen-system-amd64, reboot) and run shoal in dom0, or use backend: qemu",
      },
    ];
  }
  const results: CheckResult[] = [{ name: "Xen dom0", level: "ok", detail: "control domain" }];
  const running = async (name: string) => (await processesNamed(name)).length > 0;
  const daemon = (name: string, found: boolean, why: string): CheckResult =>
    found
      ? { name, level: "ok", detail: "running" }
      : { name, level: "fail", detail: `not running: ${why}`, fix: "/etc/init.d/xen start" };
  if (await running("oxenstored")) {
    results.push({
      name: "xenstored",
      level: "ok",
      detail: "oxenstored, the one for many domains",
    });
  } else if (await running("xenstored")) {
    results.push({
      name: "xenstored",
      level: "warn",
      detail:
        "the C xenstored: every domain's devices go through it, and oxenstored holds up better with many",
      fix: "XENSTORED=oxenstored in /etc/default/xen (Debian: apt-get install xenstore-utils ocaml-xenstored), then restart Xen's daemons",
    });
  } else {
    results.push(daemon("xenstored", false, "xl create hangs without it"));
  }
  const dom0 = await runner
    .run({ argv: ["xl", "list", "0"], probe: true })
    .then((result) => parseDom0(result.stdout))
    .catch(undefinedUnlessBug);
  if (dom0) {
    results.push({
      name: "dom0",
      level: "ok",
      detail: `${dom0.memoryMiB} MiB, ${dom0.vcpus} vCPUs: each domU's xl monitor and disk and network backends run here`,
    });
  }
  if (await running("xenconsoled")) {
    results.push(
      await consoleLogDir().then(
        (dir): CheckResult => ({
          name: "xenconsoled",
          level: "ok",
          detail: `running, logs guest consoles in ${dir}`,
        }),
        (): CheckResult => ({
          name: "xenconsoled",
          level: "fail",
          detail: "running without --log=guest: shoal reads each VM's boot from its console log",
          fix: XENCONSOLED_FIX,
        }),
      ),
    );
  } else {
    results.push(daemon("xenconsoled", false, "no console or console log for domUs"));
  }
  const loopControl = await deviceCheck("loop devices", "/dev/loop-control", {
    present: "/dev/loop-control",
    missing: "domUs' disks are attached through loop devices",
    module: "loop",
  });
  const room = await xenRoom(runner).catch((error: unknown) => {
    if (!(error instanceof ShoalError)) throw error;
    return error;
  });
  if (room instanceof ShoalError) {
    results.push(loopControl, {
      name: "Xen memory",
      level: "fail",
      detail: `\`xl info\` did not answer: ${room.message}`,
    });
    return results;
  }
  const short = needs && xenShortfall(needs, room);
  const loopShort = short?.short === "loop devices";
  results.push(
    loopControl.level === "fail"
      ? loopControl
      : {
          name: "loop devices",
          level: loopShort ? "fail" : "ok",
          detail: `${room.loopDevicesAttached} attached, at most ${room.loopDeviceLimit}${needs ? `; the fleet needs ${needs.loopDevices}` : ""}`,
          ...(short?.short === "loop devices" ? { fix: short.fix } : {}),
        },
  );
  results.push({
    name: "Xen memory",
    level: short?.short === "memory" ? "fail" : "ok",
    detail: `Xen ${room.xenVersion}, ${room.freeMemoryMiB} MiB free${needs ? `, the fleet needs ${needs.memoryMiB} MiB` : ""}`,
    ...(short?.short === "memory" ? { fix: short.fix } : {}),
  });
  return results;
}

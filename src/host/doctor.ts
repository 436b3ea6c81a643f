import { readdir, readFile, stat } from "node:fs/promises";
import { chooseAccel } from "../backends/qemu/accel.js";
import { requireQemuUser } from "../backends/qemu/user.js";
import {
  type CheckResult,
  missingTool,
  type ToolRequirement,
  toolsFor,
  versionLine,
} from "../core/doctor.js";
import type { BackendName } from "../core/fleet.js";
import { QEMU_USER } from "../core/render/qemu.js";
import { parseDom0, type XenNeeds, xenShortfall } from "../core/xen.js";
import { ShoalError, UserError } from "../errors.js";
import { newestKernel } from "../image/kernel.js";
import { pathExists } from "./paths.js";
import { processesNamed } from "./processes.js";
import { CommandFailed, type Runner } from "./runner.js";
import { consoleLogDir, XENCONSOLED_FIX, xenRoom } from "./xen.js";

/**
 * The host checks behind `shoal doctor`: they only look (probes), never change anything, and each
 * says what it found and, when something is wrong, how to fix it.
 */

async function checkTool(runner: Runner, tool: ToolRequirement): Promise<CheckResult> {
  try {
    const result = await runner.run({
      argv: tool.versionArgv,
      probe: true,
      okCodes: "any",
      timeoutMs: 10_000,
    });
    const version = tool.versionless ? "" : versionLine(`${result.stdout}\n${result.stderr}`);
    return { name: tool.name, level: "ok", detail: version || "installed" };
  } catch (error) {
    if (error instanceof CommandFailed && error.code === null) return missingTool(tool);
    throw error;
  }
}

export function checkTools(runner: Runner, backend: BackendName): Promise<CheckResult[]> {
  return Promise.all(toolsFor(backend).map((tool) => checkTool(runner, tool)));
}

/** A device node a backend needs; a missing one comes with its kernel module. */
async function deviceCheck(
  name: string,
  path: string,
  text: { readonly present: string; readonly missing: string; readonly module: string },
): Promise<CheckResult> {
  return (await pathExists(path))
    ? { name, level: "ok", detail: text.present }
    : { name, level: "fail", detail: `missing: ${text.missing}`, fix: `modprobe ${text.module}` };
}

/**
 * The user every QEMU runs as: there, unprivileged, and (where /dev/kvm is) in its group, without
 * which KVM cannot be used.
 */
async function checkQemuUser(runner: Runner): Promise<CheckResult> {
  const name = "QEMU user";
  const user = await requireQemuUser(runner).catch((error: unknown) => {
    if (!(error instanceof UserError)) throw error;
    return error;
  });
  if (user instanceof UserError) {
    return { name, level: "fail", detail: user.message, ...(user.hint ? { fix: user.hint } : {}) };
  }
  const found = `${QEMU_USER} (uid ${user.uid}): each QEMU runs as it, under its seccomp sandbox`;
  const kvm = await stat("/dev/kvm").catch(() => undefined);
  if (kvm === undefined) return { name, level: "ok", detail: found };
  const groups = await runner.run({ argv: ["id", "-G", QEMU_USER], probe: true });
  if (groups.stdout.trim().split(/\s+/).map(Number).includes(kvm.gid)) {
    return { name, level: "ok", detail: found };
  }
  const group = await runner.run({
    argv: ["getent", "group", String(kvm.gid)],
    probe: true,
    okCodes: [2],
  });
  const groupName = group.stdout.split(":")[0] || String(kvm.gid);
  return {
    name,
    level: "warn",
    detail: `${found}; not in /dev/kvm's group ${groupName}, so VMs cannot use KVM`,
    fix: `usermod -aG ${groupName} ${QEMU_USER}`,
  };
}

/**
 * QEMU: its user, tap devices, and whether KVM really runs a guest (the probe `up` uses, cached
 * per boot; it needs the user).
 */
export async function checkQemuHost(runner: Runner, accelCache: string): Promise<CheckResult[]> {
  const results: CheckResult[] = [await checkQemuUser(runner)];
  results.push(
    await deviceCheck("/dev/net/tun", "/dev/net/tun", {
      present: "tap devices can be made",
      missing: "VMs cannot get network interfaces",
      module: "tun",
    }),
  );
  if (results[0]?.level === "fail") {
    results.push({
      name: "KVM",
      level: "warn",
      detail: `not probed: no user ${QEMU_USER} to run QEMU as`,
    });
    return results;
  }
  const version = newestKernel(
    await readdir("/boot").catch(() => [] as string[]),
    await readdir("/lib/modules").catch(() => [] as string[]),
  );
  if (version === undefined) {
    results.push({
      name: "KVM",
      level: "warn",
      detail: "not probed: no kernel in /boot to boot a test guest with",
      fix: "apt-get install linux-image-amd64",
    });
    return results;
  }
  const choice = await chooseAccel(runner, `/boot/vmlinuz-${version}`, accelCache);
  results.push(
    choice.reason === undefined
      ? { name: "KVM", level: "ok", detail: "works: VMs run with hardware virtualisation" }
      : {
          name: "KVM",
          level: "warn",
          detail: `${choice.reason}: VMs run under software emulation (TCG), much slower`,
          fix: "enable virtualisation (VT-x/AMD-V, or nested virtualisation for a VM host)",
        },
  );
  return results;
}

/**
 * Xen: shoal must run in dom0 of a host booted through the Xen hypervisor, with xenstored (xl
 * create hangs without it) and xenconsoled (consoles and logs), loop devices for file-backed disks,
 * and enough free memory in Xen for the fleet.
 */
export async function checkXenHost(
  runner: Runner,
  needs: XenNeeds | undefined,
): Promise<CheckResult[]> {
  const capabilities = await readFile("/proc/xen/capabilities", "utf8").catch(() => undefined);
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
    .catch(() => undefined);
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

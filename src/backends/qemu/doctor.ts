import { readdir, stat } from "node:fs/promises";
import { type CheckResult, ksmCheck } from "../../core/doctor.js";
import type { VmSpec } from "../../core/fleet.js";
import { UserError } from "../../errors.js";
import { deviceCheck } from "../../host/doctor.js";
import { readKsm } from "../../host/ksm.js";
import { ifExists } from "../../host/paths.js";
import type { Runner } from "../../host/runner.js";
import { newestKernel } from "../../image/kernel.js";
import { chooseAccel } from "./accel.js";
import { QEMU_USER } from "./render.js";
import { describeRoom, type HostRoom, hostRoom, qemuShortfall } from "./room.js";
import { requireQemuUser } from "./user.js";

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
  const kvm = await ifExists(stat("/dev/kvm"));
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

/** The host's CPUs and memory, and whether the fleet's VMs all fit (as `up` checks them). */
function roomCheck(room: HostRoom, fleetVms: readonly VmSpec[] | undefined): CheckResult {
  const short = fleetVms && qemuShortfall(fleetVms, room);
  const fleet =
    fleetVms === undefined
      ? ""
      : `; the fleet's ${fleetVms.length} VMs have ${fleetVms.reduce((sum, vm) => sum + vm.memoryMiB, 0)} MiB`;
  return short
    ? { name: "room", level: "fail", detail: short.what, fix: short.fix }
    : { name: "room", level: "ok", detail: `${describeRoom(room)}${fleet}` };
}

/**
 * QEMU: its user, the host's room, tap devices, and whether KVM really runs a guest (the probe `up` uses, cached
 * per boot; it needs the user).
 */
export async function checkQemuHost(
  runner: Runner,
  accelCache: string,
  fleetVms: readonly VmSpec[] | undefined,
): Promise<CheckResult[]> {
  const results: CheckResult[] = [
    await checkQemuUser(runner),
    roomCheck(await hostRoom(), fleetVms),
    ksmCheck(await readKsm()),
  ];
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
    (await ifExists(readdir("/boot"))) ?? [],
    (await ifExists(readdir("/lib/modules"))) ?? [],
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

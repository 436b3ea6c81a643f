import { constants } from "node:fs";
import { mkdir, readFile } from "node:fs/promises";
import { dirname } from "node:path";
import * as z from "zod";
import { closedToOthers, ifExists, pathExists } from "../../host/paths.js";
import { CommandFailed, type Runner } from "../../host/runner.js";
import { writeFileAtomic } from "../../state/atomic.js";
import { parseJsonOrUndefined } from "../../state/json.js";
import { type Accelerator, asUser, QEMU_SANDBOX, QEMU_USER } from "./render.js";
import { requireQemuUser } from "./user.js";

const PROBE_TIMEOUT_MS = 20_000;

export interface AccelChoice {
  readonly accel: Accelerator;
  /** Why KVM is not used; undefined when it is. */
  readonly reason?: string;
}

/**
 * The command that tells whether KVM really runs a guest: the kernel boots with no root, panics,
 * and with panic=-1 and -no-reboot QEMU exits; under working KVM that takes about a second. On
 * hosts where /dev/kvm exists but nested virtualisation is broken, QEMU aborts at start or the
 * guest never gets anywhere, which the timeout catches.
 */
export function kvmProbeArgv(kernel: string): [string, ...string[]] {
  return [
    // timeout(1), not only the runner's timer: a shoal killed during the probe must not leave
    // a QEMU spinning on a broken KVM forever.
    "timeout",
    "--signal=KILL",
    `${PROBE_TIMEOUT_MS / 1000}`,
    // The kernel may be an image's: it boots confined as every VM does.
    ...asUser(QEMU_USER, [
      "qemu-system-x86_64",
      "-machine",
      "q35",
      "-accel",
      "kvm",
      "-cpu",
      "host",
      "-m",
      "128M",
      "-nodefaults",
      "-no-user-config",
      "-display",
      "none",
      "-serial",
      "stdio",
      "-no-reboot",
      "-kernel",
      kernel,
      "-append",
      "console=ttyS0 panic=-1",
      "-sandbox",
      QEMU_SANDBOX,
    ]),
  ];
}

async function probeKvm(runner: Runner, kernel: string): Promise<AccelChoice> {
  if (!(await pathExists("/dev/kvm", constants.R_OK | constants.W_OK))) {
    return { accel: "tcg", reason: "/dev/kvm is missing or not accessible" };
  }
  // Without its user the probe could not start QEMU, and a "no" would be kept until the next boot.
  await requireQemuUser(runner);
  const result = await runner
    .run({ argv: kvmProbeArgv(kernel), timeoutMs: PROBE_TIMEOUT_MS + 5000, probe: true })
    .then(
      (done) => ({ booted: /Linux version/.test(done.stdout), detail: "" }),
      (error: unknown) => ({
        booted: false,
        detail:
          // timeout(1) sends KILL to its whole process group, itself included.
          error instanceof CommandFailed && (error.code === -1 || error.code === 137)
            ? `no answer within ${PROBE_TIMEOUT_MS / 1000} s`
            : error instanceof CommandFailed
              ? `QEMU exited with ${error.code}: ${error.stderrTail.trim().split("\n").at(-1) ?? ""}`
              : String(error),
      }),
    );
  return result.booted
    ? { accel: "kvm" }
    : {
        accel: "tcg",
        reason: `/dev/kvm is there but a test guest did not boot under KVM${result.detail ? ` (${result.detail})` : ""}`,
      };
}

const cachedChoice = z.object({
  accel: z.enum(["kvm", "tcg"]),
  reason: z.string().optional(),
  bootId: z.string(),
});

/**
 * KVM when it really works, else software emulation. The answer is kept per host boot (the probe
 * costs up to 20 s when KVM hangs), in `cacheFile`.
 */
export async function chooseAccel(
  runner: Runner,
  kernel: string,
  cacheFile: string,
): Promise<AccelChoice> {
  const bootId = (await readFile("/proc/sys/kernel/random/boot_id", "utf8")).trim();
  const cached = cachedChoice.safeParse(
    parseJsonOrUndefined((await ifExists(readFile(cacheFile, "utf8"))) ?? ""),
  );
  if (cached.success && cached.data.bootId === bootId) {
    const { accel, reason } = cached.data;
    return reason === undefined ? { accel } : { accel, reason };
  }
  // The probe's QEMU runs unprivileged: a kernel it cannot reach says nothing about KVM, so that
  // answer is not kept (starting a VM there fails with the fix).
  const closed = await closedToOthers(dirname(kernel));
  if (closed !== undefined) {
    return { accel: "tcg", reason: `KVM not probed: ${closed} is closed to user ${QEMU_USER}` };
  }
  const choice = await probeKvm(runner, kernel);
  await mkdir(dirname(cacheFile), { recursive: true });
  await writeFileAtomic(cacheFile, `${JSON.stringify({ ...choice, bootId })}\n`);
  return choice;
}

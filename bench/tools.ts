import { execFileSync, spawnSync } from "node:child_process";

/**
 * The accelerator the benches run under: software emulation, what they were made for, unless
 * SHOAL_ACCEL=kvm says otherwise. Named, the KVM probe (once per host boot) stays out of the timings.
 */
export const BENCH_ACCEL = process.env.SHOAL_ACCEL === "kvm" ? "kvm" : "tcg";

/**
 * Runs the shoal binary on a bench's state directory and returns what it printed; a failure stops
 * the bench with shoal's message.
 */
export function shoal(state: string, args: readonly string[]): string {
  const result = spawnSync(process.execPath, ["bin/shoal.js", "--state-dir", state, ...args], {
    env: { ...process.env, SHOAL_ACCEL: BENCH_ACCEL },
    maxBuffer: 256 * 1024 * 1024,
  });
  if (result.status !== 0) throw new Error(`shoal ${args.join(" ")}: ${result.stderr}`);
  return result.stdout.toString();
}

/** What a user does without shoal: a qcow2 overlay of the base per VM (`qemu-img create -b`). */
export function linkedClone(base: string, clone: string): void {
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", clone]);
}

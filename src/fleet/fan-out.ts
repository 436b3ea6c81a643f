import pLimit from "p-limit";
import { ShoalError } from "../errors.js";

/** One VM's share of a command: what its work returned, or the error that is its own failure. */
export type VmResult<T> =
  | { readonly name: string; readonly ok: true; readonly value: T }
  | { readonly name: string; readonly ok: false; readonly error: ShoalError };

/**
 * Runs `work` for each VM (a name, or anything that carries one), `workers` at a time. A
 * ShoalError is that VM's failure (the others go on; the command exits 1 naming it); anything
 * else is a bug, thrown once every VM's work has settled (exit 70), so none is still writing when
 * the fleet's lock goes.
 */
export async function eachVm<I extends string | { readonly name: string }, T>(
  vms: readonly I[],
  workers: number,
  work: (vm: I) => Promise<T>,
): Promise<VmResult<T>[]> {
  const limit = pLimit(workers);
  const settled = await Promise.allSettled(vms.map((vm) => limit(() => work(vm))));
  const bug = settled.find(
    (result) => result.status === "rejected" && !(result.reason instanceof ShoalError),
  );
  if (bug?.status === "rejected") throw bug.reason;
  return settled.map((result, i): VmResult<T> => {
    const vm = vms[i];
    const name = typeof vm === "string" ? vm : (vm?.name ?? "");
    return result.status === "fulfilled"
      ? { name, ok: true, value: result.value }
      : { name, ok: false, error: result.reason as ShoalError };
  });
}

/** The first VM's failure of a batch that succeeds or fails as one, thrown. */
export function throwFirstFailure(results: readonly VmResult<unknown>[]): void {
  const failed = results.find((result) => !result.ok);
  if (failed && !failed.ok) throw failed.error;
}

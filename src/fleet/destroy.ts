import { rm } from "node:fs/promises";
import { throwFirstFailure } from "./fan-out.js";
import { writeKnownHosts } from "./identity.js";
import { applyImpairments, removeImpairments } from "./impairments.js";
import { deleteVms } from "./lifecycle.js";
import type { FleetSession } from "./session.js";

/**
 * Removes VMs with every file and process they had; with `whole`, the fleet's network and
 * directory too. Every VM's removal is tried before a failure is reported.
 */
export async function destroyVms(
  session: FleetSession,
  names: readonly string[],
  options: { readonly whole: boolean; readonly workers: number },
): Promise<void> {
  throwFirstFailure(
    await deleteVms(session, names, options.workers, { withNetwork: options.whole }),
  );
  if (options.whole) {
    await removeImpairments(session);
    const { namespace } = session.network;
    if (namespace !== undefined) await session.backend.leaveNetwork?.(session.fleet, namespace);
    await session.network.remove();
    await rm(session.paths.dir, { recursive: true, force: true });
  } else {
    await writeKnownHosts(session);
    // Over several hosts, a VM's ifb device and its place in each host's table are on the hosts.
    if (session.backend.hostNetworks !== undefined) await applyImpairments(session);
  }
}

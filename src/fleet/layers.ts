import { rm } from "node:fs/promises";
import type { Presence } from "../backends/backend.js";
import type { VmSpec } from "../core/fleet.js";
import { ShoalError, UserError } from "../errors.js";
import { allocatedBytes, pathExists } from "../host/paths.js";
import {
  type LayerChange,
  layerBaseId,
  layerFormatted,
  listLayerChanges,
  replaceLayer,
  settleLayer,
  upgradeConflicts,
  withoutIdentity,
} from "../layer/layer.js";
import type { FleetSession } from "./session.js";

/** A disk layer looked at from the host, settled, and the base it was made over. */
export interface SettledLayer {
  readonly layer: string;
  readonly base: string;
  readonly baseId: string;
}

/** Whether no hypervisor holds the VM's disks. */
function disksIdle(presence: Presence): boolean {
  return (
    presence.kind === "absent" || (presence.kind === "powered-off" && !!presence.disksReleased)
  );
}

/**
 * A created VM's disk layer, when no hypervisor holds it: reading it from the host (or replacing
 * it) while the guest writes it would see, or cause, a torn filesystem.
 */
async function idleDiskLayer(
  session: FleetSession,
  name: string,
): Promise<{ spec: VmSpec; layer: string }> {
  const entry = session.entry(name);
  if (entry.phase !== "created") {
    throw new UserError(`VM ${name} is not created`, "`shoal up` creates the fleet's VMs");
  }
  if (entry.spec.layer.type !== "disk") {
    throw new UserError(
      `VM ${name} has a tmpfs layer: its changes live in its memory and go when it stops`,
      "only disk layers are kept, looked at and reset",
    );
  }
  const presence = await session.backend.presence(session.vm(name));
  if (!disksIdle(presence)) {
    throw new UserError(
      `VM ${name} is ${presence.kind}: its layer is in use`,
      `\`shoal stop ${name}\` first`,
    );
  }
  return { spec: entry.spec, layer: session.paths.vm(name).layer };
}

/**
 * Runs `use` on a stopped VM's layer, settled, with the base it was made over (none for a VM that
 * never booted: its layer is still blank): the VM's own file, or a copy where its backend keeps
 * layers elsewhere.
 */
export async function withStoppedLayer<T>(
  session: FleetSession,
  name: string,
  use: (stopped: SettledLayer | undefined) => Promise<T>,
): Promise<T> {
  const { layer } = await idleDiskLayer(session, name);
  if (!session.backend.copyLayer) return use(await settledWithBase(session, name, layer));
  return withLayerCopy(session, name, async (copy) =>
    use(await settledWithBase(session, name, copy, true)),
  );
}

/** Runs `use` on a copy of the VM's layer as it is now, removed after. */
async function withLayerCopy<T>(
  session: FleetSession,
  name: string,
  use: (copy: string) => Promise<T>,
): Promise<T> {
  const copy = session.scratchPath(`layer-of-${name}`);
  try {
    if (session.backend.copyLayer) await session.backend.copyLayer(session.vm(name), copy);
    else {
      await session.runner.run({
        argv: ["cp", "--sparse=always", session.paths.vm(name).layer, copy],
        probe: true,
      });
    }
    // Awaited here: the copy goes in `finally`.
    return await use(copy);
  } finally {
    await rm(copy, { force: true });
  }
}

/** A layer file (the VM's, or a copy), settled, and the base it was made over. */
async function settledWithBase(
  session: FleetSession,
  name: string,
  layer: string,
  copy = false,
): Promise<SettledLayer | undefined> {
  if (!(await layerFormatted(layer))) return undefined;
  await settleLayer(session.runner, layer, copy);
  const baseId = await layerBaseId(session.runner, layer);
  if (baseId === undefined) {
    throw new ShoalError(`VM ${name}'s layer does not say which base it was made over`, {
      hint: "it was not made by shoal's init; `shoal reset` starts it afresh",
    });
  }
  const base = session.layout.image(baseId).base;
  if (!(await pathExists(base))) {
    throw new UserError(
      `VM ${name}'s layer was made over image ${baseId.slice(0, 12)}, which is no longer in the image store`,
      "its changes cannot be told from that base's files without it",
    );
  }
  return { layer, base, baseId };
}

/**
 * What a stopped VM changed relative to the base its layer was made over, without its identity
 * files; nothing for a VM that never booted.
 */
export function layerChanges(session: FleetSession, name: string): Promise<LayerChange[]> {
  return withStoppedLayer(session, name, async (stopped) =>
    stopped
      ? withoutIdentity(await listLayerChanges(session.runner, stopped.layer, stopped.base))
      : [],
  );
}

/**
 * A VM's changes that hide files `newBase` has otherwise than its own base. A running VM's layer
 * (or any, `readOnly`) is read from a copy, settled there: what the VM last wrote to its disk.
 */
export async function conflictsWith(
  session: FleetSession,
  name: string,
  newBase: string,
  readOnly = false,
): Promise<LayerChange[]> {
  const entry = session.entry(name);
  if (entry.phase !== "created" || entry.spec.layer.type !== "disk") return [];
  const compare = (settled: SettledLayer | undefined) =>
    settled
      ? upgradeConflicts(
          session.runner,
          settled.layer,
          settled.base,
          newBase,
          session.scratchPath("compare"),
        )
      : Promise.resolve([]);
  if (!readOnly && disksIdle(await session.backend.presence(session.vm(name)))) {
    return withStoppedLayer(session, name, compare);
  }
  return withLayerCopy(session, name, async (copy) =>
    compare(await settledWithBase(session, name, copy, true)),
  );
}

/**
 * Throws away stopped VMs' changes; their identity (seed) stays and is applied at their next
 * boot. Every VM is checked before any layer goes.
 */
export async function resetLayers(session: FleetSession, names: readonly string[]): Promise<void> {
  const layers = [];
  for (const name of names) layers.push({ name, ...(await idleDiskLayer(session, name)) });
  for (const { name, spec, layer } of layers) {
    if (session.backend.createLayer) await session.backend.createLayer(session.vm(name), spec);
    else await replaceLayer(layer, spec.layer.sizeBytes);
    session.event({ vm: name, phase: "reset" });
  }
}

/** What a VM's disk layer takes on disk, where its backend keeps it (a volume on its host). */
export function layerAllocation(session: FleetSession, name: string): Promise<number> {
  if (session.backend.layerBytes) return session.backend.layerBytes(session.vm(name));
  return allocatedBytes(session.paths.vm(name).layer);
}

import type { VmSpec } from "../core/fleet.js";
import { seedFiles } from "../core/seed.js";
import { type KnownHost, renderKnownHosts } from "../core/ssh.js";
import { ShoalError } from "../errors.js";
import { ifExists } from "../host/paths.js";
import { type ClientKey, ensureClientKey, readHostKey, writeSeed } from "../identity/identity.js";
import { writeFileAtomic } from "../state/atomic.js";
import type { FleetSession } from "./session.js";

/** Writes a VM's identity seed: hostname, machine-id, its host key, the keys that may log in. */
export async function writeIdentity(
  session: FleetSession,
  spec: VmSpec,
  authorizedKeys: readonly string[],
  how: "new" | "replace",
): Promise<void> {
  const paths = session.paths.vm(spec.name);
  const [hostKey, clientKey] = await Promise.all([
    readHostKey(paths.hostKeys),
    fleetClientKey(session),
  ]);
  await writeSeed(
    paths.seed,
    seedFiles({
      vm: spec,
      fleet: session.fleet,
      hostKey,
      authorizedKeys: [clientKey.publicKey, ...authorizedKeys],
    }),
    how,
  );
}

const clientKeys = new WeakMap<FleetSession, Promise<ClientKey>>();

/**
 * The key `shoal ssh` and `exec` log in with; every VM of the fleet authorizes it. Made on first
 * use, so only by commands that hold the fleet's lock (they write seeds).
 */
function fleetClientKey(session: FleetSession): Promise<ClientKey> {
  let key = clientKeys.get(session);
  if (!key) {
    key = ensureClientKey(session.paths.clientKeys, `shoal@${session.fleet}`);
    clientKeys.set(session, key);
  }
  return key;
}

/**
 * Gives every created VM the fleet file's authorized_keys: their seeds are rewritten, and each VM
 * takes them at its next boot. Says whether they changed.
 */
export async function setAuthorizedKeys(
  session: FleetSession,
  keys: readonly string[],
): Promise<boolean> {
  const recorded = session.book.record.authorizedKeys;
  if (recorded !== undefined && JSON.stringify(recorded) === JSON.stringify(keys)) return false;
  const created = session.createdNames().map((name) => session.entry(name));
  for (const entry of created) await writeIdentity(session, entry.spec, keys, "replace");
  if (created.length > 0) await session.sync();
  await session.book.update((record) => {
    record.authorizedKeys = [...keys];
  });
  // A fleet made before keys were recorded also gets the fleet's own key in its VMs' seeds.
  return created.length > 0;
}

/** The fleet's known_hosts: every created VM by name, name.fleet and address. */
export async function writeKnownHosts(session: FleetSession): Promise<void> {
  const entries: KnownHost[] = [];
  for (const name of session.createdNames()) {
    const hostKeys = session.paths.vm(name).hostKeys;
    const key = await ifExists(readHostKey(hostKeys));
    if (!key) throw new ShoalError(`VM ${name} has lost its host key (${hostKeys})`);
    entries.push({
      hosts: [name, `${name}.${session.fleet}`, session.entry(name).spec.ip],
      publicKey: key.publicKey,
    });
  }
  await writeFileAtomic(session.paths.knownHosts, renderKnownHosts(entries));
}

import type { VmIdentity } from "./fleet.js";
import { isDnsLabel } from "./names.js";
import { dropbearPrivateKey, ED25519, parsePrivateKeyFile, publicKeyLine } from "./ssh.js";
import { assertRenderable, checkAuthorizedKey } from "./syntax.js";

/**
 * The identity shoal gives a VM, as files its init copies into the VM's root at every boot: shoal
 * is the authority for hostname, machine-id, SSH host key and root's authorized_keys, so a tmpfs
 * VM gets the same identity each time and a changed fleet file reaches disk layers too.
 */
export interface SeedFile {
  /** Relative to the VM's root. */
  readonly path: string;
  readonly mode: number;
  readonly content: string | Buffer;
}

export const HOST_KEY_PATH = "etc/ssh/ssh_host_ed25519_key";

/**
 * Every file the seed writes into the VM's root at each boot (relative to /): identity, not the
 * VM's own changes, so `shoal diff` leaves them out and `shoal reset` gets them back at next boot.
 */
export const SEED_PATHS = [
  "etc/hostname",
  "etc/machine-id",
  HOST_KEY_PATH,
  `${HOST_KEY_PATH}.pub`,
  "etc/ssh/sshd_config.d/shoal-host-key.conf",
  "etc/dropbear/dropbear_ed25519_host_key",
  "root/.ssh/authorized_keys",
] as const;

export interface SeedInput {
  readonly vm: Pick<VmIdentity, "name" | "hostname" | "machineId">;
  readonly fleet: string;
  /** The VM's host key files as shoal keeps them on the host. */
  readonly hostKey: { readonly privateKey: string; readonly publicKey: string };
  readonly authorizedKeys: readonly string[];
}

export function seedFiles(input: SeedInput): SeedFile[] {
  const { vm } = input;
  assertRenderable("hostname", vm.hostname, isDnsLabel(vm.hostname));
  assertRenderable("machine-id", vm.machineId, /^[0-9a-f]{32}$/.test(vm.machineId));
  assertRenderable(
    "host public key",
    input.hostKey.publicKey,
    input.hostKey.publicKey.startsWith(`${ED25519} `) &&
      checkAuthorizedKey(input.hostKey.publicKey) === undefined,
  );
  for (const key of input.authorizedKeys)
    assertRenderable("authorized key", key, checkAuthorizedKey(key) === undefined);
  const parsed = parsePrivateKeyFile(input.hostKey.privateKey);
  if (!parsed || publicKeyLine(parsed) !== input.hostKey.publicKey) {
    throw new Error(`internal: ${vm.name}'s host key files do not hold one ed25519 key pair`);
  }
  const comment = `root@${vm.hostname}`;
  return [
    { path: "etc/hostname", mode: 0o644, content: `${vm.hostname}\n` },
    { path: "etc/machine-id", mode: 0o444, content: `${vm.machineId}\n` },
    {
      path: HOST_KEY_PATH,
      mode: 0o600,
      content: input.hostKey.privateKey,
    },
    {
      path: `${HOST_KEY_PATH}.pub`,
      mode: 0o644,
      content: `${input.hostKey.publicKey} ${comment}\n`,
    },
    {
      // Only the key shoal made and published in known_hosts; no other host key is offered.
      path: "etc/ssh/sshd_config.d/shoal-host-key.conf",
      mode: 0o644,
      content: `# Written by shoal at every boot: this VM's identity is managed by shoal (fleet ${input.fleet}).\nHostKey /${HOST_KEY_PATH}\n`,
    },
    {
      // The same key for images whose SSH server is dropbear (shoal's tiny image).
      path: "etc/dropbear/dropbear_ed25519_host_key",
      mode: 0o600,
      content: dropbearPrivateKey(parsed),
    },
    {
      path: "root/.ssh/authorized_keys",
      mode: 0o600,
      content: input.authorizedKeys.map((key) => `${key}\n`).join(""),
    },
  ];
}

import { debugfsQuote, type Ext4Image, S_IFLNK, S_IFMT } from "./ext4.js";

/**
 * Sealing removes what makes a system one particular machine, so that no two VMs booted from the
 * base can share it: SSH host keys, the machine-id (left as an empty file, which systemd reads as
 * "not yet set"), DHCP leases, random seeds, the hostname and persistent network rules. Each VM
 * gets its own identity at boot instead.
 */

/** Files removed when present. */
const IDENTITY_FILES = [
  "/etc/hostname",
  "/etc/udev/rules.d/70-persistent-net.rules",
  "/var/lib/dbus/machine-id",
  "/var/lib/systemd/random-seed",
  "/var/lib/systemd/credential.secret",
  "/var/lib/urandom/random-seed",
];

/** Directories whose matching entries are removed. */
const IDENTITY_PATTERNS: readonly (readonly [string, RegExp])[] = [
  ["/etc/ssh", /^ssh_host_.*_key(\.pub)?$/],
  ["/var/lib/dhcp", /\.leases?$/],
  ["/var/lib/dhcpcd", /\.lease6?$/],
  ["/var/lib/NetworkManager", /\.lease$/],
];

/** Files kept but emptied. */
const EMPTIED_FILES = ["/etc/machine-id"];

/** What sealing did, path by path, for the image's record and for tests. */
export interface SealReport {
  readonly removed: readonly string[];
  readonly emptied: readonly string[];
}

async function existingFiles(image: Ext4Image): Promise<string[]> {
  const found: string[] = [];
  for (const path of IDENTITY_FILES) {
    const dir = path.slice(0, path.lastIndexOf("/")) || "/";
    const entry = (await image.list(dir))?.find((e) => e.name === path.slice(dir.length + 1));
    // A symlink such as /var/lib/dbus/machine-id -> /etc/machine-id holds no identity of its own.
    if (entry && (entry.mode & S_IFMT) !== S_IFLNK) found.push(path);
  }
  for (const [dir, pattern] of IDENTITY_PATTERNS) {
    for (const entry of (await image.list(dir)) ?? []) {
      if (pattern.test(entry.name)) found.push(`${dir}/${entry.name}`);
    }
  }
  return found;
}

export async function sealImage(image: Ext4Image): Promise<SealReport> {
  const removed = (await existingFiles(image)).sort();
  const emptied: string[] = [];
  for (const path of EMPTIED_FILES) {
    const dir = path.slice(0, path.lastIndexOf("/"));
    const entry = (await image.list(dir))?.find((e) => `${dir}/${e.name}` === path);
    if (entry && (entry.mode & S_IFMT) !== S_IFLNK && entry.size > 0) emptied.push(path);
  }
  await image.edit([
    ...removed.map((path) => `rm ${debugfsQuote(path)}`),
    ...emptied.flatMap((path) => [
      `punch ${debugfsQuote(path)} 0`,
      `sif ${debugfsQuote(path)} size 0`,
    ]),
  ]);
  return { removed, emptied };
}

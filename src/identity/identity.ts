import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pack } from "tar-stream";
import type { SeedFile } from "../core/seed.js";
import { dropbearPrivateKey, type Ed25519Key, privateKeyFile, publicKeyLine } from "../core/ssh.js";

/**
 * A VM's identity on the host: its SSH host key, made here so shoal knows every VM's public key
 * before the VM first boots, and the seed archive the VM's init unpacks at every boot.
 */

export interface HostKeyFiles {
  readonly privateKey: string;
  /** `ssh-ed25519 BASE64`, without a comment. */
  readonly publicKey: string;
  /** The private key in dropbear's format, for images whose SSH server is dropbear. */
  readonly dropbearKey: Buffer;
}

const HOST_KEY_FILE = "ssh_host_ed25519_key";
const DROPBEAR_KEY_FILE = "dropbear_ed25519_host_key";
const CLIENT_KEY_FILE = "id_ed25519";

function fromBase64Url(value: string | undefined): Buffer {
  return Buffer.from(value ?? "", "base64url");
}

function newKey(): Ed25519Key {
  const { privateKey } = generateKeyPairSync("ed25519");
  const jwk = privateKey.export({ format: "jwk" });
  return { seed: fromBase64Url(jwk.d), publicKey: fromBase64Url(jwk.x) };
}

/** Writes a key as ssh-keygen would, in `dir` (0700): FILE (0600) and FILE.pub. */
async function writeKeyPair(dir: string, file: string, key: Ed25519Key, comment: string) {
  const files = {
    privateKey: privateKeyFile(key, comment, randomBytes(4).readUInt32BE()),
    publicKey: publicKeyLine(key),
  };
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFile(join(dir, file), files.privateKey, { mode: 0o600 });
  await writeFile(join(dir, `${file}.pub`), `${files.publicKey} ${comment}\n`, { mode: 0o644 });
  return files;
}

async function readPublicKey(dir: string, file: string): Promise<string> {
  const line = await readFile(join(dir, `${file}.pub`), "utf8");
  return line.split(" ").slice(0, 2).join(" ");
}

/** Makes a VM's ed25519 host key in `dir`: OpenSSH's files and dropbear's, private ones 0600. */
export async function makeHostKey(dir: string, comment: string): Promise<HostKeyFiles> {
  const key = newKey();
  const files = await writeKeyPair(dir, HOST_KEY_FILE, key, comment);
  const dropbearKey = dropbearPrivateKey(key);
  await writeFile(join(dir, DROPBEAR_KEY_FILE), dropbearKey, { mode: 0o600 });
  return { ...files, dropbearKey };
}

export async function readHostKey(dir: string): Promise<HostKeyFiles> {
  const [privateKey, publicKey, dropbearKey] = await Promise.all([
    readFile(join(dir, HOST_KEY_FILE), "utf8"),
    readPublicKey(dir, HOST_KEY_FILE),
    readFile(join(dir, DROPBEAR_KEY_FILE)),
  ]);
  return { privateKey, publicKey, dropbearKey };
}

/** The key shoal logs in to a fleet's VMs with: its private key file and its public key line. */
export interface ClientKey {
  readonly privateKeyPath: string;
  readonly publicKey: string;
}

export function clientKeyPath(dir: string): string {
  return join(dir, CLIENT_KEY_FILE);
}

/** The fleet's client key in `dir`, made on first use. */
export async function ensureClientKey(dir: string, comment: string): Promise<ClientKey> {
  const privateKeyPath = clientKeyPath(dir);
  const existing = await readPublicKey(dir, CLIENT_KEY_FILE).catch(() => undefined);
  if (existing !== undefined) return { privateKeyPath, publicKey: existing };
  const { publicKey } = await writeKeyPair(dir, CLIENT_KEY_FILE, newKey(), comment);
  return { privateKeyPath, publicKey };
}

/**
 * The seed as a tar archive, attached to the VM as a small read-only disk: tar needs no
 * filesystem driver and its 512-byte blocks make a valid block device. Only files are archived, so
 * unpacking never changes the mode or owner of a directory the image already has.
 */
export async function writeSeed(path: string, files: readonly SeedFile[]): Promise<void> {
  const archive = pack();
  const chunks: Buffer[] = [];
  archive.on("data", (chunk: unknown) => chunks.push(chunk as Buffer));
  const finished = new Promise<void>((resolve, reject) => {
    archive.on("end", resolve);
    archive.on("error", reject);
  });
  for (const file of files) {
    archive.entry(
      {
        name: file.path,
        mode: file.mode,
        uid: 0,
        gid: 0,
        uname: "root",
        gname: "root",
        mtime: new Date(0),
      },
      file.content,
    );
  }
  archive.finalize();
  await finished;
  await writeFile(path, Buffer.concat(chunks), { mode: 0o600 });
}

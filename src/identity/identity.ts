import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pack } from "tar-stream";
import type { SeedFile } from "../core/seed.js";
import { type Ed25519Key, privateKeyFile, publicKeyLine } from "../core/ssh.js";
import { ifExists } from "../host/paths.js";
import { writeFileAtomic } from "../state/atomic.js";

/**
 * A VM's identity on the host: its SSH host key, made here so shoal knows every VM's public key
 * before the VM first boots, and the seed archive the VM's init unpacks at every boot.
 */

export interface HostKeyFiles {
  readonly privateKey: string;
  /** `ssh-ed25519 BASE64`, without a comment. */
  readonly publicKey: string;
}

const HOST_KEY_FILE = "ssh_host_ed25519_key";
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

/** Makes a VM's ed25519 host key in `dir`, as ssh-keygen would (the private key 0600). */
export function makeHostKey(dir: string, comment: string): Promise<HostKeyFiles> {
  return writeKeyPair(dir, HOST_KEY_FILE, newKey(), comment);
}

export async function readHostKey(dir: string): Promise<HostKeyFiles> {
  const [privateKey, publicKey] = await Promise.all([
    readFile(join(dir, HOST_KEY_FILE), "utf8"),
    readPublicKey(dir, HOST_KEY_FILE),
  ]);
  return { privateKey, publicKey };
}

/** The key shoal logs in to a fleet's VMs with: its private key file and its public key line. */
export interface ClientKey {
  readonly privateKeyPath: string;
  readonly publicKey: string;
}

export function clientKeyPath(dir: string): string {
  return join(dir, CLIENT_KEY_FILE);
}

/** The fleet's client key in `dir`, or undefined before the fleet has one. */
export async function readClientKey(dir: string): Promise<ClientKey | undefined> {
  const publicKey = await ifExists(readPublicKey(dir, CLIENT_KEY_FILE));
  return publicKey === undefined ? undefined : { privateKeyPath: clientKeyPath(dir), publicKey };
}

/**
 * The fleet's client key in `dir`, made on first use. Each file is replaced atomically and the
 * public one written last, so a killed shoal never leaves a public key without its private key.
 */
export async function ensureClientKey(dir: string, comment: string): Promise<ClientKey> {
  const existing = await readClientKey(dir);
  if (existing) return existing;
  const key = newKey();
  const publicKey = publicKeyLine(key);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const privateKeyPath = clientKeyPath(dir);
  await writeFileAtomic(
    privateKeyPath,
    privateKeyFile(key, comment, randomBytes(4).readUInt32BE()),
    0o600,
  );
  await writeFileAtomic(`${privateKeyPath}.pub`, `${publicKey} ${comment}\n`, 0o644);
  return { privateKeyPath, publicKey };
}

/**
 * The seed as a tar archive, attached to the VM as a small read-only disk: tar needs no
 * filesystem driver and its 512-byte blocks make a valid block device. Only files are archived, so
 * unpacking never changes the mode or owner of a directory the image already has.
 */
export async function writeSeed(
  path: string,
  files: readonly SeedFile[],
  how: "new" | "replace" = "new",
): Promise<void> {
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
  // A seed replaced under a VM that may boot from it must never be seen half-written.
  if (how === "replace") await writeFileAtomic(path, Buffer.concat(chunks), 0o600);
  else await writeFile(path, Buffer.concat(chunks), { mode: 0o600 });
}

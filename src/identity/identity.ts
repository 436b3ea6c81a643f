import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pack } from "tar-stream";
import type { SeedFile } from "../core/seed.js";
import { privateKeyFile, publicKeyLine } from "../core/ssh.js";

/**
 * A VM's identity on the host: its SSH host key, made here so shoal knows every VM's public key
 * before the VM first boots, and the seed archive the VM's init unpacks at every boot.
 */

export interface HostKeyFiles {
  readonly privateKey: string;
  /** `ssh-ed25519 BASE64`, without a comment. */
  readonly publicKey: string;
}

const KEY_FILE = "ssh_host_ed25519_key";

function fromBase64Url(value: string | undefined): Buffer {
  return Buffer.from(value ?? "", "base64url");
}

/** Makes a new ed25519 host key in `dir` (0700): the private key 0600, the public key beside it. */
export async function makeHostKey(dir: string, comment: string): Promise<HostKeyFiles> {
  const { privateKey } = generateKeyPairSync("ed25519");
  const jwk = privateKey.export({ format: "jwk" });
  const key = { seed: fromBase64Url(jwk.d), publicKey: fromBase64Url(jwk.x) };
  const files = {
    privateKey: privateKeyFile(key, comment, randomBytes(4).readUInt32BE()),
    publicKey: publicKeyLine(key),
  };
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFile(join(dir, KEY_FILE), files.privateKey, { mode: 0o600 });
  await writeFile(join(dir, `${KEY_FILE}.pub`), `${files.publicKey} ${comment}\n`, { mode: 0o644 });
  return files;
}

export async function readHostKey(dir: string): Promise<HostKeyFiles> {
  const [privateKey, publicLine] = await Promise.all([
    readFile(join(dir, KEY_FILE), "utf8"),
    readFile(join(dir, `${KEY_FILE}.pub`), "utf8"),
  ]);
  return { privateKey, publicKey: publicLine.split(" ").slice(0, 2).join(" ") };
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

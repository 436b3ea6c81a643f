import { assertRenderable } from "./syntax.js";

/**
 * OpenSSH's encodings of an ed25519 key (PROTOCOL.key, RFC 8709). Written here rather than taken
 * from an SSH library because the libraries derive the public key in JavaScript (about 5 ms per
 * key), which alone would make creating a VM slower than cloning a qcow2; node's crypto gives both
 * halves of the key in microseconds and this only lays them out.
 */

export const ED25519 = "ssh-ed25519";

export interface Ed25519Key {
  /** The 32-byte private seed. */
  readonly seed: Buffer;
  readonly publicKey: Buffer;
}

function sshString(value: Buffer | string): Buffer {
  const bytes = typeof value === "string" ? Buffer.from(value) : value;
  const length = Buffer.alloc(4);
  length.writeUInt32BE(bytes.length);
  return Buffer.concat([length, bytes]);
}

function uint32(value: number): Buffer {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32BE(value);
  return bytes;
}

function checkKey(key: Ed25519Key): void {
  if (key.seed.length !== 32 || key.publicKey.length !== 32) {
    throw new Error("internal: an ed25519 key has a 32-byte seed and a 32-byte public key");
  }
}

function publicBlob(key: Ed25519Key): Buffer {
  return Buffer.concat([sshString(ED25519), sshString(key.publicKey)]);
}

/** `ssh-ed25519 AAAA...`, as in a .pub file, authorized_keys or known_hosts. */
export function publicKeyLine(key: Ed25519Key): string {
  checkKey(key);
  return `${ED25519} ${publicBlob(key).toString("base64")}`;
}

/**
 * The unencrypted private key file ssh-keygen writes. `checkInt` is the random number OpenSSH
 * repeats twice to detect a wrong passphrase; it carries no secret.
 */
export function privateKeyFile(key: Ed25519Key, comment: string, checkInt: number): string {
  checkKey(key);
  assertRenderable("key comment", comment, !/[\n\r]/.test(comment));
  const body = Buffer.concat([
    uint32(checkInt),
    uint32(checkInt),
    sshString(ED25519),
    sshString(key.publicKey),
    sshString(Buffer.concat([key.seed, key.publicKey])),
    sshString(comment),
  ]);
  const padding = Buffer.from(Array.from({ length: (8 - (body.length % 8)) % 8 }, (_, i) => i + 1));
  const file = Buffer.concat([
    Buffer.from("openssh-key-v1\0"),
    sshString("none"),
    sshString("none"),
    sshString(""),
    uint32(1),
    sshString(publicBlob(key)),
    sshString(Buffer.concat([body, padding])),
  ]).toString("base64");
  const lines = file.match(/.{1,70}/g) ?? [];
  return [
    "-----BEGIN OPENSSH PRIVATE KEY-----",
    ...lines,
    "-----END OPENSSH PRIVATE KEY-----",
    "",
  ].join("\n");
}

/** Reads SSH wire strings off the front of `data`; undefined if it does not hold them. */
function readStrings(data: Buffer, count: number): { fields: Buffer[]; rest: Buffer } | undefined {
  const fields: Buffer[] = [];
  let rest = data;
  for (let i = 0; i < count; i++) {
    if (rest.length < 4) return undefined;
    const length = rest.readUInt32BE(0);
    if (rest.length < 4 + length) return undefined;
    fields.push(rest.subarray(4, 4 + length));
    rest = rest.subarray(4 + length);
  }
  return { fields, rest };
}

/**
 * The key in an unencrypted OpenSSH ed25519 private key file (as `privateKeyFile` writes it), or
 * undefined for anything else.
 */
export function parsePrivateKeyFile(text: string): Ed25519Key | undefined {
  const body = text
    .replace("-----BEGIN OPENSSH PRIVATE KEY-----", "")
    .replace("-----END OPENSSH PRIVATE KEY-----", "")
    .replace(/\s+/g, "");
  const data = Buffer.from(body, "base64");
  const magic = Buffer.from("openssh-key-v1\0");
  if (!data.subarray(0, magic.length).equals(magic)) return undefined;
  const header = readStrings(data.subarray(magic.length), 3);
  // Encrypted keys (cipher, kdf) are not shoal's.
  if (header?.fields.map(String).join(",") !== "none,none," || header.rest.length < 4) {
    return undefined;
  }
  const sections = readStrings(header.rest.subarray(4), 2);
  const section = sections?.fields[1];
  if (!section || section.length < 8) return undefined;
  const keys = readStrings(section.subarray(8), 3);
  const [type, publicKey, both] = keys?.fields ?? [];
  if (String(type) !== ED25519 || publicKey?.length !== 32 || both?.length !== 64) return undefined;
  return { seed: both.subarray(0, 32), publicKey };
}

/**
 * The same key as dropbear's own host key file (dropbear cannot read OpenSSH's format): the key
 * type, then the seed and the public key as one string.
 */
export function dropbearPrivateKey(key: Ed25519Key): Buffer {
  checkKey(key);
  return Buffer.concat([sshString(ED25519), sshString(Buffer.concat([key.seed, key.publicKey]))]);
}

export interface KnownHost {
  /** The names and addresses the VM answers to. */
  readonly hosts: readonly string[];
  readonly publicKey: string;
}

/** A known_hosts file: one line per VM, its names and address, then its host key. */
export function renderKnownHosts(entries: readonly KnownHost[]): string {
  return entries
    .map(({ hosts, publicKey }) => {
      for (const host of hosts)
        assertRenderable("known_hosts name", host, /^[A-Za-z0-9.:-]+$/.test(host));
      assertRenderable(
        "public key",
        publicKey,
        /^ssh-ed25519 [A-Za-z0-9+/]+={0,2}$/.test(publicKey),
      );
      return `${hosts.join(",")} ${publicKey}\n`;
    })
    .join("");
}

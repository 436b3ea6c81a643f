/**
 * What may appear inside the syntaxes shoal renders: the kernel command line, xl.cfg strings, QEMU
 * option values, dnsmasq files. Validation uses these checks to reject bad input with a clear
 * message; the renderers use them again so that a value that slipped past validation is a bug,
 * never a broken or injected config.
 */

import { excerpt } from "./excerpt.js";

const SET_BY_SHOAL = "is set by shoal and cannot be given in kernel_args";

/**
 * Parameters a fleet must not give: the ones shoal sets itself (the console is the serial line
 * shoal reads the boot and the VM's identity from), and the ones that would take the root away
 * from the union of base and layer or keep the image's init from reporting the VM on that console.
 * Keys are compared with "-" and "_" alike, as the kernel and systemd compare them
 * (systemd.machine-id= is systemd.machine_id=).
 */
const RESERVED_KERNEL_PARAMS: ReadonlyMap<string, string> = new Map([
  ["root", SET_BY_SHOAL],
  ["rootfstype", SET_BY_SHOAL],
  ["rdinit", SET_BY_SHOAL],
  ["ro", SET_BY_SHOAL],
  ["console", SET_BY_SHOAL],
  ["systemd.hostname", SET_BY_SHOAL],
  ["systemd.machine_id", SET_BY_SHOAL],
  ["rw", "would have the image's initramfs mount the shared base writable"],
  [
    "rootflags",
    "would change how the image's initramfs mounts the shared base (rootflags=rw makes it writable)",
  ],
  [
    "init",
    "would run another program instead of the image's init, which reports the VM on the console shoal waits on",
  ],
  ["initrd", "would boot another initramfs than the one that builds the union root"],
  ["noinitrd", "would skip the initramfs that builds the union root"],
  ["nfsroot", "would take the root from NFS instead of the union of base and layer"],
  ["boot", "would have the image's initramfs mount another root than the base"],
  ["break", "would stop the boot at a shell in the initramfs"],
  ["systemd.volatile", "would put the root on tmpfs instead of the VM's layer"],
]);
const RESERVED_KERNEL_PREFIX = "shoal.";

/** A parameter's key as the kernel and systemd match it: "-" and "_" are the same. */
function foldedKey(key: string): string {
  return key.replaceAll("-", "_");
}

/**
 * One kernel parameter, `key` or `key=value`. Quotes and backslashes would change how the kernel
 * and xl.cfg split the line; "--" would hand everything after it to init.
 */
const KERNEL_PARAM = /^[A-Za-z0-9_.-]+(=[!#-&(-[\]-~]*)?$/;

export function checkKernelParam(param: string): string | undefined {
  if (param === "--")
    return 'must not be "--": everything after it would go to init, not the kernel';
  if (!KERNEL_PARAM.test(param)) {
    return "must be one kernel parameter, key or key=value, in printable ASCII without spaces, quotes or backslashes";
  }
  const key = param.split("=", 1)[0] ?? "";
  const folded = foldedKey(key);
  const reason = folded.startsWith(RESERVED_KERNEL_PREFIX)
    ? SET_BY_SHOAL
    : RESERVED_KERNEL_PARAMS.get(folded);
  return reason === undefined ? undefined : `${excerpt(key)} ${reason}`;
}

/** Linux's COMMAND_LINE_SIZE on x86 is 2048 including the terminating NUL. */
export const KERNEL_CMDLINE_MAX = 2047;

/**
 * Host paths shoal puts into configs. Commas split QEMU option values, quotes end xl.cfg strings,
 * colons and spaces confuse dnsmasq and hotplug scripts, so only portable filename characters pass.
 */
const SAFE_PATH = /^\/[A-Za-z0-9._+@~/-]*$/;

export const SAFE_PATH_RULE =
  "an absolute path of letters, digits and . _ + @ ~ - / only (no spaces, commas, quotes or colons)";

export function isSafePath(path: string): boolean {
  return SAFE_PATH.test(path) && !path.split("/").includes("..");
}

/** The kernel fills sun_path[108] including the terminating NUL. */
export const UNIX_SOCKET_PATH_MAX = 107;

const KEY_TYPES = [
  "ssh-ed25519",
  "ssh-rsa",
  "ecdsa-sha2-nistp256",
  "ecdsa-sha2-nistp384",
  "ecdsa-sha2-nistp521",
  "sk-ssh-ed25519@openssh.com",
  "sk-ecdsa-sha2-nistp256@openssh.com",
];
const AUTHORIZED_KEY = /^(\S+) ([A-Za-z0-9+/]+={0,3})(?: ([ -~]*))?$/;

/** Splits SSH wire format into its length-prefixed strings; undefined when one is cut short. */
function sshWireStrings(blob: Buffer): Buffer[] | undefined {
  const fields: Buffer[] = [];
  for (let offset = 0; offset < blob.length; ) {
    if (offset + 4 > blob.length) return undefined;
    const length = blob.readUInt32BE(offset);
    if (offset + 4 + length > blob.length) return undefined;
    fields.push(blob.subarray(offset + 4, offset + 4 + length));
    offset += 4 + length;
  }
  return fields;
}

/**
 * One public key line as written to authorized_keys. Options (from="...", command="...") are
 * refused: they carry quotes and would grant more than a key. The blob must decode to the type it
 * claims, which catches keys truncated by copy and paste.
 */
export function checkAuthorizedKey(line: string): string | undefined {
  const match = AUTHORIZED_KEY.exec(line);
  if (!match?.[1] || !match[2]) {
    return "must be one public key line: TYPE BASE64 [COMMENT], printable ASCII, without options";
  }
  const type = match[1];
  if (!KEY_TYPES.includes(type))
    return `key type ${excerpt(type)} is not one of ${KEY_TYPES.join(", ")}`;
  const fields = sshWireStrings(Buffer.from(match[2], "base64"));
  if (fields === undefined || fields.length < 2 || fields[0]?.toString("latin1") !== type) {
    return `the key data does not hold a whole ${type} key (truncated or mangled by copy and paste?)`;
  }
  return undefined;
}

/**
 * Renderers call this on every value they embed: validation should have refused a bad value
 * already, so reaching here with one is a bug in shoal, reported as such.
 */
export function assertRenderable(what: string, value: string, ok: boolean): void {
  if (!ok)
    throw new Error(`internal: ${what} ${JSON.stringify(value)} reached a renderer unvalidated`);
}

import { constants, type Stats } from "node:fs";
import { mkdir, open, readFile, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import * as z from "zod";
import { UserError } from "../errors.js";
import { ifExists } from "../host/paths.js";
import { CommandFailed, type Runner } from "../host/runner.js";
import { parseJsonOrUndefined } from "../state/json.js";
import { GUEST_DIR } from "./initramfs.js";
import { imageFromTree, rawFromTree } from "./mkfs.js";
import type { ImageRequest } from "./store.js";
import { buildTinyTree } from "./tiny.js";

/** Each source writes a raw ext4 image into a staging directory and returns its path. */

/** What `image build --from SOURCE` makes, and how: checked before any work starts. */
export function buildRecipe(
  runner: Runner,
  name: string,
  options: { readonly from: string; readonly include?: string; readonly hook?: string },
): { request: ImageRequest; make: (staging: string) => Promise<string> } {
  const include = options.include?.split(",").filter(Boolean) ?? [];
  // Checked here; debianSource checks again where the names reach mmdebstrap.
  checkPackages(include);
  if (options.hook !== undefined && options.hook !== "initramfs-tools") {
    throw new UserError(`--hook ${options.hook} is not known`, "the only hook is initramfs-tools");
  }
  const hook = options.hook === "initramfs-tools";
  if (options.from === "busybox") {
    if (include.length > 0 || hook)
      throw new UserError("--include and --hook go with --from debian:SUITE only");
    return {
      request: { name, source: "busybox", reportsBoot: true },
      make: (staging) => tinySource(runner, staging),
    };
  }
  const suite = /^debian:(.+)$/.exec(options.from)?.[1];
  if (!suite || !(DEBIAN_SUITES as readonly string[]).includes(suite)) {
    throw new UserError(
      `--from ${options.from} is not a source shoal knows`,
      `use busybox or debian:SUITE with SUITE one of ${DEBIAN_SUITES.join(", ")}`,
    );
  }
  return {
    request: {
      name,
      source: options.from + (include.length > 0 ? ` +${include.join(",")}` : ""),
      ownInitramfs: hook,
      reportsBoot: true,
    },
    make: (staging) => debianSource(runner, staging, { suite, include, hook }),
  };
}

export function tinySource(runner: Runner, staging: string): Promise<string> {
  return rawFromTree(runner, staging, (tree) => buildTinyTree(runner, tree));
}

// The suites shoal has been tested with (the host's own release); others may need a newer mmdebstrap.
export const DEBIAN_SUITES = ["bookworm"] as const;

/**
 * What every Debian image has: systemd, SSH (and scp, for `shoal cp`), networkd with the MAC as
 * DHCP client id, resolved for the fleet's names, ping to check them, a kernel.
 */
const DEBIAN_PACKAGES = [
  "systemd-sysv",
  "systemd-resolved",
  "udev",
  "openssh-server",
  "openssh-client",
  "iproute2",
  "iputils-ping",
  "e2fsprogs",
  "linux-image-amd64",
];

const NETWORK_UNIT = `[Match]
Type=ether

[Network]
DHCP=ipv4

[DHCPv4]
# The MAC, not the machine-id: a clone must never get another clone's lease.
ClientIdentifier=mac
# The fleet's domain as search domain: resolved then asks DNS for a bare VM name (vm-1.FLEET).
UseDomains=yes
`;

/**
 * sshd refuses to start without host keys. shoal gives each VM its ed25519 key; this covers images
 * booted otherwise, and does not spend a slow RSA key generation on a VM that has its key.
 */
const SSH_KEYGEN_DROPIN = `[Service]
ExecStartPre=
ExecStartPre=-/bin/sh -c 'test -s /etc/ssh/ssh_host_ed25519_key || /usr/bin/ssh-keygen -A'
ExecStartPre=/usr/sbin/sshd -t
`;

const REPORT_IDENTITY_UNIT = `[Unit]
Description=Report this VM's identity on the console for shoal
After=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/lib/shoal/report-identity

[Install]
WantedBy=multi-user.target
`;

/**
 * Status lines only for units that fail: under software emulation every console byte is an
 * emulated UART write, and systemd redraws its "A start job is running" spinner twice a second on
 * every VM whose boot is slow, which makes many booting VMs slower still.
 */
const MANAGER_DROPIN = `[Manager]
ShowStatus=error
`;

/**
 * e2scrub_reap removes stale e2scrub LVM snapshots and e2scrub_all checks ext4 on LVM: a VM's root
 * is a union over a read-only base, with no LVM, so they would only cost every boot its time (with
 * 20 Debian VMs booting here, e2scrub_reap held each one's boot for over 12 minutes).
 */
const MASKED_UNITS = ["e2scrub_reap.service", "e2scrub_all.timer"];

const PACKAGE_NAME = /^[a-z0-9][a-z0-9+.-]+$/;

export function checkPackages(packages: readonly string[]): void {
  const bad = packages.find((name) => !PACKAGE_NAME.test(name));
  if (bad !== undefined)
    throw new UserError(`"${bad}" is not a Debian package name`, "give names like curl,iperf3");
}

/**
 * A Debian image built by mmdebstrap. With `hook`, shoal's union-root logic is also installed as
 * an initramfs-tools init-bottom script and the image's own initramfs regenerated, for users who
 * boot with the image's initramfs or a bootloader.
 */
export async function debianSource(
  runner: Runner,
  staging: string,
  options: { suite: string; include: readonly string[]; hook: boolean },
): Promise<string> {
  checkPackages(options.include);
  const packages = [...DEBIAN_PACKAGES, ...(options.hook ? ["busybox"] : []), ...options.include];
  // Files go in with mmdebstrap's sync-in, never through a shell string.
  const files = join(staging, "files");
  const put = async (path: string, content: string | Buffer, mode = 0o644) => {
    await mkdir(dirname(join(files, path)), { recursive: true });
    await writeFile(join(files, path), content, { mode });
  };
  await put("etc/systemd/network/80-shoal.network", NETWORK_UNIT);
  await put("etc/systemd/system/ssh.service.d/shoal-host-keys.conf", SSH_KEYGEN_DROPIN);
  await put("etc/systemd/system/shoal-identity.service", REPORT_IDENTITY_UNIT);
  await put("etc/systemd/system.conf.d/shoal.conf", MANAGER_DROPIN);
  await put(
    "usr/lib/shoal/report-identity",
    await readFile(join(GUEST_DIR, "debian/report-identity")),
    0o755,
  );
  if (options.hook) {
    await put("usr/share/shoal/union-root.sh", await readFile(join(GUEST_DIR, "union-root.sh")));
    await put(
      "etc/initramfs-tools/hooks/shoal",
      await readFile(join(GUEST_DIR, "initramfs-tools/hook")),
      0o755,
    );
    await put(
      "etc/initramfs-tools/scripts/init-bottom/shoal",
      await readFile(join(GUEST_DIR, "initramfs-tools/init-bottom")),
      0o755,
    );
  }
  const hooks = [
    `sync-in ${files} /`,
    'chroot "$1" systemctl enable systemd-networkd systemd-resolved shoal-identity',
    `chroot "$1" systemctl mask ${MASKED_UNITS.join(" ")}`,
    'ln -sf /run/systemd/resolve/stub-resolv.conf "$1/etc/resolv.conf"',
    ...(options.hook ? ['chroot "$1" update-initramfs -c -k all'] : []),
  ];
  return rawFromTree(runner, staging, async (tree) => {
    await runner.run({
      // No initramfs when the kernel is installed (half the build's time): shoal boots the image
      // with its own, and with the hook the image's own is made once, after the hook is in place.
      env: { INITRD: "No" },
      argv: [
        "mmdebstrap",
        "--quiet",
        "--variant=minbase",
        `--include=${packages.join(",")}`,
        ...hooks.map((hook) => `--customize-hook=${hook}`),
        options.suite,
        tree,
      ],
    });
  });
}

type Format = "qcow2" | "ext4" | "tar" | "compressed";

/** What a file holds, from its first bytes. */
export function detectFormat(header: Buffer): Format | undefined {
  if (header.subarray(0, 4).toString("latin1") === "QFI\xfb") return "qcow2";
  if (header.length >= 1082 && header.readUInt16LE(1080) === 0xef53) return "ext4";
  if (header.subarray(257, 262).toString("latin1") === "ustar") return "tar";
  const magic = header.subarray(0, 6).toString("hex");
  if (
    magic.startsWith("1f8b") ||
    magic === "fd377a585a00" ||
    magic.startsWith("28b52ffd") ||
    magic.startsWith("425a68")
  ) {
    return "compressed";
  }
  return undefined;
}

const IMPORT_HINT = "import takes a raw ext4 image, a directory, a tarball or a qcow2";

function kindOf(info: Stats): string {
  if (info.isBlockDevice()) return "a block device";
  if (info.isCharacterDevice()) return "a character device";
  if (info.isFIFO()) return "a FIFO";
  if (info.isSocket()) return "a socket";
  return "not a regular file";
}

/** What an image qemu-img reads takes from outside its own file; undefined when nothing. */
export function qcow2Outside(info: unknown): string | undefined {
  const parsed = qemuImgInfo.safeParse(info);
  if (!parsed.success) return "an unexpected description (qemu-img info)";
  const { data } = parsed;
  const backing = data["backing-filename"] ?? data["full-backing-filename"];
  if (backing !== undefined) return `a backing file ${JSON.stringify(backing.slice(0, 200))}`;
  if (data["backing-filename-format"] !== undefined) return "a backing file";
  const dataFile = data["format-specific"]?.data?.["data-file"];
  if (dataFile !== undefined)
    return `an external data file ${JSON.stringify(dataFile.slice(0, 200))}`;
  if (data["format-specific"]?.data?.["data-file-raw"] !== undefined)
    return "an external data file";
  return undefined;
}

const qemuImgInfo = z.object({
  format: z.literal("qcow2"),
  "backing-filename": z.string().optional(),
  "full-backing-filename": z.string().optional(),
  "backing-filename-format": z.string().optional(),
  "format-specific": z
    .object({
      data: z
        .object({ "data-file": z.string().optional(), "data-file-raw": z.boolean().optional() })
        .optional(),
    })
    .optional(),
});

/**
 * A qcow2 as qemu-img opens it: as a qcow2 (never probed), from a plain file (never a protocol
 * such as nbd: or json: in its name), and with no backing file, whatever its header names.
 */
function qcow2Spec(file: string): string {
  return `json:${JSON.stringify({ driver: "qcow2", backing: null, file: { driver: "file", filename: file } })}`;
}

/**
 * The raw image a qcow2 holds. A qcow2 that reads another file (a backing file, an external data
 * file: a host's /dev/sda1, say) is refused: shoal imports what the file holds and nothing else.
 * The checks and the conversion work on a copy only root can change, so what is checked is what
 * is converted.
 */
async function rawFromQcow2(
  runner: Runner,
  staging: string,
  path: string,
  fd: number,
  raw: string,
): Promise<void> {
  const copy = join(staging, "source.qcow2");
  await runner.run({ argv: ["cp", "--sparse=always", "/dev/fd/3", copy], fd3: fd });
  const { stdout } = await runner.run({
    argv: ["qemu-img", "info", "--output=json", qcow2Spec(copy)],
    probe: true,
  });
  const outside = qcow2Outside(parseJsonOrUndefined(stdout));
  if (outside !== undefined) {
    throw new UserError(
      `${path} reads ${outside}: shoal imports only what the qcow2 itself holds`,
      "make it self-contained first if you trust what it reads (qemu-img convert -O qcow2 IN OUT)",
    );
  }
  await runner.run({ argv: ["qemu-img", "convert", "-O", "raw", qcow2Spec(copy), raw] });
  await rm(copy);
  if (detectFormat(await readHeader(raw)) !== "ext4") {
    throw new UserError(
      `${path} holds no bare ext4 filesystem`,
      "shoal takes a filesystem image, not a partitioned disk",
    );
  }
}

/**
 * Unpacks a tarball into a tree of the staging directory (root's only: the tree may hold device
 * nodes and setuid programs). GNU tar as root keeps everything inside the tree: it skips members
 * whose names hold `..`, strips a leading `/` from names and hard link targets, and makes links
 * that point up or out only at the end, so no member is written through them. Those are its
 * defaults; shoal never passes -P or --keep-directory-symlink, which would turn them off.
 */
async function rawFromTarball(
  runner: Runner,
  staging: string,
  path: string,
  fd: number,
): Promise<string> {
  return rawFromTree(runner, staging, async (tree) => {
    await runner
      .run({
        argv: [
          "tar",
          "-x",
          "-f",
          "/dev/fd/3",
          "-C",
          tree,
          "--numeric-owner",
          "--xattrs",
          "--xattrs-include=*",
          "--delay-directory-restore",
        ],
        fd3: fd,
      })
      .catch((error: unknown) => {
        if (!(error instanceof CommandFailed)) throw error;
        const why = error.stderrTail
          .split("\n")
          .find(
            (line) => /^tar: /.test(line) && !/^tar: (Removing leading|Exiting with)/.test(line),
          );
        throw new UserError(
          `cannot unpack ${path}: ${(why ?? `tar exited with code ${error.code}`).slice(0, 300)}`,
          "shoal takes a tarball whose members all stay inside it (no .. in names, no links out to write through)",
        );
      });
  });
}

/** An existing image: a raw ext4 image, a directory tree, a tarball, or a qcow2 (converted). */
export async function importSource(
  runner: Runner,
  staging: string,
  path: string,
): Promise<{ raw: string; format: string }> {
  const source = resolve(path);
  const info = await ifExists(stat(source));
  if (!info) throw new UserError(`no such file or directory: ${path}`);
  if (info.isDirectory()) {
    // mkfs.ext4 -d copies the tree's links as links; it never follows one to copy what it names.
    const raw = join(staging, "raw.img");
    await imageFromTree(runner, source, raw);
    return { raw, format: "directory" };
  }
  if (!info.isFile()) throw new UserError(`${path} is ${kindOf(info)}`, IMPORT_HINT);
  // Read from here on through this one descriptor only (tools get it as /dev/fd/3): a path swapped
  // for a device or a FIFO after the check is never read. O_NONBLOCK: opening a FIFO must not hang.
  const handle = await open(source, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  try {
    const opened = await handle.stat();
    if (!opened.isFile()) throw new UserError(`${path} is ${kindOf(opened)}`, IMPORT_HINT);
    const header = Buffer.alloc(4096);
    await handle.read(header, 0, header.length, 0);
    const format = detectFormat(header);
    const raw = join(staging, "raw.img");
    switch (format) {
      case "ext4":
        await runner.run({ argv: ["cp", "--sparse=always", "/dev/fd/3", raw], fd3: handle.fd });
        break;
      case "qcow2":
        await rawFromQcow2(runner, staging, path, handle.fd, raw);
        break;
      case "tar":
      case "compressed":
        await rawFromTarball(runner, staging, path, handle.fd);
        break;
      default:
        throw new UserError(`${path} is not a filesystem image`, IMPORT_HINT);
    }
    await runner.run({ argv: ["e2fsck", "-f", "-n", raw] });
    return { raw, format: format === "compressed" ? "tar" : format };
  } finally {
    await handle.close();
  }
}

async function readHeader(path: string): Promise<Buffer> {
  const handle = await open(path, "r");
  const header = Buffer.alloc(4096);
  await handle.read(header, 0, header.length, 0).finally(() => handle.close());
  return header;
}

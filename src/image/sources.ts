import { mkdir, open, readFile, stat, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { UserError } from "../errors.js";
import type { Runner } from "../host/runner.js";
import { GUEST_DIR } from "./initramfs.js";
import { imageFromTree, rawFromTree } from "./mkfs.js";
import { buildTinyTree } from "./tiny.js";

/** Each source writes a raw ext4 image into a staging directory and returns its path. */

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
    'ln -sf /run/systemd/resolve/stub-resolv.conf "$1/etc/resolv.conf"',
    ...(options.hook ? ['chroot "$1" update-initramfs -u -k all'] : []),
  ];
  return rawFromTree(runner, staging, async (tree) => {
    await runner.run({
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

/** An existing image: a raw ext4 image, a directory tree, a tarball, or a qcow2 (converted). */
export async function importSource(
  runner: Runner,
  staging: string,
  path: string,
): Promise<{ raw: string; format: string }> {
  const source = resolve(path);
  const info = await stat(source).catch(() => undefined);
  if (!info) throw new UserError(`no such file or directory: ${path}`);
  const raw = join(staging, "raw.img");
  if (info.isDirectory()) {
    await imageFromTree(runner, source, raw);
    return { raw, format: "directory" };
  }
  const format = detectFormat(await readHeader(source));
  switch (format) {
    case "ext4":
      await runner.run({ argv: ["cp", "--sparse=always", source, raw] });
      break;
    case "qcow2":
      await runner.run({ argv: ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", source, raw] });
      if (detectFormat(await readHeader(raw)) !== "ext4") {
        throw new UserError(
          `${path} holds no bare ext4 filesystem`,
          "shoal takes a filesystem image, not a partitioned disk",
        );
      }
      break;
    case "tar":
    case "compressed":
      await rawFromTree(runner, staging, async (tree) => {
        const extract = [
          "tar",
          "-x",
          "-f",
          source,
          "-C",
          tree,
          "--numeric-owner",
          "--xattrs",
          "--xattrs-include=*",
        ] as const;
        await runner.run({ argv: [...extract] });
      });
      break;
    default:
      throw new UserError(
        `${path} is not a filesystem image`,
        "import takes a raw ext4 image, a directory, a tarball or a qcow2",
      );
  }
  await runner.run({ argv: ["e2fsck", "-f", "-n", raw] });
  return { raw, format: format === "compressed" ? "tar" : format };
}

async function readHeader(path: string): Promise<Buffer> {
  const handle = await open(path, "r");
  const header = Buffer.alloc(4096);
  await handle.read(header, 0, header.length, 0).finally(() => handle.close());
  return header;
}

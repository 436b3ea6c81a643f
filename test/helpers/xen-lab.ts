import { execFile } from "node:child_process";
import {
  appendFile,
  chmod,
  copyFile,
  cp,
  mkdir,
  readdir,
  readFile,
  rm,
  writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { newestKernel } from "../../src/image/kernel.js";
import { type CliResult, collect } from "./cli.js";
import { dom0RootArgv } from "./prebuilt.js";

/**
 * A real Xen host for the tests: Debian's Xen hypervisor booted by QEMU (software emulation, as
 * measured in the lab notes) with a PV dom0 running the host's Debian kernel, a Debian root built
 * by mmdebstrap with xen-utils, and shoal itself (this checkout's bundle and assets, and the node
 * binary running the tests) inside dom0. The test drives shoal in dom0 over SSH: QEMU's user
 * network forwards a port on the loopback of a network namespace of the test's own, so nothing
 * leaves the machine and nothing is reachable from outside.
 */

const run = promisify(execFile);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const REPO = fileURLToPath(new URL("../../", import.meta.url));
/** Debian 12 ships Xen 4.17. */
const XEN_PACKAGE = "xen-hypervisor-4.17-amd64";
const XEN_BINARY = "boot/xen-4.17-amd64.gz";
const SSH_PORT = 2222;
const READY_TIMEOUT_MS = 300_000;

export interface XenLabOptions {
  /** An empty directory of the test's own; everything the lab makes on the host goes there. */
  readonly dir: string;
  /** A shoal state directory whose images/ dom0's shoal starts with. */
  readonly images: string;
  /** The network namespace the lab's QEMU runs in; made and removed by the lab. */
  readonly namespace: string;
  /**
   * dom0's Debian root as a tarball `dom0RootArgv` made (test/helpers/prebuilt.ts), if there is
   * one: the lab runs mmdebstrap itself where there is none.
   */
  readonly dom0Root?: string;
}

async function quiet(file: string, args: readonly string[], cwd?: string): Promise<string> {
  const result = await run(file, [...args], {
    cwd,
    maxBuffer: 64 * 1024 * 1024,
    env: { ...process.env, LANG: "C" },
  });
  return result.stdout;
}

/** The host's newest kernel that has its modules and an initramfs: dom0's kernel. */
async function dom0Kernel(): Promise<{ version: string; kernel: string; initrd: string }> {
  const boot = await readdir("/boot");
  const version = newestKernel(
    boot.filter((name) => boot.includes(name.replace("vmlinuz-", "initrd.img-"))),
    await readdir("/lib/modules"),
  );
  if (!version)
    throw new Error("the Xen lab needs /boot/vmlinuz-V, /boot/initrd.img-V and /lib/modules/V");
  return { version, kernel: `/boot/vmlinuz-${version}`, initrd: `/boot/initrd.img-${version}` };
}

export class XenLab {
  constructor(private readonly options: XenLabOptions) {}

  private get pidFile(): string {
    return join(this.options.dir, "qemu.pid");
  }

  get serialLog(): string {
    return join(this.options.dir, "serial.log");
  }

  private get key(): string {
    return join(this.options.dir, "lab-key");
  }

  /**
   * Builds dom0, boots Xen and waits until dom0 accepts SSH. `stop` cleans up after it however
   * far it got, also when the test gave up waiting for it.
   */
  async start(): Promise<void> {
    const { dir, namespace } = this.options;
    const xen = await XenLab.fetchXen(dir);
    const kernel = await dom0Kernel();
    const image = await XenLab.buildDom0(this.options, kernel.version);
    await quiet("ip", ["netns", "add", namespace]);
    await quiet("ip", ["-n", namespace, "link", "set", "lo", "up"]);
    await quiet("ip", [
      "netns",
      "exec",
      namespace,
      "qemu-system-x86_64",
      "-machine",
      "q35",
      "-accel",
      "tcg",
      // PV dom0 crashes with -cpu max under TCG (lab notes).
      "-cpu",
      "qemu64",
      "-m",
      "3072",
      "-smp",
      "2",
      "-no-reboot",
      "-display",
      "none",
      "-kernel",
      xen,
      "-append",
      "dom0_mem=1024M,max:1024M console=com1 com1=115200",
      "-initrd",
      `${kernel.kernel} console=hvc0 root=/dev/vda rw net.ifnames=0,${kernel.initrd}`,
      "-drive",
      `file=${image},format=raw,if=virtio,cache=unsafe`,
      "-netdev",
      `user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:${SSH_PORT}-:22`,
      "-device",
      "virtio-net-pci,netdev=net0",
      // dom0's random pool ready at once (its sshd and mke2fs wait for it otherwise).
      "-device",
      "virtio-rng-pci",
      "-serial",
      `file:${join(dir, "serial.log")}`,
      "-pidfile",
      this.pidFile,
      "-daemonize",
    ]);
    await this.waitReady();
  }

  /** Xen's multiboot binary from Debian's package, downloaded, not installed on the host. */
  private static async fetchXen(dir: string): Promise<string> {
    const downloads = join(dir, "xen-package");
    await mkdir(downloads, { recursive: true });
    await quiet("apt-get", ["download", XEN_PACKAGE], downloads);
    const deb = (await readdir(downloads)).find((name) => name.endsWith(".deb"));
    if (!deb) throw new Error(`apt-get download ${XEN_PACKAGE} left no package`);
    await quiet("dpkg-deb", ["-x", join(downloads, deb), join(downloads, "root")]);
    const xen = join(dir, "xen");
    await quiet("sh", [
      "-c",
      'gunzip -c "$1" > "$2"',
      "sh",
      join(downloads, "root", XEN_BINARY),
      xen,
    ]);
    return xen;
  }

  /** dom0's root filesystem image: Debian with Xen's tools, the host kernel's modules and shoal. */
  private static async buildDom0(options: XenLabOptions, kernelVersion: string): Promise<string> {
    const root = join(options.dir, "dom0-root");
    const tarball = options.dom0Root ?? join(options.dir, "dom0-root.tar");
    if (options.dom0Root === undefined) {
      const [file, ...args] = dom0RootArgv(tarball);
      await quiet(file, args);
    }
    await mkdir(root);
    // As root, owners and modes as mmdebstrap made them.
    await quiet("tar", ["-x", "-p", "--numeric-owner", "-f", tarball, "-C", root]);
    if (options.dom0Root === undefined) await rm(tarball);
    await cp(`/lib/modules/${kernelVersion}`, join(root, "lib/modules", kernelVersion), {
      recursive: true,
      verbatimSymlinks: true,
    });
    // shoal as this checkout has it built, run by the same node binary as the tests.
    const shoal = join(root, "opt/shoal");
    await mkdir(shoal, { recursive: true });
    for (const entry of ["bin", "dist", "src", "package.json"]) {
      await cp(join(REPO, entry), join(shoal, entry), { recursive: true, verbatimSymlinks: true });
    }
    await copyFile(process.execPath, join(root, "usr/local/bin/node"));
    await chmod(join(root, "usr/local/bin/node"), 0o755);
    await quiet("ln", ["-s", "/opt/shoal/bin/shoal.js", join(root, "usr/local/bin/shoal")]);
    await mkdir(join(root, "var/lib/shoal"), { recursive: true, mode: 0o755 });
    await cp(join(options.images, "images"), join(root, "var/lib/shoal/images"), {
      recursive: true,
      verbatimSymlinks: true,
    });
    // busybox init reaps orphans (dnsmasq, xl's monitors), which a shell as PID 1 would not.
    await quiet("ln", ["-sf", "/bin/busybox", join(root, "sbin/init")]);
    await copyFile(join(REPO, "test/xen/inittab"), join(root, "etc/inittab"));
    await copyFile(join(REPO, "test/xen/dom0-setup"), join(root, "etc/shoal-dom0-setup"));
    await chmod(join(root, "etc/shoal-dom0-setup"), 0o755);
    await appendFile(join(root, "etc/default/xen"), 'XENCONSOLED_ARGS="--log=guest"\n');
    // SSH: dom0's host key and the test's key, both made here.
    await mkdir(join(root, "etc/dropbear"), { recursive: true });
    const hostKey = join(root, "etc/dropbear/dropbear_ed25519_host_key");
    await quiet("dropbearkey", ["-t", "ed25519", "-f", hostKey]);
    const hostPublic = (await quiet("dropbearkey", ["-y", "-f", hostKey]))
      .split("\n")
      .find((line) => line.startsWith("ssh-ed25519 "));
    await writeFile(
      join(options.dir, "known_hosts"),
      `[127.0.0.1]:${SSH_PORT} ${hostPublic?.split(" ").slice(0, 2).join(" ")}\n`,
    );
    const key = join(options.dir, "lab-key");
    await quiet("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", key]);
    await mkdir(join(root, "root/.ssh"), { recursive: true, mode: 0o700 });
    await copyFile(`${key}.pub`, join(root, "root/.ssh/authorized_keys"));
    const image = join(options.dir, "dom0.img");
    await quiet("mkfs.ext4", ["-q", "-d", root, "-L", "dom0", image, "4G"]);
    await rm(root, { recursive: true, force: true });
    return image;
  }

  private async qemuPid(): Promise<number | undefined> {
    const pid = Number((await readFile(this.pidFile, "utf8").catch(() => "")).trim());
    if (!Number.isInteger(pid) || pid <= 0) return undefined;
    // Not a zombie, and still QEMU (a pid may be reused).
    const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
    return cmdline.includes(this.pidFile) ? pid : undefined;
  }

  private async waitReady(): Promise<void> {
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      const log = await readFile(this.serialLog, "utf8").catch(() => "");
      if (log.includes("shoal-dom0: ready")) return;
      const ended = (await this.qemuPid()) === undefined;
      if (ended || log.includes("shoal-dom0: failed") || Date.now() > deadline) {
        throw new Error(`dom0 did not come up; its console ends with:\n${log.slice(-3000)}`);
      }
      await sleep(1000);
    }
  }

  /**
   * ssh to dom0 with `args`. The file's commands share one connection: a handshake costs dom0,
   * an emulated machine, about a second of CPU.
   */
  private sshArgv(args: readonly string[]): string[] {
    return [
      "ip",
      "netns",
      "exec",
      this.options.namespace,
      "ssh",
      "-F",
      "none",
      "-i",
      this.key,
      "-o",
      "IdentitiesOnly=yes",
      "-o",
      "BatchMode=yes",
      "-o",
      `UserKnownHostsFile=${join(this.options.dir, "known_hosts")}`,
      "-o",
      "StrictHostKeyChecking=yes",
      "-o",
      "ControlMaster=auto",
      "-o",
      `ControlPath=${join(this.options.dir, "ssh-%C")}`,
      "-o",
      "ControlPersist=300",
      "-p",
      String(SSH_PORT),
      ...args,
      "root@127.0.0.1",
    ];
  }

  /** Runs a shell command line in dom0 as root, with `input` on its stdin. */
  ssh(command: string, input = ""): Promise<CliResult> {
    return collect([...this.sshArgv([]), command], { input });
  }

  /** shoal in dom0, with its default state directory /var/lib/shoal. */
  shoal(args: readonly string[]): Promise<CliResult> {
    return this.ssh(["shoal", ...args].map(shellWord).join(" "));
  }

  /** Ends Xen and everything in it, and removes the namespace; the directory is the caller's. */
  async stop(): Promise<void> {
    const pid = await this.qemuPid();
    if (pid !== undefined) {
      await collect(this.sshArgv(["-O", "exit"])).catch(() => undefined);
      process.kill(pid, "SIGKILL");
      for (let i = 0; i < 100 && (await this.qemuPid()) !== undefined; i++) await sleep(100);
    }
    await quiet("ip", ["netns", "del", this.options.namespace]).catch(() => undefined);
  }
}

function shellWord(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", "'\\''")}'`;
}

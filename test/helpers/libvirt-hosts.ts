import { execFile } from "node:child_process";
import { chmod, mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";

/**
 * Libvirt hosts on this one machine, for the tests of shoal over many hosts: each "host" is a
 * network namespace with an address of its own, a mount namespace where libvirt's directories
 * are its own, a libvirtd and an sshd. The tests run their clients in a control namespace joined
 * to the hosts by a bridge, and reach each host as `qemu+ssh://root@ADDRESS/system`. Nothing of
 * this is in the host's own namespaces but the directories libvirt's packages made.
 */

const exec = promisify(execFile);

/** libvirt's directories, each bound over by a host's own. */
const LIBVIRT_DIRS = {
  etc: "/etc/libvirt",
  run: "/run/libvirt",
  lib: "/var/lib/libvirt",
  log: "/var/log/libvirt",
  cache: "/var/cache/libvirt",
} as const;

const START_WAIT_MS = 30_000;
const LIBVIRTD = "/usr/sbin/libvirtd --daemon --pid-file /run/libvirt/libvirtd.pid";

export interface LibvirtHost {
  readonly name: string;
  readonly namespace: string;
  readonly address: string;
  readonly dir: string;
  /** The libvirt URI the control namespace reaches it by. */
  readonly uri: string;
}

export interface LibvirtHostsOptions {
  /** A directory of the test's own, removed by the test. */
  readonly dir: string;
  /** Names unique to this run, for the namespaces. */
  readonly tag: string;
  readonly count: number;
  /** The underlay's /24, as its first three octets ("10.253.0"). */
  readonly subnet: string;
}

async function ip(...args: string[]): Promise<string> {
  return (await exec("ip", args)).stdout;
}

/** SIGKILLs every process in a network namespace, and waits until they are gone. */
async function killAll(namespace: string): Promise<void> {
  const pids = (await ip("netns", "pids", namespace).catch(() => "")).split("\n").filter(Boolean);
  for (const pid of pids) {
    try {
      process.kill(Number(pid), "SIGKILL");
    } catch {
      // Ended meanwhile.
    }
  }
  const until = Date.now() + START_WAIT_MS;
  while ((await ip("netns", "pids", namespace).catch(() => "")).trim() !== "") {
    if (Date.now() > until) throw new Error(`processes of ${namespace} outlived SIGKILL`);
    await sleep(100);
  }
}

export class LibvirtHosts {
  readonly control: string;
  readonly hosts: LibvirtHost[];
  /**
   * A libvirtd in the control namespace itself, where shoal runs: this machine's own daemon to
   * shoal (`qemu:///system` in its mount namespace); the test's virsh reaches it by its socket.
   */
  readonly local: LibvirtHost;
  private readonly sshDir: string;

  constructor(private readonly options: LibvirtHostsOptions) {
    this.control = `shoal-lvctl-${options.tag}`;
    this.sshDir = join(options.dir, "client");
    this.hosts = Array.from({ length: options.count }, (_, i) => {
      const name = `h${i + 1}`;
      const address = `${options.subnet}.${11 + i}`;
      return {
        name,
        namespace: `shoal-lv${name}-${options.tag}`,
        address,
        dir: join(options.dir, name),
        uri: `qemu+ssh://root@${address}/system?command=${join(this.sshDir, "ssh")}&proxy=native&no_tty=1`,
      };
    });
    const localDir = join(options.dir, "local");
    this.local = {
      name: "local",
      namespace: this.control,
      address: `${options.subnet}.1`,
      dir: localDir,
      uri: `qemu:///system?socket=${join(localDir, "run/libvirt-sock")}`,
    };
  }

  /** A command in the control namespace: what shoal and virsh run as, to reach the hosts. */
  inControl(argv: readonly string[]): string[] {
    return ["ip", "netns", "exec", this.control, ...argv];
  }

  /** `virsh -c URI ARGS` against one host, from the control namespace. */
  async virsh(host: LibvirtHost, ...args: string[]) {
    const [file = "", ...rest] = this.inControl(["virsh", "-q", "-c", host.uri, ...args]);
    return exec(file, rest, { env: { ...process.env, LANG: "C" } });
  }

  async start(): Promise<void> {
    await this.clientFiles();
    await ip("netns", "add", this.control);
    await ip("-n", this.control, "link", "set", "lo", "up");
    await ip("-n", this.control, "link", "add", "ul0", "type", "bridge");
    await ip("-n", this.control, "addr", "add", `${this.options.subnet}.1/24`, "dev", "ul0");
    await ip("-n", this.control, "link", "set", "ul0", "up");
    for (const host of this.hosts) await this.startHost(host);
    await this.startLocal();
  }

  /** The client side: a key, known hosts of the test's own, and ssh run with its config. */
  private async clientFiles(): Promise<void> {
    await mkdir(this.sshDir, { recursive: true, mode: 0o700 });
    await exec("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", join(this.sshDir, "key")]);
    await writeFile(
      join(this.sshDir, "config"),
      [
        "Host *",
        `  IdentityFile ${join(this.sshDir, "key")}`,
        "  IdentitiesOnly yes",
        "  BatchMode yes",
        "  StrictHostKeyChecking accept-new",
        `  UserKnownHostsFile ${join(this.sshDir, "known_hosts")}`,
        "  ConnectTimeout 5",
        "  ServerAliveInterval 5",
        "  ServerAliveCountMax 2",
        // One SSH connection per host for all of a test's virsh calls, not a handshake each.
        "  ControlMaster auto",
        `  ControlPath ${join(this.sshDir, "cm-%C")}`,
        "  ControlPersist 60",
        "",
      ].join("\n"),
    );
    const wrapper = join(this.sshDir, "ssh");
    await writeFile(wrapper, `#!/bin/sh\nexec ssh -F ${join(this.sshDir, "config")} "$@"\n`);
    await chmod(wrapper, 0o755);
  }

  private async startHost(host: LibvirtHost): Promise<void> {
    // What libvirt's packages for a whole host (libvirt-daemon-system) would have made.
    await this.libvirtFiles(host);
    await mkdir(join(host.dir, "ssh"), { recursive: true, mode: 0o700 });
    await exec("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", join(host.dir, "ssh/host")]);
    await writeFile(join(host.dir, "bashrc"), "");
    await writeFile(
      join(host.dir, "ssh/authorized_keys"),
      await readFile(join(this.sshDir, "key.pub")),
    );
    await writeFile(
      join(host.dir, "ssh/sshd_config"),
      [
        `ListenAddress ${host.address}`,
        `PidFile ${join(host.dir, "sshd.pid")}`,
        `HostKey ${join(host.dir, "ssh/host")}`,
        "PermitRootLogin prohibit-password",
        `AuthorizedKeysFile ${join(host.dir, "ssh/authorized_keys")}`,
        "PasswordAuthentication no",
        "StrictModes no",
        "UsePAM no",
        "",
      ].join("\n"),
    );
    await ip("netns", "add", host.namespace);
    await ip("-n", host.namespace, "link", "set", "lo", "up");
    // The host's end of its link to the control namespace is its eth0.
    const peer = ["peer", "name", "eth0", "netns", host.namespace];
    await ip("-n", this.control, "link", "add", `ul-${host.name}`, "type", "veth", ...peer);
    await ip("-n", this.control, "link", "set", `ul-${host.name}`, "master", "ul0", "up");
    await ip("-n", host.namespace, "addr", "add", `${host.address}/24`, "dev", "eth0");
    await ip("-n", host.namespace, "link", "set", "eth0", "up");
    await this.startDaemons(host, true);
  }

  /** libvirt's directories of a host's own, and its daemon's configuration. */
  private async libvirtFiles(host: LibvirtHost): Promise<void> {
    for (const sub of [...Object.keys(LIBVIRT_DIRS), "log/qemu"]) {
      await mkdir(join(host.dir, sub), { recursive: true, mode: 0o700 });
    }
    for (const dir of Object.values(LIBVIRT_DIRS)) await mkdir(dir, { recursive: true });
    const index = this.hosts.indexOf(host) + 1;
    await writeFile(
      join(host.dir, "etc/libvirtd.conf"),
      [
        'unix_sock_rw_perms = "0700"',
        'auth_unix_rw = "none"',
        'auth_unix_ro = "none"',
        `host_uuid = "5b3a6c1e-0d2f-4e11-9a00-${String(index).padStart(12, "0")}"`,
        'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"',
        "",
      ].join("\n"),
    );
    // No cgroups, no private /dev, no relabeling: these hosts share one machine's kernel.
    await writeFile(
      join(host.dir, "etc/qemu.conf"),
      [
        'user = "+0"',
        'group = "+0"',
        "dynamic_ownership = 0",
        "remember_owner = 0",
        'security_driver = "none"',
        "namespaces = [ ]",
        "cgroup_controllers = [ ]",
        'stdio_handler = "file"',
        "",
      ].join("\n"),
    );
  }

  /**
   * Starts the control namespace's own libvirtd: to shoal, run in its mount namespace
   * (`localMount`), it is this machine's `qemu:///system`.
   */
  private async startLocal(): Promise<void> {
    const host = this.local;
    await this.libvirtFiles(host);
    await exec("ip", [
      "netns",
      "exec",
      this.control,
      "unshare",
      "--mount",
      "sh",
      "-ec",
      `${this.binds(host)}\n${LIBVIRTD}`,
    ]);
    await this.untilSocket(host);
  }

  /** The mount namespace where the local libvirtd's directories are libvirt's: shoal's view. */
  async localMount(): Promise<string> {
    const pid = (await readFile(join(this.local.dir, "run/libvirtd.pid"), "utf8")).trim();
    return `/proc/${pid}/ns/mnt`;
  }

  private binds(host: LibvirtHost): string {
    return Object.entries(LIBVIRT_DIRS)
      .map(([sub, dir]) => `mount --bind ${join(host.dir, sub)} ${dir}`)
      .join("\n");
  }

  private async untilSocket(host: LibvirtHost): Promise<void> {
    const socket = join(host.dir, "run/libvirt-sock");
    const until = Date.now() + START_WAIT_MS;
    while (!(await stat(socket).catch(() => undefined))) {
      if (Date.now() > until) throw new Error(`${host.name}'s libvirtd made no socket`);
      await sleep(100);
    }
  }

  /**
   * Starts the host's libvirtd (and, the first time, its sshd) in one mount namespace: `ip netns
   * exec` makes a new one each time, so the binds and both daemons come in one go; later, libvirtd
   * is started again inside sshd's.
   */
  private async startDaemons(host: LibvirtHost, withSsh: boolean): Promise<void> {
    const libvirtd = LIBVIRTD;
    if (withSsh) {
      const binds = this.binds(host);
      await exec("ip", [
        "netns",
        "exec",
        host.namespace,
        "unshare",
        "--uts",
        "sh",
        "-ec",
        // This machine's root shell setup is not the host's: bash reads it for every SSH session
        // (here pyenv's, half a second of forks each time).
        `hostname ${host.name}\n${binds}\n[ ! -e /root/.bashrc ] || mount --bind ${join(host.dir, "bashrc")} /root/.bashrc\nmkdir -p /run/sshd\n${libvirtd}\n/usr/sbin/sshd -f ${join(host.dir, "ssh/sshd_config")}`,
      ]);
    } else {
      const sshd = (await readFile(join(host.dir, "sshd.pid"), "utf8")).trim();
      await exec("nsenter", ["-t", sshd, "-m", "-n", "-u", "sh", "-ec", libvirtd]);
    }
    await this.untilSocket(host);
  }

  /** Stops a host's libvirtd, as a host whose daemon died; its VMs go on running. */
  async stopDaemon(host: LibvirtHost): Promise<void> {
    const pid = Number((await readFile(join(host.dir, "run/libvirtd.pid"), "utf8")).trim());
    process.kill(pid, "SIGTERM");
    const until = Date.now() + START_WAIT_MS;
    while (await stat(join(host.dir, "run/libvirt-sock")).catch(() => undefined)) {
      if (Date.now() > until) throw new Error(`${host.name}'s libvirtd did not stop`);
      await sleep(100);
    }
  }

  async startDaemon(host: LibvirtHost): Promise<void> {
    await this.startDaemons(host, false);
  }

  /** Ends every process of the host at once (libvirtd, sshd, its QEMUs), as a power cut would. */
  async powerOff(host: LibvirtHost): Promise<void> {
    await killAll(host.namespace);
    // A daemon that was killed leaves its socket; the next one's is waited for.
    await rm(join(host.dir, "run/libvirt-sock"), { force: true });
  }

  /** Starts the host again after powerOff: sshd and libvirtd, which finds its domains shut off. */
  async powerOn(host: LibvirtHost): Promise<void> {
    await this.startDaemons(host, true);
  }

  /** Ends every process of every host (daemons and QEMUs) and removes the namespaces. */
  async stop(): Promise<void> {
    for (const namespace of [...this.hosts.map((host) => host.namespace), this.control]) {
      await killAll(namespace);
      await ip("netns", "del", namespace).catch(() => undefined);
    }
    await rm(this.options.dir, { recursive: true, force: true });
  }
}

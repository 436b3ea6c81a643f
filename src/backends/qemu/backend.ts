import { constants } from "node:fs";
import { open, readFile, stat } from "node:fs/promises";
import { dirname } from "node:path";
import type { Duplex } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import type { VmSpec } from "../../core/fleet.js";
import type { BootFiles } from "../../core/render/boot.js";
import { domainName } from "../../core/render/boot.js";
import { ShoalError, UserError, undefinedUnlessBug } from "../../errors.js";
import { ifExists, ifProcessExists, requireReachable } from "../../host/paths.js";
import type { Launcher } from "../../host/runner.js";
import { connectSocketFile } from "../../host/unix-socket.js";
import { writeFileAtomic } from "../../state/atomic.js";
import type { Backend, BackendVm, Presence, VmNic } from "../backend.js";
import { grantQemuAccess, launchQemu } from "./launch.js";
import { QmpClient } from "./qmp.js";
import { type Accelerator, QEMU_USER, renderQemuArgv } from "./render.js";
import { hostRoom, qemuShortfall } from "./room.js";
import { type QemuUser, requireQemuUser } from "./user.js";

const QMP_TIMEOUT_MS = 3000;
/** A pid file holds a number and a newline. */
const PID_FILE_MAX = 32;
const TERM_GRACE_MS = 5000;
const KILL_WAIT_MS = 10_000;

/** Signals a process that may have ended meanwhile. */
function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ESRCH") throw error;
  }
}

/** The first `bytes` bytes of a file, never read through a link or from a FIFO that blocks. */
async function readHead(path: string, bytes: number): Promise<string> {
  const handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    const buffer = Buffer.alloc(bytes);
    const { bytesRead } = await handle.read(buffer, 0, bytes, 0);
    return buffer.subarray(0, bytesRead).toString();
  } finally {
    await handle.close();
  }
}

/**
 * QEMU runs unprivileged: it must get through every directory above the image's files and the
 * fleet's directory as any other user would (the VM's own directories are opened to its group).
 */
async function checkReachable(vm: BackendVm, boot: BootFiles): Promise<void> {
  const fleetDir = dirname(dirname(vm.paths.dir));
  for (const dir of new Set([boot.kernel, boot.initrd, boot.base].map(dirname)).add(fleetDir)) {
    await requireReachable(`QEMU, which runs as user ${QEMU_USER}`, dir);
  }
}

/**
 * QEMU: one process per VM, run as an unprivileged user under QEMU's seccomp sandbox, started in
 * the background by shoal; found again through its pid file and checked against its command line
 * (a pid can be reused), asked about its state over QMP.
 */
export class QemuBackend implements Backend {
  readonly name = "qemu" as const;
  readonly nic = "tap" as const;

  private user: Promise<QemuUser> | undefined;

  constructor(
    private readonly runner: Launcher,
    private readonly tcgCacheMiB: number | undefined,
    /** Decides KVM or software emulation for a kernel; asked whenever a VM is defined or started. */
    private readonly accel: (kernel: string) => Promise<Accelerator>,
  ) {}

  /** The user QEMU runs as, looked up once per shoal run (a failed look is not kept). */
  private qemuUser(): Promise<QemuUser> {
    this.user ??= requireQemuUser(this.runner).catch((error: unknown) => {
      this.user = undefined;
      throw error;
    });
    return this.user;
  }

  /**
   * The command for this VM, rendered from its spec and boot files each time it is needed: what
   * the VM's directory holds is a record, never what runs.
   */
  private async render(
    vm: BackendVm,
    spec: VmSpec,
    boot: BootFiles,
    nic: VmNic,
  ): Promise<[string, ...string[]]> {
    return renderQemuArgv({
      fleet: vm.fleet,
      vm: spec,
      tap: nic.tap,
      ...(nic.namespace === undefined ? {} : { namespace: nic.namespace }),
      boot,
      files: {
        seed: vm.paths.seed,
        ...(spec.layer.type === "disk" ? { layer: vm.paths.layer } : {}),
        serialLog: vm.paths.serialLog,
        consoleSocket: vm.paths.consoleSocket,
        qmpSocket: vm.paths.qmpSocket,
        pidFile: vm.paths.pidFile,
      },
      accel: await this.accel(boot.kernel),
      ...(this.tcgCacheMiB === undefined ? {} : { tcgCacheMiB: this.tcgCacheMiB }),
      user: QEMU_USER,
    });
  }

  /** Keeps the command in vm.qemu for people to read; a link there is replaced, not written through. */
  private async record(vm: BackendVm, argv: readonly string[]): Promise<void> {
    await writeFileAtomic(vm.paths.qemuArgv, `${JSON.stringify(argv, null, 1)}\n`, 0o600);
  }

  async define(vm: BackendVm, spec: VmSpec, boot: BootFiles, nic: VmNic): Promise<void> {
    await this.record(vm, await this.render(vm, spec, boot, nic));
  }

  async start(vm: BackendVm, spec: VmSpec, boot: BootFiles, nic: VmNic): Promise<void> {
    const { gid } = await this.qemuUser();
    await checkReachable(vm, boot);
    const argv = await this.render(vm, spec, boot, nic);
    await this.record(vm, argv);
    await grantQemuAccess(vm.paths, spec.layer.type === "disk", gid);
    await launchQemu(this.runner, argv, { qmpSocket: vm.paths.qmpSocket, log: vm.paths.qemuLog });
  }

  /**
   * The pid of this VM's QEMU, if one runs: the pid file's process, if its command line names this
   * VM and this pid file (a pid may have been reused; another state directory may hold a fleet and
   * VM of the same names). A zombie is not running. QEMU writes the file, so only its first bytes
   * are read.
   */
  private async pid(vm: BackendVm): Promise<number | undefined> {
    const pid = Number(((await ifExists(readHead(vm.paths.pidFile, PID_FILE_MAX))) ?? "").trim());
    if (!Number.isInteger(pid) || pid <= 0) return undefined;
    const [cmdline, stat] = await Promise.all([
      ifProcessExists(readFile(`/proc/${pid}/cmdline`, "utf8")).then((text) => text ?? ""),
      ifProcessExists(readFile(`/proc/${pid}/stat`, "utf8")).then((text) => text ?? ""),
    ]);
    if (/^\d+ \(.*\) Z /.test(stat)) return undefined;
    const name = domainName(vm.fleet, vm.name);
    const ours =
      cmdline.includes(`\0-name\0${name}\0`) &&
      cmdline.includes(`\0-pidfile\0${vm.paths.pidFile}\0`);
    return ours ? pid : undefined;
  }

  async checkRoom(starting: readonly { readonly spec: VmSpec }[], overcommit: boolean) {
    if (starting.length === 0) return;
    const short = qemuShortfall(
      starting.map(({ spec }) => spec),
      await hostRoom(),
      overcommit,
    );
    if (short) throw new UserError(`no room on this host: ${short.what}`, short.fix);
  }

  async presence(vm: BackendVm): Promise<Presence> {
    if ((await this.pid(vm)) === undefined) return { kind: "absent" };
    // A monitor that does not answer (QEMU starting, or ending) tells nothing: the process decides.
    const status = await this.qmp(vm, (qmp) =>
      qmp.execute<{ status: string }>("query-status"),
    ).catch(undefinedUnlessBug);
    if (status?.status === "shutdown") return { kind: "powered-off" };
    if (status?.status === "guest-panicked" || status?.status === "internal-error") {
      return { kind: "crashed", reason: `QEMU reports ${status.status}` };
    }
    const since = (await ifExists(stat(vm.paths.pidFile)))?.mtime;
    return since ? { kind: "running", since } : { kind: "running" };
  }

  private async qmp<T>(vm: BackendVm, work: (qmp: QmpClient) => Promise<T>): Promise<T> {
    const qmp = await QmpClient.connect(vm.paths.qmpSocket, QMP_TIMEOUT_MS);
    try {
      return await work(qmp);
    } finally {
      qmp.close();
    }
  }

  async requestShutdown(vm: BackendVm): Promise<void> {
    await this.qmp(vm, (qmp) => qmp.execute("system_powerdown"));
  }

  async destroy(vm: BackendVm): Promise<void> {
    const pid = await this.pid(vm);
    if (pid === undefined) return;
    // SIGTERM lets QEMU close its files; the guest gets no say, as with a pulled plug.
    signal(pid, "SIGTERM");
    const started = Date.now();
    while ((await this.pid(vm)) === pid) {
      const waited = Date.now() - started;
      if (waited > TERM_GRACE_MS) signal(pid, "SIGKILL");
      if (waited > TERM_GRACE_MS + KILL_WAIT_MS) {
        throw new ShoalError(`QEMU (pid ${pid}) of VM ${vm.name} did not end after SIGKILL`);
      }
      await sleep(50);
    }
  }

  async forget(): Promise<void> {
    // Everything QEMU wrote is in the VM's directory.
  }

  async openConsole(vm: BackendVm): Promise<Duplex> {
    const socket = connectSocketFile(vm.paths.consoleSocket);
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", (error) =>
        reject(
          new ShoalError(`cannot reach VM ${vm.name}'s console: ${error.message}`, {
            hint: "is it running? (`shoal ps`)",
          }),
        ),
      );
    });
    return socket;
  }
}

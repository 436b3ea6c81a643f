import { readFile, stat, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import type { Duplex } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { z } from "zod";
import type { VmSpec } from "../../core/fleet.js";
import type { BootFiles } from "../../core/render/boot.js";
import { domainName } from "../../core/render/boot.js";
import { type Accelerator, renderQemuArgv } from "../../core/render/qemu.js";
import { ShoalError } from "../../errors.js";
import type { Runner } from "../../host/runner.js";
import { parseJsonOrUndefined } from "../../state/json.js";
import type { Backend, BackendVm, Presence, VmNic } from "../backend.js";
import { QmpClient } from "./qmp.js";

const QMP_TIMEOUT_MS = 3000;
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

const savedArgv = z.array(z.string()).min(1);

/**
 * QEMU: one daemonized process per VM, found again through its pid file and checked against its
 * command line (a pid can be reused), asked about its state over QMP.
 */
export class QemuBackend implements Backend {
  readonly name = "qemu" as const;
  readonly nic = "tap" as const;

  constructor(
    private readonly runner: Runner,
    /** Decides KVM or software emulation for a kernel; asked once per VM definition. */
    private readonly accel: (kernel: string) => Promise<Accelerator>,
  ) {}

  async define(vm: BackendVm, spec: VmSpec, boot: BootFiles, nic: VmNic): Promise<void> {
    const argv = renderQemuArgv({
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
    });
    await writeFile(vm.paths.qemuArgv, `${JSON.stringify(argv, null, 1)}\n`, { mode: 0o600 });
  }

  async start(vm: BackendVm): Promise<void> {
    const argv = savedArgv.safeParse(
      parseJsonOrUndefined(await readFile(vm.paths.qemuArgv, "utf8").catch(() => "")),
    );
    if (!argv.success) {
      throw new ShoalError(`VM ${vm.name} has no usable QEMU definition (${vm.paths.qemuArgv})`, {
        hint: "`shoal up` writes it again",
      });
    }
    // -daemonize returns once QEMU is set up: the pid file and sockets exist from then on.
    await this.runner.run({ argv: argv.data as [string, ...string[]] });
  }

  /**
   * The pid of this VM's QEMU, if one runs: the pid file's process, if its command line names this
   * VM and this pid file (a pid may have been reused; another state directory may hold a fleet and
   * VM of the same names). A zombie is not running.
   */
  private async pid(vm: BackendVm): Promise<number | undefined> {
    const pid = Number((await readFile(vm.paths.pidFile, "utf8").catch(() => "")).trim());
    if (!Number.isInteger(pid) || pid <= 0) return undefined;
    const [cmdline, stat] = await Promise.all([
      readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => ""),
      readFile(`/proc/${pid}/stat`, "utf8").catch(() => ""),
    ]);
    if (/^\d+ \(.*\) Z /.test(stat)) return undefined;
    const name = domainName(vm.fleet, vm.name);
    const ours =
      cmdline.includes(`\0-name\0${name}\0`) &&
      cmdline.includes(`\0-pidfile\0${vm.paths.pidFile}\0`);
    return ours ? pid : undefined;
  }

  async presence(vm: BackendVm): Promise<Presence> {
    if ((await this.pid(vm)) === undefined) return { kind: "absent" };
    const status = await this.qmp(vm, (qmp) =>
      qmp.execute<{ status: string }>("query-status"),
    ).catch(() => undefined);
    if (status?.status === "shutdown") return { kind: "powered-off" };
    if (status?.status === "guest-panicked" || status?.status === "internal-error") {
      return { kind: "crashed", reason: `QEMU reports ${status.status}` };
    }
    const since = await stat(vm.paths.pidFile).then(
      (info) => info.mtime,
      () => undefined,
    );
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
    const socket = connect(vm.paths.consoleSocket);
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

import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { access, readdir, readFile } from "node:fs/promises";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { launchQemu } from "../../src/backends/qemu/launch.js";
import { QmpClient } from "../../src/backends/qemu/qmp.js";
import { type Accelerator, renderQemuArgv } from "../../src/backends/qemu/render.js";
import type { VmSpec } from "../../src/core/fleet.js";
import type { BootFiles } from "../../src/core/render/boot.js";
import { seedFiles } from "../../src/core/seed.js";
import { ProcessRunner } from "../../src/host/runner.js";
import { makeHostKey, writeSeed } from "../../src/identity/identity.js";

export async function sha256(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export interface BootOptions {
  /** What the image's VMs boot from (imageBoot). */
  readonly boot: BootFiles;
  readonly vm: VmSpec;
  /** A directory of the test's own for the VM's sockets, log and pid file. */
  readonly dir: string;
  readonly layer?: string;
  /** Leave the layer's drive out while the kernel command line still names it. */
  readonly withoutLayerDrive?: boolean;
  /** The guest's `rootdelay=`: how long its initramfs waits for a missing device. */
  readonly rootDelaySeconds?: number;
  readonly accel?: Accelerator;
}

const live = new Set<TestVm>();

/** Kills every VM a test started and did not stop; for afterEach. */
export async function killAllVms(): Promise<void> {
  await Promise.all([...live].map((vm) => vm.kill()));
}

/**
 * A VM's serial console as a test drives it: output is read from the serial log QEMU keeps, input
 * is typed into the console socket.
 */
export class GuestConsole {
  private offset = 0;
  private counter = 0;

  protected constructor(
    readonly pid: number,
    readonly log: string,
    private readonly console: Socket,
  ) {}

  /** Attaches to a running VM's console; reading starts at the log's current end. */
  static async attach(pid: number, log: string, socketPath: string): Promise<GuestConsole> {
    const guest = new GuestConsole(pid, log, await connectConsole(socketPath));
    guest.offset = (await guest.output()).length;
    return guest;
  }

  async output(): Promise<string> {
    return (await readFile(this.log, "utf8")).replaceAll("\r", "");
  }

  /** Waits until the console shows `pattern` after what earlier waits consumed; returns the match. */
  async waitFor(pattern: RegExp, timeoutMs = 180_000): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const text = (await this.output()).slice(this.offset);
      const match = pattern.exec(text);
      if (match) {
        this.offset += match.index + match[0].length;
        return match;
      }
      if (Date.now() > deadline || !alive(this.pid)) {
        throw new Error(`console never showed ${pattern}; it ends with:\n${text.slice(-3000)}`);
      }
      await sleep(100);
    }
  }

  type(text: string): void {
    this.console.write(text);
  }

  /** Runs a shell command on the console; its output and exit code. */
  async sh(command: string, timeoutMs = 120_000): Promise<{ out: string; code: number }> {
    const n = ++this.counter;
    // The quotes keep the echo of the typed line from matching the markers.
    this.type(`echo "<<B""${n}>>"; ${command}; echo "<<E""${n}>>$?"\n`);
    await this.waitFor(new RegExp(`<<B${n}>>\\n`), timeoutMs);
    const end = await this.waitFor(new RegExp(`([^]*?)<<E${n}>>(\\d+)`), timeoutMs);
    // The kernel prints on the same console whenever it has something to say (a link that comes
    // up late on a busy host): its lines are not the command's output.
    const out = (end[1] ?? "").replace(/^\[ *\d+\.\d+\] [^\n]*\n/gm, "");
    return { out, code: Number(end[2]) };
  }

  detach(): void {
    this.console.destroy();
  }
}

async function connectConsole(path: string): Promise<Socket> {
  const socket = connect(path);
  await new Promise((resolve, reject) => socket.once("connect", resolve).once("error", reject));
  socket.on("error", () => {});
  // Output is read from the log; the socket must still be drained or QEMU stalls the guest's console.
  socket.resume();
  return socket;
}

/**
 * A VM booted with the QEMU command shoal renders (sandbox included), started as shoal starts it,
 * driven through its serial console. It runs as root, in the test's own directory: which user
 * QEMU runs as is the lifecycle tests' concern.
 */
export class TestVm extends GuestConsole {
  private constructor(
    pid: number,
    log: string,
    console: Socket,
    private readonly qmpSocket: string,
  ) {
    super(pid, log, console);
  }

  static async boot(options: BootOptions): Promise<TestVm> {
    const seed = join(options.dir, "identity.tar");
    // The identity seed shoal makes at creation; made once, so a VM booted again keeps it.
    if (
      !(await access(seed).then(
        () => true,
        () => false,
      ))
    ) {
      const hostKey = await makeHostKey(join(options.dir, "ssh"), `root@${options.vm.hostname}`);
      await writeSeed(
        seed,
        seedFiles({ vm: options.vm, fleet: "test", hostKey, authorizedKeys: [] }),
      );
    }
    const files = {
      seed,
      serialLog: join(options.dir, "serial.log"),
      consoleSocket: join(options.dir, "console.sock"),
      qmpSocket: join(options.dir, "qmp.sock"),
      pidFile: join(options.dir, "qemu.pid"),
      ...(options.layer ? { layer: options.layer } : {}),
    };
    let argv = renderQemuArgv({
      fleet: "test",
      vm: options.vm,
      boot: options.boot,
      files,
      accel: options.accel ?? "tcg",
    });
    if (options.rootDelaySeconds !== undefined) {
      const append = argv.indexOf("-append") + 1;
      argv[append] = `${argv[append]} rootdelay=${options.rootDelaySeconds}`;
    }
    if (options.withoutLayerDrive) {
      const drive = argv.findIndex((arg) => arg.startsWith("if=none,id=layer"));
      argv = [argv[0], ...argv.slice(1, drive - 1), ...argv.slice(drive + 3)];
    }
    await launchQemu(new ProcessRunner(), argv, {
      qmpSocket: files.qmpSocket,
      log: join(options.dir, "qemu.log"),
    });
    const pid = Number((await readFile(files.pidFile, "utf8")).trim());
    const socket = await connectConsole(files.consoleSocket);
    const vm = new TestVm(pid, files.serialLog, socket, files.qmpSocket);
    live.add(vm);
    return vm;
  }

  /** Runs one QMP command on the VM's QEMU. */
  async qmp<T = unknown>(command: string): Promise<T> {
    const qmp = await QmpClient.connect(this.qmpSocket);
    try {
      return await qmp.execute<T>(command);
    } finally {
      qmp.close();
    }
  }

  /**
   * Presses the virtual power button (ACPI) until the guest powers off, as `shoal down` does: a
   * guest still starting its services may miss a press.
   */
  async powerOffByButton(timeoutMs = 180_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (alive(this.pid)) {
      await this.qmp("system_powerdown");
      try {
        await this.waitForExit(10_000);
        return;
      } catch (error) {
        if (Date.now() > deadline) throw error;
      }
    }
  }

  /** Waits until the guest powered off (QEMU, kept by -no-shutdown, is then told to quit) or QEMU ended. */
  async waitForExit(timeoutMs = 120_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (alive(this.pid)) {
      if (Date.now() > deadline)
        throw new Error(`VM (pid ${this.pid}) did not stop within ${timeoutMs} ms`);
      const status = await this.qmp<{ status: string }>("query-status").catch(() => undefined);
      if (status?.status === "shutdown") await this.qmp("quit").catch(() => {});
      await sleep(200);
    }
    this.detach();
    live.delete(this);
  }

  async kill(): Promise<void> {
    if (alive(this.pid)) process.kill(this.pid, "SIGKILL");
    await this.waitForExit(10_000);
  }
}

/** The pids of the QEMU processes whose command line mentions `text` (a test's state directory). */
export async function qemuPidsMentioning(text: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, "utf8").catch(() => "");
    if (cmdline.startsWith("qemu-system-x86_64\0") && cmdline.includes(text))
      pids.push(Number(entry));
  }
  return pids;
}

/** Kills every QEMU whose command line mentions `text`: the safety net after shoal-managed VMs. */
export async function killQemusMentioning(text: string): Promise<void> {
  for (const pid of await qemuPidsMentioning(text)) {
    if (alive(pid)) process.kill(pid, "SIGKILL");
  }
  const deadline = Date.now() + 10_000;
  while ((await qemuPidsMentioning(text)).length > 0 && Date.now() < deadline) await sleep(100);
}

/** Whether a process runs: a zombie nobody reaps (a container's init may not) has an empty cmdline. */
export async function isRunning(pid: number): Promise<boolean> {
  return (await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "")) !== "";
}

// Over 400 lines: one class, xl's side of the Backend interface; the pieces that stand alone
// (base loop devices, kernel unpacking, rendering, host probes) are already files of their own.

import { constants, openSync } from "node:fs";
import { lstat, mkdir, readdir, readFile, readlink, rm, symlink } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { dirname, join } from "node:path";
import type { Duplex } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { ReadStream } from "node:tty";
import pLimit from "p-limit";
import { packagePath } from "../../assets.js";
import type { VmSpec } from "../../core/fleet.js";
import type { Found, Owner, Ownership } from "../../core/net.js";
import type { BootFiles } from "../../core/render/boot.js";
import { domainName } from "../../core/render/boot.js";
import { ShoalError, UserError, undefinedUnlessBug } from "../../errors.js";
import { ifExists } from "../../host/paths.js";
import { processesNamed } from "../../host/processes.js";
import { CommandFailed, type Runner } from "../../host/runner.js";
import { SharedCommand } from "../../host/shared-command.js";
import { refuseUnlessOurs } from "../../net/network.js";
import { writeFileAtomic } from "../../state/atomic.js";
import type { StateLayout } from "../../state/layout.js";
import type { Backend, BackendVm, Presence, VmNic } from "../backend.js";
import { BaseLoops, type BaseUser, LOSETUP_COLUMNS, loopsUnder } from "./base-loops.js";
import { consoleLogDir, xenRoom } from "./host.js";
import { uncompressedKernel } from "./kernel.js";
import { renderVifHotplug, renderXlConfig } from "./render.js";
import {
  consoleLogOwnership,
  domainOwnership,
  domainUuid,
  guestConsoleLog,
  isDeviceSetupTimeout,
  parseXlDiskPaths,
  parseXlList,
  parseXlListIdentity,
  parseXlListUuids,
  parseXlUptimeSeconds,
  type XlDomainState,
  xenNeeds,
  xenShortfall,
} from "./xen.js";

/** shoal's vif hotplug script (copied per VM). */
const VIF_HOTPLUG = packagePath("src/backends/xl/xen-vif-hotplug");
/** shoal's block hotplug script (copied per VM), which attaches disks without Xen's global lock. */
const BLOCK_HOTPLUG = packagePath("src/backends/xl/xen-block-hotplug");
/** Where `xl create`'s monitor process logs, one file per domain name. */
const XL_LOG_DIR = "/var/log/xen";
const GONE_WAIT_MS = 30_000;
const MONITOR_GRACE_MS = 10_000;
const POLL_MS = 250;
/** `xl create`s of one domain, when dom0 was too slow to set up its devices in libxl's time. */
const CREATE_ATTEMPTS = 2;

/** A domain of a VM's name as `xl list -v` shows it. */
interface Listed {
  readonly state: XlDomainState;
  /** Undefined for a dying domain xl no longer finds by its name. */
  readonly domid?: number;
  readonly uuid?: string;
}

/**
 * Xen through xl: one PV domU per VM, named FLEET.VM. xl's monitor process (forked by `xl create`)
 * carries out on_poweroff/on_reboot after shoal exits; the domain's console is logged by xenconsoled
 * into the VM's serial.log through a link in xenconsoled's log directory.
 *
 * Domain names are host-wide, the same for a fleet of that name in any state directory: shoal's
 * domains carry a UUID made from their state directory (see domainUuid), and shoal acts only on a
 * domain of a VM's name that is this VM's. Another's is refused before anything is made.
 */
export class XlBackend implements Backend {
  readonly name = "xl" as const;
  readonly nic = "vif" as const;

  private logDir: Promise<string> | undefined;
  private readonly bases: BaseLoops;
  /**
   * `xl create`s at once, as many as dom0 has CPUs. Each domain's backends are set up in dom0's
   * kernel one at a time (its single xenwatch thread) and libxl gives each 10 s to come up: more
   * creations at once than dom0 can run fail with "unable to add vif devices" (measured: 2 of 10
   * at once in the Xen lab's 2-vCPU dom0). Booting, the longer part, is not limited.
   */
  private readonly creations = pLimit(availableParallelism());
  private readonly kernels = new Map<string, Promise<string>>();
  /**
   * Every domain, listed once for all the VMs asked about at once (see SharedCommand): each `xl`
   * run costs a dom0 process, and every VM waiting for its boot asks about its domain.
   */
  private readonly domainListing: SharedCommand;
  private readonly uptimeListing: SharedCommand;

  constructor(
    private readonly runner: Runner,
    layout: Pick<StateLayout, "root" | "xlBase" | "xlBases" | "image">,
    /** Finds xl's monitor processes and xenconsoled (a parameter so that unit tests see their own). */
    private readonly processes: typeof processesNamed = processesNamed,
  ) {
    this.root = layout.root;
    this.bases = new BaseLoops(runner, layout, (users) => this.liveUsers(users));
    this.domainListing = new SharedCommand(runner, { argv: ["xl", "list", "-v"], probe: true });
    this.uptimeListing = new SharedCommand(runner, { argv: ["xl", "uptime"], probe: true });
  }

  private readonly root: string;

  /**
   * Writes the VM's hotplug scripts. Its xl.cfg names the base's loop device, which is there only
   * while domains use it: that is written when the VM starts.
   */
  async define(vm: BackendVm, _spec: VmSpec, _boot: BootFiles, nic: VmNic): Promise<void> {
    // Replaced, never written through: a link planted there would be followed.
    await writeFileAtomic(
      vm.paths.vifHotplug,
      renderVifHotplug({
        script: await readFile(VIF_HOTPLUG, "utf8"),
        bridge: nic.bridge,
        vifName: nic.tap,
        ...(nic.namespace === undefined ? {} : { namespace: nic.namespace }),
      }),
      0o755,
    );
    // A copy, as the vif script is: a domain's reboot runs it again after shoal moved or changed.
    await writeFileAtomic(vm.paths.blockHotplug, await readFile(BLOCK_HOTPLUG), 0o755);
  }

  async start(vm: BackendVm, spec: VmSpec, boot: BootFiles, nic: VmNic): Promise<void> {
    const logDir = await this.consoleLogDir();
    await this.claim(vm, logDir, await this.listed(this.domain(vm)));
    // xl reads the config, and libxl runs the scripts, from the VM's directory as root: all are
    // written afresh from the record first.
    await this.define(vm, spec, boot, nic);
    await this.detachLeftLoops(vm);
    await mkdir(logDir, { recursive: true });
    const link = guestConsoleLog(logDir, this.domain(vm));
    if ((await this.consoleOwnership(link, vm)).kind === "absent") {
      await symlink(vm.paths.serialLog, link);
    }
    const uuid = domainUuid(this.owner(vm), vm.name);
    await this.bases.using(boot.baseId, { uuid, config: vm.paths.xlConfig }, async (device) => {
      const config = renderXlConfig({
        fleet: vm.fleet,
        vm: spec,
        uuid,
        boot: { ...boot, kernel: await this.kernelOf(boot) },
        baseDevice: device,
        blockScript: vm.paths.blockHotplug,
        seed: vm.paths.seed,
        ...(spec.layer.type === "disk" ? { layer: vm.paths.layer } : {}),
        bridge: nic.bridge,
        vifName: nic.tap,
        vifScript: vm.paths.vifHotplug,
      });
      await writeFileAtomic(vm.paths.xlConfig, config, 0o600);
      await this.creations(async () => {
        for (let attempt = 1; ; attempt++) {
          try {
            // xl builds the domain paused and unpauses it last: cut off by a Ctrl-C in between, it
            // would leave a domain that looks alive and never runs. Its monitor stays, detached.
            await this.runner.run({
              argv: ["xl", "create", vm.paths.xlConfig],
              uninterruptible: true,
            });
            return;
          } catch (error) {
            // libxl took the half-made domain away, and with it the disks it attached, mostly: a
            // disk whose removal timed out keeps its loop device.
            const gone = (await this.listed(this.domain(vm))) === undefined;
            if (gone) await this.detachLeftLoops(vm);
            const slowDom0 =
              error instanceof CommandFailed && isDeviceSetupTimeout(error.stderrTail);
            if (!(gone && slowDom0 && attempt < CREATE_ATTEMPTS)) throw error;
          }
        }
      });
    });
  }

  /** The image's kernel as domUs boot it: unpacked once per image (see kernel.ts). */
  private kernelOf(boot: BootFiles): Promise<string> {
    const known = this.kernels.get(boot.kernel);
    if (known !== undefined) return known;
    const kernel = uncompressedKernel(
      this.runner,
      boot.kernel,
      join(dirname(boot.kernel), "vmlinux"),
    );
    this.kernels.set(boot.kernel, kernel);
    return kernel;
  }

  /**
   * Detaches loop devices left on the VM's own files (its seed, its layer) by a domain that went
   * without its remove hotplug: called only while the VM has no domain, so none is in use.
   */
  private async detachLeftLoops(vm: BackendVm): Promise<void> {
    const listing = await this.runner.run({
      argv: ["losetup", "--list", "--json", "--output", LOSETUP_COLUMNS],
      probe: true,
    });
    for (const device of loopsUnder(listing.stdout, vm.paths.dir)) {
      await this.runner.run({ argv: ["losetup", "--detach", device], okCodes: [0, 1] });
    }
  }

  /** Releases the loop devices of bases no domain of this state directory boots from any more. */
  async tidy(): Promise<void> {
    await this.bases.releaseUnused();
  }

  /** Which of a base's users are there: a domain of its UUID, or an xl monitor of its config. */
  private async liveUsers(users: readonly BaseUser[]): Promise<ReadonlySet<string>> {
    const listing = await this.domainListing.result();
    const domains = parseXlListUuids(listing.stdout);
    const monitors = (await this.processes("xl")).filter(
      ({ uid, argv }) => uid === 0 && argv.includes("create"),
    );
    return new Set(
      users
        .filter(
          (user) =>
            domains.has(user.uuid) || monitors.some(({ argv }) => argv.includes(user.config)),
        )
        .map((user) => user.uuid),
    );
  }

  /** Refuses each VM whose domain name or console log another state directory or program holds. */
  async checkNames(vms: readonly BackendVm[]): Promise<void> {
    if (vms.length === 0) return;
    const listing = await this.domainListing.result();
    // Without xenconsoled's log directory the start fails later, saying why.
    const logDir = await this.consoleLogDir().catch(undefinedUnlessBug);
    for (const vm of vms) {
      const listed = parseXlListIdentity(listing.stdout, this.domain(vm));
      await this.claim(vm, logDir, listed);
    }
  }

  async checkRoom(
    starting: readonly { readonly spec: VmSpec; readonly boot: BootFiles }[],
    overcommit: boolean,
  ) {
    if (overcommit) {
      throw new UserError(
        "--overcommit: Xen gives every domain all its memory when it starts, so it cannot run more than it has",
        "leave out --overcommit, or give the VMs less memory:",
      );
    }
    if (starting.length === 0) return;
    const unattached = new Set(
      starting.map(({ boot }) => boot.baseId).filter((id) => !this.bases.isHeld(id)),
    );
    const needs = xenNeeds(
      starting.map(({ spec }) => spec),
      unattached.size,
    );
    const short = xenShortfall(needs, await xenRoom(this.runner));
    if (short) throw new UserError(`no room in this Xen host: ${short.what}`, short.fix);
  }

  /** A domain or console log of the VM's name that is not the VM's stops everything. */
  private async claim(
    vm: BackendVm,
    logDir: string | undefined,
    listed: Omit<Listed, "state"> | undefined,
  ): Promise<void> {
    const domain = this.domain(vm);
    // A dying domain whose name xl no longer finds holds it no more.
    if (listed?.domid !== undefined)
      refuseUnlessOurs(`Xen domain ${domain}`, await this.ownership(vm, listed));
    if (logDir !== undefined) {
      const link = guestConsoleLog(logDir, domain);
      refuseUnlessOurs(`console log ${link}`, await this.consoleOwnership(link, vm));
    }
  }

  /** Whose xenconsoled's log of the VM's domain name is; never follows the link. */
  private async consoleOwnership(link: string, vm: BackendVm): Promise<Found> {
    const found = await lstat(link).catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return undefined;
      throw error;
    });
    if (found === undefined) return { kind: "absent" };
    const target = found.isSymbolicLink() ? await readlink(link) : undefined;
    return consoleLogOwnership(target, vm.paths.serialLog);
  }

  /**
   * Whose a listed domain of the VM's name is: the VM's own UUID says ours; without it, the
   * domain's disks tell (a domain of a shoal before domain UUIDs boots from the VM's seed).
   */
  private async ownership(vm: BackendVm, listed: { readonly uuid?: string }): Promise<Ownership> {
    if (listed.uuid === domainUuid(this.owner(vm), vm.name)) return { kind: "ours" };
    const details = await this.runner.run({
      argv: ["xl", "list", "-l", this.domain(vm)],
      probe: true,
      okCodes: [0, 1],
    });
    return domainOwnership(parseXlDiskPaths(details.stdout) ?? [], vm.paths.seed);
  }

  /** The VM's own domain; undefined when Xen has none of its name, or one that is not the VM's. */
  private async own(vm: BackendVm): Promise<Listed | undefined> {
    const listed = await this.listed(this.domain(vm));
    // One that is dying can no longer be told apart, nor be acted on.
    if (listed === undefined || listed.domid === undefined) return listed;
    return (await this.ownership(vm, listed)).kind === "ours" ? listed : undefined;
  }

  /** xenconsoled's log directory, looked up once per shoal run (a failed look is not kept). */
  private consoleLogDir(): Promise<string> {
    this.logDir ??= consoleLogDir(this.processes).catch((error: unknown) => {
      this.logDir = undefined;
      throw error;
    });
    return this.logDir;
  }

  private domain(vm: BackendVm): string {
    return domainName(vm.fleet, vm.name);
  }

  private owner(vm: BackendVm): Owner {
    return { root: this.root, fleet: vm.fleet };
  }

  /** The domain of that name as `xl list -v` shows it; undefined when Xen does not know it. */
  private async listed(domain: string): Promise<Listed | undefined> {
    const all = (await this.domainListing.result()).stdout;
    const listedState = parseXlList(all, domain);
    const listedIdentity = parseXlListIdentity(all, domain);
    if (listedState && listedIdentity) return { state: listedState, ...listedIdentity };
    // Not there under its name: Xen does not know it, unless a domain is dying with its name
    // already gone (listed as "(null)"), which only xl asked for that name tells apart.
    const nameless = /^\(null\)\s/m.test(all);
    if (!nameless && listedState === undefined && listedIdentity === undefined) return undefined;
    const argv = ["xl", "list", "-v", domain] as const;
    const result = await this.runner.run({ argv, probe: true, okCodes: [0, 1] });
    if (result.code !== 0) {
      // Unknown, or gone between xl finding its id and reading its information.
      if (/invalid domain identifier|does not exist/i.test(result.stderr)) return undefined;
      throw new CommandFailed(argv, result.code, result.stderr);
    }
    const state = parseXlList(result.stdout, domain);
    const identity = parseXlListIdentity(result.stdout, domain);
    if (state && identity) return { state, ...identity };
    // Listed without its name: its xenstore entries are already gone, the domain nearly so.
    if (parseXlList(result.stdout, "(null)")) return { state: { kind: "dying" } };
    throw new CommandFailed(argv, 0, result.stdout, `no state for ${domain} in its output`);
  }

  async presence(vm: BackendVm): Promise<Presence> {
    const domain = this.domain(vm);
    const state = (await this.own(vm))?.state;
    if (state === undefined) return { kind: "absent" };
    if (state.kind === "crashed") return state;
    // A dying domain is on its way out, held by Xen until its devices are gone.
    if (state.kind !== "running") return { kind: "powered-off" };
    const uptime = await this.uptimeListing
      .result()
      .then((result) => parseXlUptimeSeconds(result.stdout, domain))
      .catch(undefinedUnlessBug);
    return uptime === undefined
      ? { kind: "running" }
      : { kind: "running", since: new Date(Date.now() - uptime * 1000) };
  }

  async requestShutdown(vm: BackendVm): Promise<void> {
    // By id, the VM's own domain: one of its name that is not the VM's is never touched.
    const domid = (await this.own(vm))?.domid;
    // Writes the domain's control/shutdown; a PV Linux guest then runs its poweroff.
    if (domid !== undefined) await this.runner.run({ argv: ["xl", "shutdown", String(domid)] });
  }

  async destroy(vm: BackendVm): Promise<void> {
    const domain = this.domain(vm);
    const state = (await this.own(vm))?.state;
    // A domain that shut down is taken away by xl's monitor (on_poweroff): a second destroy
    // beside it races it through the hotplug scripts.
    if (state?.kind === "shut-down" || state?.kind === "dying") {
      await this.gone(domain, MONITOR_GRACE_MS);
    }
    // Then no monitor may act any more: one that restarts a rebooting guest would bring the
    // domain back after shoal ended it.
    await this.stopMonitors(vm);
    // By id: a domain that took the name meanwhile is not the one shoal checked.
    const domid = (await this.own(vm))?.domid;
    if (domid !== undefined) {
      await this.runner.run({ argv: ["xl", "destroy", String(domid)], okCodes: [0, 1] });
      if (!(await this.gone(domain, GONE_WAIT_MS))) {
        throw new ShoalError(`Xen still holds domain ${domain} after \`xl destroy\``, {
          hint: "see `xl list` and /var/log/xen/xl-*.log",
        });
      }
    }
    // Also after a domain that went behind shoal's back, or a shoal killed before it got here.
    await this.detachLeftLoops(vm);
    await this.bases.leave(domainUuid(this.owner(vm), vm.name));
  }

  /** Kills the `xl create` monitor processes of this VM's definition. */
  private async stopMonitors(vm: BackendVm): Promise<void> {
    for (const { pid, uid, argv } of await this.processes("xl")) {
      // shoal's monitors are root's; another user's process of that name is not shoal's to end.
      if (uid === 0 && argv.includes("create") && argv.includes(vm.paths.xlConfig)) {
        try {
          process.kill(pid, "SIGKILL");
        } catch (error) {
          // It ended meanwhile.
          if ((error as NodeJS.ErrnoException).code !== "ESRCH") throw error;
        }
      }
    }
  }

  /** Whether the domain vanishes within `waitMs`. */
  private async gone(domain: string, waitMs: number): Promise<boolean> {
    const deadline = Date.now() + waitMs;
    while ((await this.listed(domain)) !== undefined) {
      if (Date.now() > deadline) return false;
      await sleep(POLL_MS);
    }
    return true;
  }

  async forget(vm: BackendVm): Promise<void> {
    const domain = this.domain(vm);
    const logDir = await this.consoleLogDir().catch(undefinedUnlessBug);
    if (logDir !== undefined) {
      const link = guestConsoleLog(logDir, domain);
      if ((await this.consoleOwnership(link, vm)).kind === "ours") await rm(link);
    }
    // A domain of the name that is there now is not this VM's (it is destroyed): its logs stay.
    if ((await this.listed(domain)) !== undefined) return;
    // xl keeps its monitor's log per domain name, the older ones numbered: xl-NAME.log.1, ...
    const own = new RegExp(`^xl-${domain.replaceAll(".", "\\.")}\\.log(\\.\\d+)?$`);
    for (const entry of (await ifExists(readdir(XL_LOG_DIR))) ?? []) {
      if (own.test(entry)) await rm(join(XL_LOG_DIR, entry), { force: true });
    }
  }

  /** The domain's console pty, as `xl console` opens it (xenconsoled holds the other end). */
  async openConsole(vm: BackendVm): Promise<Duplex> {
    const notRunning = new ShoalError(`VM ${vm.name}'s console is not there`, {
      hint: "is it running? (`shoal ps`)",
    });
    const domid = (await this.own(vm))?.domid;
    if (domid === undefined) throw notRunning;
    const tty = await this.runner
      .run({ argv: ["xenstore-read", `/local/domain/${domid}/console/tty`], probe: true })
      .then((result) => result.stdout.trim())
      .catch((error: unknown) => {
        if (!(error instanceof ShoalError)) throw error;
        throw notRunning;
      });
    // xenconsoled writes the pty's name once it has set it up.
    if (!/^\/dev\/pts\/\d+$/.test(tty)) throw notRunning;
    // A tty stream, not a file stream: a blocking read of a pty would hold shoal open after detaching.
    return new ReadStream(openSync(tty, constants.O_RDWR | constants.O_NOCTTY));
  }
}

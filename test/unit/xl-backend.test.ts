import { spawn } from "node:child_process";
import { readFileSync, statSync } from "node:fs";
import {
  lstat,
  mkdir,
  readdir,
  readFile,
  readlink,
  rm,
  symlink,
  writeFile,
} from "node:fs/promises";
import { dirname, join } from "node:path";
import { describe, expect, it } from "vitest";
import { XlBackend } from "../../src/backends/xl/backend.js";
import { LOSETUP_COLUMNS, majMinOf } from "../../src/backends/xl/base-loops.js";
import { renderVifHotplug, renderXlConfig } from "../../src/backends/xl/render.js";
import { domainUuid } from "../../src/backends/xl/xen.js";
import type { VmSpec } from "../../src/core/fleet.js";
import { UserError } from "../../src/errors.js";
import type { Command, CommandResult } from "../../src/host/runner.js";
import { imageBoot } from "../../src/image/store.js";
import { stateLayout } from "../../src/state/layout.js";
import { fleetOf } from "../helpers/fleet.js";
import { RecordingRunner } from "../helpers/recording-runner.js";
import { useTempDirs } from "../helpers/tmp.js";

const layout = stateLayout("/var/lib/shoal");
const tempDir = useTempDirs();
const vm = { fleet: "lab", name: "vm-1", paths: layout.fleet("lab").vm("vm-1") };
const OURS = domainUuid({ root: layout.root, fleet: "lab" }, "vm-1");
/** A domain of the same name another state directory made (for the same fleet name). */
const THEIRS = domainUuid({ root: "/tmp/suite", fleet: "lab" }, "vm-1");

function xlBackend(
  runner: RecordingRunner,
  processes?: ConstructorParameters<typeof XlBackend>[2],
) {
  return new XlBackend(runner, layout, processes);
}

const header =
  "Name                                        ID   Mem VCPUs\tState\tTime(s)   UUID                            Reason-Code\tSecurity Label\n";
const listed = (state: string, uuid = OURS): Partial<CommandResult> => ({
  stdout: `${header}lab.vm-1                                     7   128     1     ${state}       2.0 ${uuid}        -                -\n`,
});
const unknown: Partial<CommandResult> = {
  code: 1,
  stderr: "lab.vm-1 is an invalid domain identifier (rc=-6)\n",
};
/** `xl list -l lab.vm-1`: the domain's configuration, of which shoal reads the disks. */
const details = (...disks: string[]): Partial<CommandResult> => ({
  stdout: JSON.stringify([
    {
      domid: 7,
      config: {
        c_info: { type: "pv", name: "lab.vm-1" },
        disks: disks.map((pdev_path, i) => ({ pdev_path, vdev: `xvd${"abc"[i]}`, format: "raw" })),
      },
    },
  ]),
});

/**
 * A runner whose `xl list -v` answers come from `states` in turn (the last one repeats), each the
 * answer of `xl list -v lab.vm-1` at that moment (`xl list -v` of every domain lists no domain
 * where that one is unknown), and whose `xl list -l NAME` answer is `long`.
 */
function xl(states: Partial<CommandResult>[], long: Partial<CommandResult> = { stdout: "[]\n" }) {
  let listings = 0;
  const now = () => states[Math.min(listings, states.length) - 1] ?? {};
  return new RecordingRunner((command: Command) => {
    if (command.argv[0] === "losetup") return { stdout: '{"loopdevices": []}\n' };
    if (command.argv[1] === "list" && command.argv[2] === "-l") return long;
    if (command.argv.join(" ") === "xl list -v") {
      listings++;
      return now() === unknown || /does not exist/.test(now().stderr ?? "")
        ? { stdout: header }
        : now();
    }
    if (command.argv[1] === "list") return now();
    if (command.argv[1] === "uptime")
      return { stdout: `Name                                ID Uptime\nlab.vm-1   7  0:02:03\n` };
    return {};
  });
}

/**
 * A VM of a state directory under `root`, ready to start: its spec, boot files (a base image file
 * of its own) and network interface, with xenconsoled (as `processes` finds it) logging guests
 * into `logs`.
 */
async function startable(root: string, name = "vm-1") {
  const here = stateLayout(join(root, "state"));
  const own = { fleet: "lab", name, paths: here.fleet("lab").vm(name) };
  await mkdir(own.paths.dir, { recursive: true });
  const [spec] = fleetOf(`name: lab\nbackend: xl\nvms: [{ name: ${name} }]\n`).vms as [VmSpec];
  const boot = imageBoot(here, { id: "ab".repeat(32), boot: "shoal-initramfs", size: 64 << 20 });
  await mkdir(dirname(boot.base), { recursive: true });
  await writeFile(boot.base, "base", { flag: "a" });
  // No bzImage shoal could unpack: domUs boot it as it is.
  await writeFile(boot.kernel, "kernel");
  const nic = { tap: "tap1", bridge: "shoal0", namespace: "shoal-lab-1a2b3c4d" };
  const logs = join(root, "console");
  await mkdir(logs, { recursive: true });
  const processes = async (process: string) =>
    process === "xenconsoled"
      ? [{ pid: 1, uid: 0, argv: ["xenconsoled", "--log=guest", `--log-dir=${logs}`] }]
      : [];
  return { here, own, spec, boot, nic, logs, processes };
}

/** losetup's JSON listing of loop devices: [device, backing file] pairs, read-only unless said. */
function loopListing(loops: [string, string, { ro?: boolean }?][]): string {
  return JSON.stringify({
    loopdevices: loops.map(([name, file, options]) => {
      const info = statSync(file, { bigint: true, throwIfNoEntry: false });
      return {
        name,
        "back-file": file,
        "back-ino": String(info?.ino ?? 0),
        "back-maj:min": info ? majMinOf(info.dev) : "0:0",
        ro: options?.ro ?? true,
        offset: 0,
        sizelimit: 0,
        autoclear: false,
      };
    }),
  });
}

/**
 * A dom0 whose Xen has no domain of any VM's name until it is created; losetup attaches the base
 * as /dev/loop4. `loops` are loop devices there before; `answer` answers first.
 */
function dom0(
  base: string,
  loops: [string, string, { ro?: boolean }?][] = [],
  answer: (command: Command) => Partial<CommandResult> | undefined = () => undefined,
) {
  const attached = [...loops];
  return new RecordingRunner((command: Command) => {
    const answered = answer(command);
    if (answered) return answered;
    const [tool, verb] = command.argv;
    if (tool === "losetup" && verb === "--find") {
      attached.push(["/dev/loop4", base]);
      return { stdout: "/dev/loop4\n" };
    }
    if (tool === "losetup" && verb === "--detach") {
      attached.splice(
        attached.findIndex(([name]) => name === command.argv[2]),
        1,
      );
      return {};
    }
    if (tool === "losetup" && verb === "--list") {
      const device = command.argv.at(-1) ?? "";
      const shown = device.startsWith("/dev/")
        ? attached.filter(([name]) => name === device)
        : attached;
      return { stdout: loopListing(shown) };
    }
    if (tool === "xl" && verb === "list" && command.argv.length > 3) return unknown;
    if (tool === "xl" && verb === "list") return { stdout: header };
    return {};
  });
}

const noMonitors = async () => [];
/** How the backend finds loop devices left on a VM's files. */
const LIST_LOOPS = ["losetup", "--list", "--json", "--output", LOSETUP_COLUMNS];

describe("xl backend", () => {
  it("finds its domain in `xl list -v`; one not listed there is absent", async () => {
    const runner = xl([unknown]);
    expect(await xlBackend(runner).presence(vm)).toEqual({ kind: "absent" });
    expect(runner.argvs).toEqual([["xl", "list", "-v"]]);
  });

  it("lists the domains once for all the VMs asked about at once, each answer begun after its question", async () => {
    let answered = 0;
    let release = () => {};
    const runner = new RecordingRunner((command) => {
      if (command.argv[1] === "uptime") return {};
      answered++;
      return listed("-b----");
    });
    const slow = {
      run: async (command: Command) => {
        const answer = runner.run(command);
        if (command.argv[1] === "list") await new Promise<void>((resolve) => (release = resolve));
        return answer;
      },
    };
    const backend = new XlBackend(slow as unknown as RecordingRunner, layout);
    const first = backend.presence(vm);
    // Asked while the first listing runs: all three share the next one, not the one under way.
    await new Promise((resolve) => setImmediate(resolve));
    const later = [backend.presence(vm), backend.presence(vm), backend.presence(vm)];
    release();
    await first;
    await new Promise((resolve) => setImmediate(resolve));
    release();
    for (const presence of await Promise.all(later)) expect(presence.kind).toBe("running");
    expect(answered).toBe(2);
    expect(runner.argvs.filter((argv) => argv[1] === "list")).toEqual([
      ["xl", "list", "-v"],
      ["xl", "list", "-v"],
    ]);
  });

  it("reads a running domain's start from `xl uptime`", async () => {
    const runner = xl([listed("-b----")]);
    const before = Date.now();
    const presence = await xlBackend(runner).presence(vm);
    const after = Date.now();
    expect(presence.kind).toBe("running");
    const since = presence.kind === "running" ? (presence.since?.getTime() ?? 0) : 0;
    expect(since).toBeGreaterThanOrEqual(before - 123_000);
    expect(since).toBeLessThanOrEqual(after - 123_000);
    expect(runner.argvs).toEqual([
      ["xl", "list", "-v"],
      ["xl", "uptime"],
    ]);
  });

  it("reports a crashed domain Xen keeps (on_crash=preserve) and a powered-off one", async () => {
    expect(await xlBackend(xl([listed("---sc-")])).presence(vm)).toEqual({
      kind: "crashed",
      reason: "Xen reports a crash",
    });
    expect(await xlBackend(xl([listed("--ps--")])).presence(vm)).toEqual({
      kind: "powered-off",
    });
  });

  it("fails on an `xl list` error other than an unknown domain", async () => {
    const runner = xl([{ code: 1, stderr: "libxl: error: cannot connect to xenstored\n" }]);
    await expect(xlBackend(runner).presence(vm)).rejects.toThrow(
      /: xl list -v\nlibxl: error: cannot connect to xenstored/,
    );
  });

  it("presses the power button of the VM's own domain, by its id", async () => {
    const runner = xl([listed("-b----")]);
    await xlBackend(runner).requestShutdown(vm);
    expect(runner.argvs).toEqual([
      ["xl", "list", "-v"],
      ["xl", "shutdown", "7"],
    ]);
  });

  it("destroys a running domain by its id and waits until Xen let go of it", async () => {
    const runner = xl([listed("-b----"), listed("-b----"), listed("-b---d"), unknown]);
    await xlBackend(runner, noMonitors).destroy(vm);
    expect(runner.argvs).toEqual([
      ["xl", "list", "-v"],
      ["xl", "list", "-v"],
      ["xl", "destroy", "7"],
      ["xl", "list", "-v"],
      ["xl", "list", "-v"],
      LIST_LOOPS,
    ]);
  });

  it("leaves a powered-off domain to xl's monitor, which destroys it", async () => {
    const runner = xl([listed("--ps--"), unknown]);
    await xlBackend(runner, noMonitors).destroy(vm);
    expect(runner.argvs).toEqual([
      ["xl", "list", "-v"],
      ["xl", "list", "-v"],
      ["xl", "list", "-v"],
      LIST_LOOPS,
    ]);
  });

  it("takes a domain whose name xl can no longer read as dying, one gone meanwhile as absent", async () => {
    const runner = xl([
      {
        stdout: `${header}(null)                                       7   128     1     -b---d       2.0 ${OURS}  -   -\n`,
      },
      { code: 1, stderr: "Error: Domain 'lab.vm-1' does not exist.\n" },
    ]);
    await xlBackend(runner, noMonitors).destroy(vm);
    expect(runner.argvs.every((argv) => argv[1] === "list" || argv[1] === "--list")).toBe(true);
    // Only asked by its name can a nameless dying domain be told to be the VM's.
    expect(runner.argvs).toContainEqual(["xl", "list", "-v", "lab.vm-1"]);
  });

  it("ends the VM's xl monitor, which would restart a rebooting guest, before destroying", async () => {
    const monitor = spawn("sleep", ["60"]);
    const others = spawn("sleep", ["60"]);
    const mimic = spawn("sleep", ["60"]);
    const processes = async () => [
      {
        pid: monitor.pid ?? 0,
        uid: 0,
        argv: ["/usr/lib/xen-4.17/bin/xl", "create", vm.paths.xlConfig],
      },
      { pid: others.pid ?? 0, uid: 0, argv: ["xl", "create", "/elsewhere/vm.xl.cfg"] },
      // A user's own process of that name and command line is not shoal's monitor.
      { pid: mimic.pid ?? 0, uid: 1000, argv: ["xl", "create", vm.paths.xlConfig] },
    ];
    const ended = new Promise((resolve) => monitor.on("exit", (_code, signal) => resolve(signal)));
    try {
      await xlBackend(xl([unknown]), processes).destroy(vm);
      expect(await ended).toBe("SIGKILL");
      expect(others.exitCode).toBeNull();
      expect(mimic.exitCode).toBeNull();
      expect(mimic.signalCode).toBeNull();
    } finally {
      monitor.kill("SIGKILL");
      others.kill("SIGKILL");
      mimic.kill("SIGKILL");
    }
  });

  it("does nothing to a domain Xen does not have, and looks for loop devices left on the VM's files", async () => {
    const runner = xl([unknown]);
    await xlBackend(runner, noMonitors).destroy(vm);
    expect(runner.argvs).toEqual([["xl", "list", "-v"], ["xl", "list", "-v"], LIST_LOOPS]);
  });

  it("writes vm.xl.cfg and the hotplug scripts afresh from the record before `xl create` reads them", async () => {
    const root = await tempDir();
    const { here, own, spec, boot, nic, processes } = await startable(root);
    const { paths } = own;
    const planted = join(root, "owned");
    await writeFile(
      paths.xlConfig,
      `bootloader = "/bin/sh"\nbootloader_args = ["-c", "touch ${planted}"]\n`,
    );
    await writeFile(paths.vifHotplug, `#!/bin/sh\ntouch ${planted}\n`, { mode: 0o755 });
    await writeFile(paths.blockHotplug, `#!/bin/sh\ntouch ${planted}\n`, { mode: 0o755 });
    let created: { config: string; script: string; block: string } | undefined;
    const runner = dom0(boot.base, [], (command) => {
      if (command.argv[1] === "create") {
        created = {
          config: readFileSync(paths.xlConfig, "utf8"),
          script: readFileSync(paths.vifHotplug, "utf8"),
          block: readFileSync(paths.blockHotplug, "utf8"),
        };
      }
      return undefined;
    });
    await new XlBackend(runner, here, processes).start(own, spec, boot, nic);
    expect(runner.argvs.at(-1)).toEqual(["xl", "create", paths.xlConfig]);
    expect(created).toEqual({
      config: renderXlConfig({
        fleet: "lab",
        vm: spec,
        uuid: domainUuid({ root: here.root, fleet: "lab" }, "vm-1"),
        boot,
        baseDevice: "/dev/loop4",
        blockScript: paths.blockHotplug,
        seed: paths.seed,
        layer: paths.layer,
        bridge: "shoal0",
        vifName: "tap1",
        vifScript: paths.vifHotplug,
      }),
      script: renderVifHotplug({
        script: await readFile("src/backends/xl/xen-vif-hotplug", "utf8"),
        bridge: "shoal0",
        vifName: "tap1",
        namespace: nic.namespace,
      }),
      block: await readFile("src/backends/xl/xen-block-hotplug", "utf8"),
    });
  });
});

describe("xl backend and the base's loop device", () => {
  /** Two VMs of one state directory on one base, in a dom0 that `dom0` fakes. */
  async function twoVms(
    loops: (base: string) => [string, string, { ro?: boolean }?][] = () => [],
    answer?: Parameters<typeof dom0>[2],
  ) {
    const root = await tempDir();
    const one = await startable(root, "vm-1");
    const two = await startable(root, "vm-2");
    const runner = dom0(one.boot.base, loops(one.boot.base), answer);
    const backend = new XlBackend(runner, one.here, one.processes);
    const start = (vm: typeof one) => backend.start(vm.own, vm.spec, vm.boot, vm.nic);
    const base = one.here.xlBase(one.boot.baseId);
    return { one, two, runner, backend, start, base };
  }

  const detaches = (runner: RecordingRunner) =>
    runner.argvs.filter((argv) => argv[0] === "losetup" && argv[1] === "--detach");

  it("attaches the base once, read-only, for every domain on it, and detaches it when the last one goes", async () => {
    const { one, two, runner, backend, start, base } = await twoVms();
    await start(one);
    await start(two);
    expect(runner.argvs.filter((argv) => argv[1] === "--find")).toEqual([
      ["losetup", "--find", "--show", "--read-only", one.boot.base],
    ]);
    for (const vm of [one, two]) {
      expect(readFileSync(vm.own.paths.xlConfig, "utf8")).toContain(
        `"format=raw, vdev=xvda, access=ro, script=${vm.own.paths.blockHotplug}, target=/dev/loop4"`,
      );
    }
    expect((await readdir(base.users)).sort()).toEqual(
      [
        domainUuid({ root: one.here.root, fleet: "lab" }, "vm-1"),
        domainUuid({ root: one.here.root, fleet: "lab" }, "vm-2"),
      ].sort(),
    );
    await backend.destroy(one.own);
    expect(detaches(runner)).toEqual([]);
    await backend.destroy(two.own);
    expect(detaches(runner)).toEqual([["losetup", "--detach", "/dev/loop4"]]);
    await expect(lstat(base.dir)).rejects.toThrow("ENOENT");
  });

  it("never uses or detaches a recorded device that is no longer the base (after a reboot, another's)", async () => {
    const elsewhere = join(await tempDir(), "their.img");
    await writeFile(elsewhere, "theirs");
    const { one, runner, backend, start, base } = await twoVms(() => [["/dev/loop9", elsewhere]]);
    await mkdir(base.dir, { recursive: true });
    await writeFile(base.record, '{"device": "/dev/loop9"}\n');
    await start(one);
    expect(readFileSync(one.own.paths.xlConfig, "utf8")).toContain("target=/dev/loop4");
    await backend.destroy(one.own);
    expect(detaches(runner)).toEqual([["losetup", "--detach", "/dev/loop4"]]);
  });

  it("takes no writable loop device of the base for its own", async () => {
    // /dev/loop2 is the base, but writable: another program's.
    const { one, runner, start, base } = await twoVms((base) => [
      ["/dev/loop2", base, { ro: false }],
    ]);
    await mkdir(base.dir, { recursive: true });
    await writeFile(base.record, '{"device": "/dev/loop2"}\n');
    await start(one);
    expect(readFileSync(one.own.paths.xlConfig, "utf8")).toContain("target=/dev/loop4");
    expect(detaches(runner)).toEqual([]);
  });

  it("leaves no user and no device behind when `xl create` fails", async () => {
    const { one, runner, start, base } = await twoVms(undefined, (command) =>
      command.argv[1] === "create" ? { code: 1, stderr: "libxl: error: no memory\n" } : undefined,
    );
    await expect(start(one)).rejects.toThrow(/xl create/);
    expect(detaches(runner)).toEqual([["losetup", "--detach", "/dev/loop4"]]);
    await expect(lstat(base.dir)).rejects.toThrow("ENOENT");
  });

  it("creates a domain again once when dom0 set its devices up too slowly for libxl, and only then", async () => {
    const slow = [
      "libxl: error: libxl_device.c:1181:device_backend_callback: Domain 6:unable to add device with path /local/domain/0/backend/vbd/6/51728",
      "libxl: error: libxl_create.c:1672:domcreate_launch_dm: Domain 6:unable to add disk devices",
      "libxl: error: libxl_domain.c:1183:libxl__destroy_domid: Domain 6:Non-existant domain",
    ].join("\n");
    let creates = 0;
    const once = await twoVms(undefined, (command) =>
      command.argv[1] === "create" && creates++ === 0 ? { code: 3, stderr: slow } : undefined,
    );
    await once.start(once.one);
    expect(once.runner.argvs.filter((argv) => argv[1] === "create")).toHaveLength(2);

    const always = await twoVms(undefined, (command) =>
      command.argv[1] === "create" ? { code: 3, stderr: slow } : undefined,
    );
    await expect(always.start(always.one)).rejects.toThrow(/unable to add disk devices/);
    expect(always.runner.argvs.filter((argv) => argv[1] === "create")).toHaveLength(2);
    await expect(lstat(always.base.dir)).rejects.toThrow("ENOENT");

    const other = await twoVms(undefined, (command) =>
      command.argv[1] === "create" ? { code: 3, stderr: "libxl: error: no memory\n" } : undefined,
    );
    await expect(other.start(other.one)).rejects.toThrow(/no memory/);
    expect(other.runner.argvs.filter((argv) => argv[1] === "create")).toHaveLength(1);
  });

  it("after a kill, releases a base whose users' domains and xl monitors are gone, and keeps one whose monitor is remaking its domain", async () => {
    const { one, runner, start } = await twoVms();
    await start(one);
    // Both domains went behind shoal's back: Xen lists none.
    const monitor = { pid: 99, uid: 0, argv: ["xl", "create", one.own.paths.xlConfig] };
    const rebooting = new XlBackend(runner, one.here, async (name) =>
      name === "xl" ? [monitor] : one.processes(name),
    );
    await rebooting.tidy();
    expect(detaches(runner)).toEqual([]);
    await new XlBackend(runner, one.here, one.processes).tidy();
    expect(detaches(runner)).toEqual([["losetup", "--detach", "/dev/loop4"]]);
    expect(runner.argvs).toContainEqual(["xl", "list", "-v"]);
  });

  it("refuses domUs Xen has no memory for before anything is made, counting the base once", async () => {
    const { one, two, runner, backend } = await twoVms(undefined, (command) =>
      command.argv.join(" ") === "xl info"
        ? { stdout: "xen_version            : 4.17.5\nfree_memory            : 255\n" }
        : undefined,
    );
    const starting = [one, two].map((vm) => ({ spec: vm.spec, boot: vm.boot }));
    await expect(backend.checkRoom(starting, false)).rejects.toThrow(
      new UserError(
        "no room in this Xen host: the domUs to start need 256 MiB and Xen has 255 MiB free",
        "fewer or smaller VMs (memory:), other domUs stopped, or a smaller dom0_mem",
      ),
    );
    // Xen allocates a domain's memory whole: asking it to overcommit is refused, not ignored.
    await expect(backend.checkRoom(starting.slice(0, 1), true)).rejects.toThrow(
      /^--overcommit: Xen gives every domain all its memory when it starts/,
    );
    await backend.checkRoom(starting.slice(0, 1), false);
    expect(runner.argvs.filter((argv) => argv[0] !== "xl" && argv[1] !== "--list")).toEqual([]);
  });

  it("detaches loop devices a gone domain left on the VM's own files before starting it again", async () => {
    const root = await tempDir();
    const vm = await startable(root);
    await writeFile(vm.own.paths.seed, "seed");
    const other = join(root, "other.img");
    await writeFile(other, "other");
    const runner = dom0(vm.boot.base, [
      ["/dev/loop7", vm.own.paths.seed],
      ["/dev/loop8", other],
    ]);
    await new XlBackend(runner, vm.here, vm.processes).start(vm.own, vm.spec, vm.boot, vm.nic);
    expect(detaches(runner)).toEqual([["losetup", "--detach", "/dev/loop7"]]);
  });
});

describe("xl backend beside other owners of a domain name", () => {
  const theirs = details(
    "/var/lib/shoal/images/abc/base.img",
    "/tmp/suite/fleets/lab/vms/vm-1/identity.tar",
    "/tmp/suite/fleets/lab/vms/vm-1/layer.img",
  );

  it("never shuts down, destroys or counts as its VM a domain another state directory made", async () => {
    const runner = xl([listed("-b----", THEIRS)], theirs);
    const backend = xlBackend(runner, noMonitors);
    expect(await backend.presence(vm)).toEqual({ kind: "absent" });
    await backend.requestShutdown(vm);
    await backend.destroy(vm);
    await expect(backend.openConsole(vm)).rejects.toThrow("VM vm-1's console is not there");
    // Listings only: nothing shut down, destroyed or detached.
    expect(runner.argvs.filter((argv) => argv[1] !== "list" && argv[1] !== "--list")).toEqual([]);
    expect(runner.argvs).toContainEqual(["xl", "list", "-l", "lab.vm-1"]);
  });

  it("refuses, before anything is made, a VM whose domain name another state directory holds, naming it", async () => {
    const runner = xl([listed("-b----", THEIRS)], theirs);
    await expect(xlBackend(runner).checkNames([vm])).rejects.toThrow(
      "Xen domain lab.vm-1 belongs to state directory /tmp/suite (fleet lab), not this one",
    );
    expect(runner.argvs).toEqual([
      ["xl", "list", "-v"],
      ["xl", "list", "-l", "lab.vm-1"],
    ]);
  });

  it("refuses a domain of the name that no shoal made", async () => {
    const runner = xl([listed("-b----", THEIRS)], details("/srv/images/lab.img"));
    await expect(xlBackend(runner).checkNames([vm])).rejects.toThrow(
      "Xen domain lab.vm-1 exists without shoal's owner mark",
    );
    // xl keeps no configuration for a domain it is still building: no one's shoal can tell.
    const building = xl([listed("--p---", THEIRS)], { stdout: "[]\n" });
    await expect(xlBackend(building).checkNames([vm])).rejects.toThrow(
      "Xen domain lab.vm-1 exists without shoal's owner mark",
    );
  });

  it("takes a domain without its UUID that boots from the VM's own seed (an earlier shoal's) as the VM's", async () => {
    const legacy = details("/var/lib/shoal/images/abc/base.img", vm.paths.seed);
    const running = listed("-b----", THEIRS);
    const runner = xl([running, running, running, unknown], legacy);
    await xlBackend(runner).checkNames([vm]);
    await xlBackend(runner, noMonitors).destroy(vm);
    expect(runner.argvs).toContainEqual(["xl", "destroy", "7"]);
  });

  it("finds its own domains' names free in one `xl list -v`", async () => {
    const runner = xl([listed("-b----")]);
    const second = { ...vm, name: "vm-2", paths: layout.fleet("lab").vm("vm-2") };
    await xlBackend(runner).checkNames([vm, second]);
    expect(runner.argvs).toEqual([["xl", "list", "-v"]]);
  });
});

describe("xl backend and xenconsoled's log of a domain", () => {
  async function setUp() {
    const { here, own, spec, boot, nic, processes, logs } = await startable(await tempDir());
    const runner = dom0(boot.base);
    const backend = new XlBackend(runner, here, processes);
    const start = () => backend.start(own, spec, boot, nic);
    return { runner, backend, start, own, link: join(logs, "guest-lab.vm-1.log") };
  }

  it("links the log to the VM's serial.log, keeps its own link, and removes it when the VM goes", async () => {
    const { runner, backend, start, own, link } = await setUp();
    await start();
    expect(await readlink(link)).toBe(own.paths.serialLog);
    await start();
    expect(runner.argvs.filter((argv) => argv[1] === "create")).toHaveLength(2);
    await backend.forget(own);
    await expect(lstat(link)).rejects.toThrow("ENOENT");
  });

  it("never follows, replaces or removes a log that is not its VM's", async () => {
    const { runner, backend, start, own, link } = await setUp();
    await symlink("/tmp/suite/fleets/lab/vms/vm-1/serial.log", link);
    await expect(start()).rejects.toThrow(
      `console log ${link} belongs to state directory /tmp/suite (fleet lab), not this one`,
    );
    await backend.forget(own);
    expect(await readlink(link)).toBe("/tmp/suite/fleets/lab/vms/vm-1/serial.log");
    await rm(link);
    await writeFile(link, "another domain's console\n");
    await expect(start()).rejects.toThrow(`console log ${link} exists without shoal's owner mark`);
    await backend.forget(own);
    expect(await readFile(link, "utf8")).toBe("another domain's console\n");
    expect(runner.argvs.filter((argv) => argv[1] === "create")).toEqual([]);
  });
});

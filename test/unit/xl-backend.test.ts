import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { lstat, mkdir, readFile, readlink, rm, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { XlBackend } from "../../src/backends/xl/backend.js";
import type { VmSpec } from "../../src/core/fleet.js";
import { renderVifHotplug, renderXlConfig } from "../../src/core/render/xl.js";
import { domainUuid } from "../../src/core/xen.js";
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
 * A runner whose `xl list -v NAME` answers come from `states` in turn (the last one repeats), and
 * whose `xl list -l NAME` answer is `long`.
 */
function xl(states: Partial<CommandResult>[], long: Partial<CommandResult> = { stdout: "[]\n" }) {
  let listings = 0;
  return new RecordingRunner((command: Command) => {
    if (command.argv[1] === "list" && command.argv[2] === "-l") return long;
    if (command.argv[1] === "list") return states[Math.min(listings++, states.length - 1)] ?? {};
    if (command.argv[1] === "uptime")
      return { stdout: `Name                                ID Uptime\nlab.vm-1   7  0:02:03\n` };
    return {};
  });
}

/**
 * A VM of a state directory under `root`, ready to start: its spec, boot files and network
 * interface, with xenconsoled (as `processes` finds it) logging guests into `logs`.
 */
async function startable(root: string) {
  const here = stateLayout(join(root, "state"));
  const own = { fleet: "lab", name: "vm-1", paths: here.fleet("lab").vm("vm-1") };
  await mkdir(own.paths.dir, { recursive: true });
  const [spec] = fleetOf("name: lab\nbackend: xl\ncount: 1\n").vms as [VmSpec];
  const boot = imageBoot(here, { id: "ab".repeat(32), boot: "shoal-initramfs" });
  const nic = { tap: "tap1", bridge: "shoal0", namespace: "shoal-lab-1a2b3c4d" };
  const logs = join(root, "console");
  await mkdir(logs);
  const processes = async (name: string) =>
    name === "xenconsoled"
      ? [{ pid: 1, uid: 0, argv: ["xenconsoled", "--log=guest", `--log-dir=${logs}`] }]
      : [];
  return { here, own, spec, boot, nic, logs, processes };
}

const noMonitors = async () => [];

describe("xl backend", () => {
  it("asks `xl list -v` by domain name; an unknown domain is absent", async () => {
    const runner = xl([unknown]);
    expect(await xlBackend(runner).presence(vm)).toEqual({ kind: "absent" });
    expect(runner.argvs).toEqual([["xl", "list", "-v", "lab.vm-1"]]);
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
      ["xl", "list", "-v", "lab.vm-1"],
      ["xl", "uptime", "lab.vm-1"],
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
    await expect(xlBackend(runner).presence(vm)).rejects.toThrow(/xl list -v lab\.vm-1/);
  });

  it("presses the power button of the VM's own domain, by its id", async () => {
    const runner = xl([listed("-b----")]);
    await xlBackend(runner).requestShutdown(vm);
    expect(runner.argvs).toEqual([
      ["xl", "list", "-v", "lab.vm-1"],
      ["xl", "shutdown", "7"],
    ]);
  });

  it("destroys a running domain by its id and waits until Xen let go of it", async () => {
    const runner = xl([listed("-b----"), listed("-b----"), listed("-b---d"), unknown]);
    await xlBackend(runner, noMonitors).destroy(vm);
    expect(runner.argvs).toEqual([
      ["xl", "list", "-v", "lab.vm-1"],
      ["xl", "list", "-v", "lab.vm-1"],
      ["xl", "destroy", "7"],
      ["xl", "list", "-v", "lab.vm-1"],
      ["xl", "list", "-v", "lab.vm-1"],
    ]);
  });

  it("leaves a powered-off domain to xl's monitor, which destroys it", async () => {
    const runner = xl([listed("--ps--"), unknown]);
    await xlBackend(runner, noMonitors).destroy(vm);
    expect(runner.argvs).toEqual([
      ["xl", "list", "-v", "lab.vm-1"],
      ["xl", "list", "-v", "lab.vm-1"],
      ["xl", "list", "-v", "lab.vm-1"],
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
    expect(runner.argvs.every((argv) => argv[1] === "list")).toBe(true);
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

  it("does nothing to a domain Xen does not have", async () => {
    const runner = xl([unknown]);
    await xlBackend(runner, noMonitors).destroy(vm);
    expect(runner.argvs).toEqual([
      ["xl", "list", "-v", "lab.vm-1"],
      ["xl", "list", "-v", "lab.vm-1"],
    ]);
  });

  it("writes vm.xl.cfg and the vif hotplug script afresh from the record before `xl create` reads them", async () => {
    const root = await tempDir();
    const { here, own, spec, boot, nic, processes } = await startable(root);
    const { paths } = own;
    const planted = join(root, "owned");
    await writeFile(
      paths.xlConfig,
      `bootloader = "/bin/sh"\nbootloader_args = ["-c", "touch ${planted}"]\n`,
    );
    await writeFile(paths.vifHotplug, `#!/bin/sh\ntouch ${planted}\n`, { mode: 0o755 });
    let created: { config: string; script: string } | undefined;
    const runner = new RecordingRunner((command) => {
      if (command.argv[1] === "create") {
        created = {
          config: readFileSync(paths.xlConfig, "utf8"),
          script: readFileSync(paths.vifHotplug, "utf8"),
        };
      }
      // Xen has no domain of the VM's name.
      return command.argv[1] === "list" ? unknown : {};
    });
    await new XlBackend(runner, here, processes).start(own, spec, boot, nic);
    expect(runner.argvs.at(-1)).toEqual(["xl", "create", paths.xlConfig]);
    expect(created).toEqual({
      config: renderXlConfig({
        fleet: "lab",
        vm: spec,
        uuid: domainUuid({ root: here.root, fleet: "lab" }, "vm-1"),
        boot,
        seed: paths.seed,
        layer: paths.layer,
        bridge: "shoal0",
        vifScript: paths.vifHotplug,
      }),
      script: renderVifHotplug({
        script: await readFile("src/net/xen-vif-hotplug", "utf8"),
        bridge: "shoal0",
        namespace: nic.namespace,
      }),
    });
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
    expect(runner.argvs.filter((argv) => argv[1] !== "list")).toEqual([]);
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
    const runner = xl([unknown]);
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

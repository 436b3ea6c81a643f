import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { XlBackend } from "../../src/backends/xl/backend.js";
import type { VmSpec } from "../../src/core/fleet.js";
import { renderVifHotplug, renderXlConfig } from "../../src/core/render/xl.js";
import type { Command, CommandResult } from "../../src/host/runner.js";
import { stateLayout } from "../../src/state/layout.js";
import { fleetOf } from "../helpers/fleet.js";
import { RecordingRunner } from "../helpers/recording-runner.js";
import { useTempDirs } from "../helpers/tmp.js";

const layout = stateLayout("/var/lib/shoal");
const tempDir = useTempDirs();
const vm = { fleet: "lab", name: "vm-1", paths: layout.fleet("lab").vm("vm-1") };

function xlBackend(
  runner: RecordingRunner,
  processes?: ConstructorParameters<typeof XlBackend>[2],
) {
  return new XlBackend(runner, layout.xlCreateLock, processes);
}

const header = "Name                                        ID   Mem VCPUs\tState\tTime(s)\n";
const listed = (state: string): Partial<CommandResult> => ({
  stdout: `${header}lab.vm-1                                     7   128     1     ${state}       2.0\n`,
});
const unknown: Partial<CommandResult> = {
  code: 1,
  stderr: "lab.vm-1 is an invalid domain identifier (rc=-6)\n",
};

/** A runner whose `xl list` answers come from `states` in turn (the last one repeats). */
function xl(states: Partial<CommandResult>[], uptime = " 0:02:03") {
  let listings = 0;
  return new RecordingRunner((command: Command) => {
    if (command.argv[1] === "list") return states[Math.min(listings++, states.length - 1)] ?? {};
    if (command.argv[1] === "uptime")
      return { stdout: `Name                                ID Uptime\nlab.vm-1   7 ${uptime}\n` };
    return {};
  });
}

describe("xl backend", () => {
  it("asks `xl list` by domain name; an unknown domain is absent", async () => {
    const runner = xl([unknown]);
    expect(await xlBackend(runner).presence(vm)).toEqual({ kind: "absent" });
    expect(runner.argvs).toEqual([["xl", "list", "lab.vm-1"]]);
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
      ["xl", "list", "lab.vm-1"],
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
    await expect(xlBackend(runner).presence(vm)).rejects.toThrow(/xl list lab\.vm-1/);
  });

  it("presses the power button with `xl shutdown`", async () => {
    const runner = xl([]);
    await xlBackend(runner).requestShutdown(vm);
    expect(runner.argvs).toEqual([["xl", "shutdown", "lab.vm-1"]]);
  });

  const noMonitors = async () => [];

  it("destroys a running domain and waits until Xen let go of it", async () => {
    const runner = xl([listed("-b----"), listed("-b----"), listed("-b---d"), unknown]);
    await xlBackend(runner, noMonitors).destroy(vm);
    expect(runner.argvs).toEqual([
      ["xl", "list", "lab.vm-1"],
      ["xl", "list", "lab.vm-1"],
      ["xl", "destroy", "lab.vm-1"],
      ["xl", "list", "lab.vm-1"],
      ["xl", "list", "lab.vm-1"],
    ]);
  });

  it("leaves a powered-off domain to xl's monitor, which destroys it", async () => {
    const runner = xl([listed("--ps--"), unknown]);
    await xlBackend(runner, noMonitors).destroy(vm);
    expect(runner.argvs).toEqual([
      ["xl", "list", "lab.vm-1"],
      ["xl", "list", "lab.vm-1"],
      ["xl", "list", "lab.vm-1"],
    ]);
  });

  it("takes a domain whose name xl can no longer read as dying, one gone meanwhile as absent", async () => {
    const runner = xl([
      {
        stdout: `${header}(null)                                       7   128     1     -b---d       2.0\n`,
      },
      { code: 1, stderr: "Error: Domain 'lab.vm-1' does not exist.\n" },
    ]);
    await xlBackend(runner, noMonitors).destroy(vm);
    expect(runner.argvs.every((argv) => argv[1] === "list")).toBe(true);
  });

  it("ends the VM's xl monitor, which would restart a rebooting guest, before destroying", async () => {
    const monitor = spawn("sleep", ["60"]);
    const others = spawn("sleep", ["60"]);
    const processes = async () => [
      { pid: monitor.pid ?? 0, argv: ["/usr/lib/xen-4.17/bin/xl", "create", vm.paths.xlConfig] },
      { pid: others.pid ?? 0, argv: ["xl", "create", "/elsewhere/vm.xl.cfg"] },
    ];
    const ended = new Promise((resolve) => monitor.on("exit", (_code, signal) => resolve(signal)));
    try {
      await xlBackend(xl([unknown]), processes).destroy(vm);
      expect(await ended).toBe("SIGKILL");
      expect(others.exitCode).toBeNull();
    } finally {
      monitor.kill("SIGKILL");
      others.kill("SIGKILL");
    }
  });

  it("does nothing to a domain Xen does not have", async () => {
    const runner = xl([unknown]);
    await xlBackend(runner, noMonitors).destroy(vm);
    expect(runner.argvs).toEqual([
      ["xl", "list", "lab.vm-1"],
      ["xl", "list", "lab.vm-1"],
    ]);
  });

  it("writes vm.xl.cfg and the vif hotplug script afresh from the record before `xl create` reads them", async () => {
    const root = await tempDir();
    const here = stateLayout(root);
    const paths = here.fleet("lab").vm("vm-1");
    const [spec] = fleetOf("name: lab\nbackend: xl\ncount: 1\n").vms as [VmSpec];
    const image = here.image("ab".repeat(32));
    const boot = {
      kernel: image.kernel,
      initrd: image.initrd,
      base: image.base,
      baseId: "ab".repeat(32),
    };
    const nic = { tap: "tap1", bridge: "shoal0", namespace: "shoal-lab" };
    const planted = join(root, "owned");
    await mkdir(paths.dir, { recursive: true });
    await writeFile(
      paths.xlConfig,
      `bootloader = "/bin/sh"\nbootloader_args = ["-c", "touch ${planted}"]\n`,
    );
    await writeFile(paths.vifHotplug, `#!/bin/sh\ntouch ${planted}\n`, { mode: 0o755 });
    const consoles = join(root, "xen-console");
    const processes = async (name: string) =>
      name === "xenconsoled"
        ? [{ pid: 1, argv: ["xenconsoled", "--log=guest", `--log-dir=${consoles}`] }]
        : [];
    let created: { config: string; script: string } | undefined;
    const runner = new RecordingRunner((command) => {
      if (command.argv[1] === "create") {
        created = {
          config: readFileSync(paths.xlConfig, "utf8"),
          script: readFileSync(paths.vifHotplug, "utf8"),
        };
      }
      return {};
    });
    await new XlBackend(runner, here.xlCreateLock, processes).start(
      { fleet: "lab", name: "vm-1", paths },
      spec,
      boot,
      nic,
    );
    expect(runner.argvs.at(-1)).toEqual(["xl", "create", paths.xlConfig]);
    expect(created).toEqual({
      config: renderXlConfig({
        fleet: "lab",
        vm: spec,
        boot,
        seed: paths.seed,
        layer: paths.layer,
        bridge: "shoal0",
        vifScript: paths.vifHotplug,
      }),
      script: renderVifHotplug({
        script: await readFile("src/net/xen-vif-hotplug", "utf8"),
        bridge: "shoal0",
        namespace: "shoal-lab",
      }),
    });
  });
});

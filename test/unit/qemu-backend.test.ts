import { appendFileSync } from "node:fs";
import { chmod, mkdir, readFile, stat, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { dirname, join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { QemuBackend } from "../../src/backends/qemu/backend.js";
import { renderQemuArgv } from "../../src/backends/qemu/render.js";
import type { VmSpec } from "../../src/core/fleet.js";
import type { CommandResult, Launched } from "../../src/host/runner.js";
import { imageBoot } from "../../src/image/store.js";
import { stateLayout } from "../../src/state/layout.js";
import { fleetOf } from "../helpers/fleet.js";
import { RecordingRunner } from "../helpers/recording-runner.js";
import { useTempDirs } from "../helpers/tmp.js";

/** The QEMU backend's start, with the commands it runs recorded and a stand-in for QEMU's QMP. */

const tempDir = useTempDirs();
const [spec] = fleetOf("name: lab\ncount: 1\nvm: { layer: { type: disk, size: 64M } }\n").vms as [
  VmSpec,
];
const nic = { tap: "tap1", bridge: "shoal0", namespace: "shoal-lab" };
// nobody/nogroup: an unprivileged user every Debian host has.
const user = { uid: 65534, gid: 65534 };
const getent = `shoal-qemu:x:${user.uid}:${user.gid}::/nonexistent:/usr/sbin/nologin\n`;

const servers: Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((server) => new Promise((done) => server.close(done))));
});

/** Answers on `path` as QEMU's monitor does: a greeting, then an empty return for each command. */
async function fakeQmp(path: string): Promise<void> {
  const server = createServer((client) => {
    client.write('{"QMP": {"version": {}, "capabilities": []}}\n');
    client.on("data", (chunk) => {
      for (const line of chunk.toString().split("\n").filter(Boolean)) {
        const { id } = JSON.parse(line) as { id: number };
        client.write(`${JSON.stringify({ return: {}, id })}\n`);
      }
    });
  });
  servers.push(server);
  await new Promise<void>((listening) => server.listen(path, listening));
}

/** A state directory with one image and one created VM (seed, layer, host keys), as `create` leaves it. */
async function createdVm() {
  const root = await tempDir();
  // A host's state directory lets others through (dnsmasq and QEMU run unprivileged).
  await chmod(root, 0o755);
  const layout = stateLayout(root);
  const image = layout.image("ab".repeat(32));
  const boot = imageBoot(layout, { id: "ab".repeat(32), boot: "shoal-initramfs", size: 64 << 20 });
  await mkdir(image.dir, { recursive: true });
  const paths = layout.fleet("lab").vm(spec.name);
  // The fleet's directory comes first, with its record; the VM's directories are root's alone.
  await mkdir(layout.fleet("lab").dir, { recursive: true });
  await mkdir(paths.hostKeys, { recursive: true, mode: 0o700 });
  await writeFile(paths.seed, "seed", { mode: 0o600 });
  await writeFile(paths.layer, "", { mode: 0o600 });
  const vm = { fleet: "lab", name: spec.name, paths };
  return { root, layout, boot, paths, vm };
}

function backend(
  answer: (argv: readonly string[]) => Partial<CommandResult> = () => ({ stdout: getent }),
  launched?: () => Launched,
) {
  const runner = new RecordingRunner((command) => answer(command.argv), launched);
  return { runner, qemu: new QemuBackend(runner, undefined, async () => "tcg") };
}

describe("starting a QEMU VM", () => {
  it("runs what shoal renders from the VM's record, never a vm.qemu planted or edited in its directory", async () => {
    const { root, boot, paths, vm } = await createdVm();
    const owned = join(root, "owned");
    await writeFile(paths.qemuArgv, JSON.stringify(["touch", owned]));
    await mkdir(dirname(paths.qmpSocket), { recursive: true });
    await fakeQmp(paths.qmpSocket);
    const { runner, qemu } = backend();
    await qemu.start(vm, spec, boot, nic);

    const ran = [...runner.argvs, ...(runner.launches ?? []).map((launch) => [...launch.argv])];
    expect(ran).not.toContainEqual(["touch", owned]);
    const rendered = renderQemuArgv({
      fleet: "lab",
      vm: spec,
      boot,
      tap: "tap1",
      namespace: "shoal-lab",
      files: {
        seed: paths.seed,
        layer: paths.layer,
        serialLog: paths.serialLog,
        consoleSocket: paths.consoleSocket,
        qmpSocket: paths.qmpSocket,
        pidFile: paths.pidFile,
      },
      accel: "tcg",
      user: "shoal-qemu",
    });
    expect(runner.launches).toEqual([{ argv: rendered, output: paths.qemuLog }]);
    expect(runner.argvs).toEqual([["getent", "passwd", "shoal-qemu"]]);
    // vm.qemu now records what ran.
    expect(JSON.parse(await readFile(paths.qemuArgv, "utf8"))).toEqual(rendered);
  });

  it("opens to QEMU's group only what QEMU opens, and keeps every file root's", async () => {
    const { layout, boot, paths, vm } = await createdVm();
    await writeFile(paths.pidFile, "4242\n");
    await mkdir(paths.socketDir);
    await fakeQmp(paths.qmpSocket);
    await backend().qemu.start(vm, spec, boot, nic);

    const modes = async (path: string) => {
      const info = await stat(path);
      return [(info.mode & 0o7777).toString(8), info.uid, info.gid];
    };
    const group = (mode: string) => [mode, 0, user.gid];
    expect({
      vms: await modes(layout.fleet("lab").vms),
      vm: await modes(paths.dir),
      seed: await modes(paths.seed),
      layer: await modes(paths.layer),
      serialLog: await modes(paths.serialLog),
      pidFile: await modes(paths.pidFile),
      sockets: await modes(paths.socketDir),
      hostKeys: await modes(paths.hostKeys),
      definition: await modes(paths.qemuArgv),
    }).toEqual({
      vms: group("710"),
      vm: group("710"),
      seed: group("640"),
      layer: group("660"),
      serialLog: group("620"),
      pidFile: group("620"),
      sockets: group("770"),
      hostKeys: ["700", 0, 0],
      definition: ["600", 0, 0],
    });
    // An earlier QEMU's pid is not taken for the new one's.
    expect(await readFile(paths.pidFile, "utf8")).toBe("");
  });

  it("fails with what QEMU said when it ends while starting", async () => {
    const { boot, paths, vm } = await createdVm();
    await writeFile(paths.qemuLog, "qemu-system-x86_64: terminating on signal 15\n");
    const { qemu } = backend(undefined, () => {
      appendFileSync(
        paths.qemuLog,
        `qemu-system-x86_64: -drive if=none,id=layer,file=${paths.layer}: Could not open '${paths.layer}': Permission denied\n`,
      );
      return { pid: process.pid, ended: Promise.resolve(1) };
    });
    const failure = qemu.start(vm, spec, boot, nic);
    await expect(failure).rejects.toThrow(/ended with code 1 while starting/);
    await expect(failure).rejects.toThrow(/Could not open '.*layer\.img': Permission denied$/);
    await expect(failure).rejects.not.toThrow(/terminating on signal 15/);
  });

  it("refuses to start without its unprivileged user, saying how to make it", async () => {
    const { boot, vm } = await createdVm();
    const { runner, qemu } = backend((argv) => (argv[0] === "getent" ? { code: 2 } : {}));
    await expect(qemu.start(vm, spec, boot, nic)).rejects.toThrow(
      "QEMU runs as user shoal-qemu, which this host does not have",
    );
    const rooted = backend(() => ({ stdout: "shoal-qemu:x:0:0::/root:/bin/sh\n" }));
    await expect(rooted.qemu.start(vm, spec, boot, nic)).rejects.toThrow(
      /user shoal-qemu is uid 0, gid 0: QEMU must not run as root/,
    );
    expect([...runner.launches, ...rooted.runner.launches]).toEqual([]);
  });

  it("refuses a state directory QEMU cannot get through, saying which directory", async () => {
    const { root, boot, vm } = await createdVm();
    await chmod(root, 0o700);
    const { runner, qemu } = backend();
    const refused = qemu.start(vm, spec, boot, nic);
    await expect(refused).rejects.toThrow(
      `QEMU, which runs as user shoal-qemu, cannot reach ${root}/images/${boot.baseId}: ${root} is closed to other users`,
    );
    expect(runner.launches).toEqual([]);
  });
});

import { createHash } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { LibvirtBackend } from "../../src/backends/libvirt/backend.js";
import {
  allocationOf,
  domainStates,
  imageVolumes,
  poolName,
  presenceOf,
} from "../../src/backends/libvirt/names.js";
import { hostSpec } from "../../src/core/hosts.js";
import { HostUnreachable } from "../../src/errors.js";
import { runnerOn, sshArgvFor } from "../../src/host/remote.js";
import type { Command } from "../../src/host/runner.js";
import { stateLayout } from "../../src/state/layout.js";
import { fleetOf } from "../helpers/fleet.js";
import { RecordingRunner } from "../helpers/recording-runner.js";
import { useTempDirs } from "../helpers/tmp.js";

const tempDir = useTempDirs();

/** ssh to 10.0.0.5 as a URI without ssh parameters reaches it. */
const SSH_TO_HOST = [
  "ssh",
  "-o",
  "BatchMode=yes",
  "-o",
  "ConnectTimeout=10",
  "-l",
  "root",
  "--",
  "10.0.0.5",
];

describe("a libvirt host's URI as ssh reaches it", () => {
  it("is this machine itself for a local URI", () => {
    expect(sshArgvFor("qemu:///system")).toBeUndefined();
  });

  it("takes the user, port and libvirt's own ssh parameters", () => {
    expect(
      sshArgvFor(
        "qemu+ssh://admin@node7:2222/system?keyfile=/k/id&known_hosts=/k/known&no_verify=1&command=/opt/ssh",
      ),
    ).toEqual([
      "/opt/ssh",
      "-o",
      "BatchMode=yes",
      "-o",
      "ConnectTimeout=10",
      "-p",
      "2222",
      "-i",
      "/k/id",
      "-o",
      "UserKnownHostsFile=/k/known",
      "-o",
      "StrictHostKeyChecking=no",
      "-l",
      "admin",
      "--",
      "node7",
    ]);
    expect(sshArgvFor("qemu+tcp://10.0.0.5/system")).toEqual(SSH_TO_HOST);
  });

  it("runs a command there as one argument quoted for the remote shell, LANG=C", async () => {
    const runner = new RecordingRunner();
    await runnerOn(runner, { name: "h1", uri: "qemu+ssh://root@10.0.0.5/system" }).run({
      argv: ["ip", "link", "set", "dev", "x", "alias", "shoal owner=/a b'c fleet=lab"],
    });
    expect(runner.argvs).toEqual([
      [
        ...SSH_TO_HOST,
        // shell-quote escapes "=": the same word to the remote shell.
        `env LANG\\=C ip link set dev x alias "shoal owner=/a b'c fleet=lab"`,
      ],
    ]);
    const local = new RecordingRunner();
    await runnerOn(local, { name: "local", uri: "qemu:///system" }).run({ argv: ["ip", "link"] });
    expect(local.argvs).toEqual([["ip", "link"]]);
  });
});

describe("virsh domstats --state", () => {
  it.each([
    ["running (booted)", 1, 1, { kind: "running" }],
    ["paused (user)", 3, 2, { kind: "running" }],
    ["in shutdown", 4, 1, { kind: "running" }],
    ["shut off (shutdown)", 5, 1, { kind: "powered-off", disksReleased: true }],
    ["shut off (crashed)", 5, 3, { kind: "crashed", reason: "libvirt says shut off (crashed)" }],
    ["shut off (failed)", 5, 6, { kind: "crashed", reason: "libvirt says shut off (failed)" }],
    ["shut off (destroyed)", 5, 2, { kind: "absent" }],
    ["shut off (unknown)", 5, 0, { kind: "absent" }],
    ["crashed (panicked)", 6, 1, { kind: "crashed", reason: "its hypervisor says it crashed" }],
  ])("%s", (_shown, state, reason, presence) => {
    expect(presenceOf({ state, reason })).toEqual(presence);
  });

  it("answers for every domain of a host at once, and a domain it does not list is absent", () => {
    const states = domainStates(
      [
        "Domain: 'lab.vm-1'",
        "  state.state=1",
        "  state.reason=1",
        "",
        "Domain: 'someone-else'",
        "  state.state=5",
        "  state.reason=2",
        "",
        "Domain: 'lab.vm-2'",
        "  state.state=5",
        "  state.reason=1",
        "",
      ].join("\n"),
    );
    expect([...states]).toEqual([
      ["lab.vm-1", { state: 1, reason: 1 }],
      ["someone-else", { state: 5, reason: 2 }],
      ["lab.vm-2", { state: 5, reason: 1 }],
    ]);
    expect(presenceOf(states.get("lab.vm-3"))).toEqual({ kind: "absent" });
    expect(() => presenceOf({ state: 0, reason: 0 })).toThrow(/state 0/);
    expect(() => domainStates("Domain: 'x'\n  state.state=1\n")).toThrow(/no state/);
  });

  it("asks each host once for all of its VMs; a host that does not answer makes its VMs unreachable", async () => {
    const layout = stateLayout("/var/lib/shoal-test");
    const uris = { h1: "qemu+ssh://root@10.0.0.5/system", h2: "qemu+ssh://root@10.0.0.6/system" };
    const runner = new RecordingRunner((command) =>
      command.argv.includes(uris.h2)
        ? { code: 1, stderr: "error: failed to connect to the hypervisor\n" }
        : { stdout: "Domain: 'lab.vm-1'\n  state.state=1\n  state.reason=1\n" },
    );
    const backend = new LibvirtBackend({
      runner,
      layout,
      hosts: new Map(
        Object.entries(uris).map(([name, uri]) => [name, hostSpec({ name, uri })] as const),
      ),
      accel: "tcg",
      notice: () => {},
    });
    const vm = (name: string, host: string) => ({
      fleet: "lab",
      name,
      host,
      paths: layout.fleet("lab").vm(name),
    });
    const found = await backend.presences([vm("vm-1", "h1"), vm("vm-2", "h2"), vm("vm-3", "h1")]);
    expect(runner.argvs).toEqual([
      ["virsh", "-q", "-c", uris.h1, "domstats", "--state"],
      ["virsh", "-q", "-c", uris.h2, "domstats", "--state"],
    ]);
    expect(found.get("vm-1")).toEqual({ kind: "running" });
    expect(found.get("vm-2")).toBeInstanceOf(HostUnreachable);
    expect(found.get("vm-3")).toEqual({ kind: "absent" });
  });
});

describe("a VM's layer as a volume on its host", () => {
  const URI = "qemu+ssh://root@10.0.0.5/system";
  const layout = stateLayout("/var/lib/shoal-test");
  const pool = poolName(layout.root);
  const vm = { fleet: "lab", name: "vm-2", host: "h1", paths: layout.fleet("lab").vm("vm-2") };
  const backendWith = (runner: RecordingRunner) =>
    new LibvirtBackend({
      runner,
      layout,
      hosts: new Map([["h1", hostSpec({ name: "h1", uri: URI })]]),
      accel: "tcg",
      notice: () => {},
    });

  it("is copied here sparse with vol-download, to be read", async () => {
    const runner = new RecordingRunner();
    await backendWith(runner).copyLayer(vm, "/tmp/copy");
    expect(runner.argvs).toEqual([
      [
        "virsh",
        "-q",
        "-c",
        URI,
        "vol-download",
        "--pool",
        pool,
        "lab.vm-2.layer",
        "/tmp/copy",
        "--sparse",
      ],
    ]);
  });

  it("takes what vol-info says it allocates, in bytes", async () => {
    const runner = new RecordingRunner(() => ({
      stdout:
        "Name:           lab.vm-2.layer\nType:           file\nCapacity:       1073741824 bytes\nAllocation:     2215936 bytes\n",
    }));
    expect(await backendWith(runner).layerBytes(vm)).toBe(2215936);
    expect(runner.argvs[0]?.slice(4)).toEqual([
      "vol-info",
      "--bytes",
      "--pool",
      pool,
      "lab.vm-2.layer",
    ]);
  });

  it("is made on a VM's new host with what its layer held on the old one, checked, then renamed over the layer", async () => {
    const carried = join(await tempDir(), "carried");
    await writeFile(carried, "a layer");
    const sum = createHash("sha256").update("a layer").digest("hex");
    const dir = `/var/lib/libvirt/${pool}`;
    const answer = (sha256: string) => (command: Command) =>
      command.argv.includes("pool-info")
        ? { stdout: "State:          running\n" }
        : command.argv.some((arg) => arg.includes("sha256sum"))
          ? { stdout: `${sha256}  ${dir}/lab.vm-2.layer-new\n` }
          : {};
    const spec = fleetOf("name: lab\ncount: 2\nvm: { layer: { size: 64M } }\n").vms[1];
    if (!spec) throw new Error("no vm-2");
    const runner = new RecordingRunner(answer(sum));
    await backendWith(runner).createLayer(vm, spec, carried);
    const ssh = (line: string) => [...SSH_TO_HOST, `env LANG\\=C ${line}`];
    expect(runner.argvs.map((argv) => (argv[0] === "virsh" ? argv.slice(4) : argv))).toEqual([
      ["pool-info", pool],
      ["pool-autostart", pool],
      ["vol-delete", "--pool", pool, "lab.vm-2.layer-new"],
      [
        "vol-create-as",
        pool,
        "lab.vm-2.layer-new",
        `${64 * 2 ** 20}b`,
        "--format",
        "raw",
        "--allocation",
        "0",
      ],
      ["vol-upload", "--pool", pool, "lab.vm-2.layer-new", carried, "--sparse"],
      ssh(`sha256sum -- ${dir}/lab.vm-2.layer-new`),
      ssh(`mv -f -- ${dir}/lab.vm-2.layer-new ${dir}/lab.vm-2.layer`),
      ["pool-refresh", pool],
    ]);
    // A copy that arrived otherwise never replaces the layer.
    const torn = new RecordingRunner(answer("0".repeat(64)));
    await expect(backendWith(torn).createLayer(vm, spec, carried)).rejects.toThrow(
      "host h1's copy of VM vm-2's layer does not have its hash",
    );
    expect(torn.argvs.some((argv) => argv.some((arg) => arg.includes("mv -f")))).toBe(false);
  });

  it("sends an image's files to a host once: checked there, marked verified, and never marked when a copy is wrong", async () => {
    const dir = await tempDir();
    const parts = { base: "a base", kernel: "a kernel", initrd: "an initramfs" } as const;
    const sums = Object.fromEntries(
      Object.entries(parts).map(([part, text]) => [
        part,
        createHash("sha256").update(text).digest("hex"),
      ]),
    ) as Record<keyof typeof parts, string>;
    for (const [part, text] of Object.entries(parts)) await writeFile(join(dir, part), text);
    const boot = {
      base: join(dir, "base"),
      kernel: join(dir, "kernel"),
      initrd: join(dir, "initrd"),
      baseId: sums.base,
    };
    const volumes = imageVolumes(sums.base);
    const hostDir = `/var/lib/libvirt/${pool}`;
    /** A host whose sha256sum finds `base` for the base (and the right sums for the rest). */
    const hostWith = (base: string, verified: boolean) =>
      new RecordingRunner((command: Command) => {
        if (command.argv.includes("pool-info")) return { stdout: "State:          running\n" };
        if (command.argv.includes("vol-info")) return { code: verified ? 0 : 1 };
        if (!command.argv.some((arg) => arg.includes("sha256sum"))) return {};
        const found = { ...sums, base };
        const lines = (["base", "kernel", "initrd"] as const).map(
          (part) => `${found[part]}  ${hostDir}/${volumes[part]}`,
        );
        return { stdout: `${lines.join("\n")}\n` };
      });
    const uploads = (runner: RecordingRunner) =>
      runner.argvs.filter((argv) => argv.includes("vol-upload")).map((argv) => argv[7]);
    const marked = (runner: RecordingRunner) =>
      runner.argvs.some(
        (argv) => argv.includes("vol-create-as") && argv.includes(volumes.verified),
      );

    const fresh = hostWith(sums.base, false);
    await backendWith(fresh).stageBoot(vm, boot);
    expect(uploads(fresh)).toEqual([volumes.base, volumes.kernel, volumes.initrd]);
    expect(marked(fresh)).toBe(true);

    const torn = hostWith("0".repeat(64), false);
    await expect(backendWith(torn).stageBoot(vm, boot)).rejects.toThrow(
      `host h1's copy of image ${sums.base.slice(0, 12)}'s base does not have its hash`,
    );
    expect(marked(torn)).toBe(false);

    const holding = hostWith(sums.base, true);
    await backendWith(holding).stageBoot(vm, boot);
    expect(uploads(holding)).toEqual([]);
  });

  it("refuses an answer with no allocation in bytes", () => {
    expect(() => allocationOf("Allocation:     2.11 MiB\n")).toThrow(/no allocation in bytes/);
  });
});

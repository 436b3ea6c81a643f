import { describe, expect, it } from "vitest";
import { presenceOf } from "../../src/backends/libvirt/names.js";
import { runnerOn, sshArgvFor } from "../../src/host/remote.js";
import { RecordingRunner } from "../helpers/recording-runner.js";

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

describe("virsh domstate --reason", () => {
  it.each([
    ["running (booted)", { kind: "running" }],
    ["paused (user)", { kind: "running" }],
    ["shut off (shutdown)", { kind: "powered-off" }],
    ["shut off (crashed)", { kind: "crashed", reason: "libvirt says shut off (crashed)" }],
    ["shut off (destroyed)", { kind: "absent" }],
    ["shut off (unknown)", { kind: "absent" }],
    ["crashed (panicked)", { kind: "crashed", reason: "its hypervisor says it crashed" }],
  ])("%s", (text, presence) => {
    expect(presenceOf(`${text}\n`)).toEqual(presence);
  });
});

import { describe, expect, it } from "vitest";
import { hostSpec } from "../../src/core/hosts.js";
import { namespaceName } from "../../src/core/net.js";
import type { Command } from "../../src/host/runner.js";
import { FleetHostLinks, fleetVni, hostLinkNames } from "../../src/net/host-links.js";
import { RecordingRunner } from "../helpers/recording-runner.js";

const owner = { root: "/var/lib/shoal", fleet: "lab" };
const HERE = "10.0.0.1";
const hosts = [
  hostSpec({ name: "h1", uri: "qemu+ssh://root@10.0.0.11/system" }),
  hostSpec({ name: "h2", uri: "qemu+ssh://root@10.0.0.12/system" }),
];

describe("a fleet's VXLAN network identifier", () => {
  it("is the same for the same fleet of the same state directory, another for any other, 24 bits and never 0", () => {
    const vni = fleetVni(owner);
    expect(fleetVni({ ...owner })).toBe(vni);
    expect(fleetVni({ ...owner, fleet: "lab2" })).not.toBe(vni);
    expect(fleetVni({ ...owner, root: "/srv/shoal" })).not.toBe(vni);
    for (const fleet of ["a", "b", "c", "lab", "web-1"]) {
      const each = fleetVni({ ...owner, fleet });
      expect(each).toBeGreaterThan(0);
      expect(each).toBeLessThanOrEqual(0xffffff);
    }
  });
});

describe("the fleet's bridges on its hosts, joined by VXLAN", () => {
  const names = hostLinkNames(owner);
  const namespace = namespaceName(owner);
  /** What a command asks, as the host (over ssh) or this machine runs it. */
  const lineOf = (command: Command) =>
    command.argv[0] === "ssh" ? (command.argv.at(-1) ?? "") : command.argv.join(" ");
  const hostOf = (command: Command) =>
    command.argv[0] === "ssh" ? (command.argv.at(-1 - 1) ?? "") : "here";

  it("makes on each host a bridge and a VXLAN device of the fleet's VNI, flooding by unicast to every other end, and no multicast", async () => {
    const runner = new RecordingRunner((command) => {
      const line = lineOf(command);
      if (line.startsWith("ip -j route get")) return { stdout: `[{"prefsrc":"${HERE}"}]` };
      // Nothing of the fleet's there yet; h1 floods to an end that is no longer the fleet's.
      if (line.includes("link show dev")) return { code: 1 };
      if (line.includes("fdb show") && hostOf(command) === "10.0.0.11") {
        return { stdout: '[{"mac":"00:00:00:00:00:00","dst":"10.0.0.99"}]' };
      }
      return {};
    });
    expect(await new FleetHostLinks(runner, owner, namespace, hosts).ensure()).toEqual([]);
    const inputs = (host: string, tool: string) =>
      runner.commands
        .filter(
          (command) => hostOf(command) === host && lineOf(command).includes(`${tool} -batch -`),
        )
        .map((command) => command.input ?? "");
    const vxlan = `link add ${names.vxlan} type vxlan id ${fleetVni(owner)} dstport 4789`;
    for (const [host, others] of [
      ["10.0.0.11", [HERE, "10.0.0.12"]],
      ["10.0.0.12", [HERE, "10.0.0.11"]],
    ] as const) {
      const [made] = inputs(host, "ip");
      expect(made).toContain(`link add ${names.bridge} type bridge`);
      expect(made).toContain(vxlan);
      expect(made).toContain(`link set ${names.vxlan} master ${names.bridge} up`);
      expect(made).not.toMatch(/group|multicast/);
      const [flood] = inputs(host, "bridge");
      for (const other of others) {
        expect(flood).toContain(`fdb append 00:00:00:00:00:00 dev ${names.vxlan} dst ${other}`);
      }
      expect(flood).not.toContain(`dst ${host}`);
    }
    expect(inputs("10.0.0.11", "bridge")[0]).toContain(
      `fdb del 00:00:00:00:00:00 dev ${names.vxlan} dst 10.0.0.99`,
    );
    // This machine's end: made here, where its underlay is, and moved into the fleet's namespace.
    const here = runner.commands.filter((command) => hostOf(command) === "here").map(lineOf);
    expect(here).toContain(`ip ${vxlan}`);
    expect(here).toContain(`ip link set ${names.vxlan} netns ${namespace}`);
    const [ours] = runner.commands
      .filter((command) => lineOf(command) === `bridge -n ${namespace} -batch -`)
      .map((command) => command.input);
    expect(ours).toBe(
      `fdb append 00:00:00:00:00:00 dev ${names.vxlan} dst 10.0.0.11\nfdb append 00:00:00:00:00:00 dev ${names.vxlan} dst 10.0.0.12\n`,
    );
  });
});

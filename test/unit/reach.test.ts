import { describe, expect, it } from "vitest";
import {
  forwardArgv,
  isAskedName,
  parseCopyEnd,
  parsePortForward,
  remoteCommand,
  scpArgv,
  sshArgv,
} from "../../src/core/reach.js";

const access = {
  knownHosts: "/var/lib/shoal/fleets/lab/known_hosts",
  identity: "/var/lib/shoal/fleets/lab/ssh/id_ed25519",
  namespace: "shoal-lab",
};
const vm1 = { name: "vm-1", ip: "10.77.0.2" };
const batch = { batch: true, connectTimeoutSeconds: 10 };

const OPTIONS = [
  "-F",
  "none",
  "-o",
  "IdentityFile=/var/lib/shoal/fleets/lab/ssh/id_ed25519",
  "-o",
  "IdentitiesOnly=yes",
  "-o",
  "IdentityAgent=none",
  "-o",
  "UserKnownHostsFile=/var/lib/shoal/fleets/lab/known_hosts",
  "-o",
  "GlobalKnownHostsFile=/dev/null",
  "-o",
  "StrictHostKeyChecking=yes",
  "-o",
  "HostKeyAlias=vm-1",
  "-o",
  "CheckHostIP=no",
  "-o",
  "UpdateHostKeys=no",
  "-o",
  "User=root",
  "-o",
  "BatchMode=yes",
  "-o",
  "ConnectTimeout=10",
  "-o",
  "ServerAliveInterval=15",
  "-o",
  "LogLevel=ERROR",
];

describe("reaching a VM over SSH", () => {
  it("runs ssh in the fleet's namespace, checking the VM's key by its name, with the fleet's key only", () => {
    expect(sshArgv(access, vm1, ["uptime"], batch)).toEqual([
      "ip",
      "netns",
      "exec",
      "shoal-lab",
      "ssh",
      ...OPTIONS,
      "--",
      "10.77.0.2",
      "uptime",
    ]);
  });

  it("without a namespace (a host bridge) runs ssh as it is; no command is a login", () => {
    const argv = sshArgv({ ...access, namespace: undefined }, vm1, [], {
      batch: false,
      connectTimeoutSeconds: 10,
    });
    expect(argv.slice(0, 2)).toEqual(["ssh", "-F"]);
    expect(argv).toContain("BatchMode=no");
    expect(argv.slice(-2)).toEqual(["--", "10.77.0.2"]);
  });

  it("passes one argument as a command line and quotes several as words", () => {
    expect(remoteCommand(["ps ax | grep agent"])).toBe("ps ax | grep agent");
    expect(remoteCommand(["echo", "a b", "$HOME"])).toBe("echo 'a b' \\$HOME");
    expect(remoteCommand([])).toBeUndefined();
  });

  it("copies with scp's original protocol, recursively, keeping modes and times", () => {
    const there = { target: vm1, path: "/opt/app" };
    expect(scpArgv(access, "dist", there, batch)).toEqual([
      "ip",
      "netns",
      "exec",
      "shoal-lab",
      "scp",
      "-O",
      "-r",
      "-p",
      ...OPTIONS,
      "--",
      "dist",
      "10.77.0.2:/opt/app",
    ]);
    // A local name with a colon is not a host.
    expect(scpArgv(access, there, "a:b", batch).slice(-2)).toEqual(["10.77.0.2:/opt/app", "./a:b"]);
    expect(() => scpArgv(access, "a", "b", batch)).toThrow(/^internal/);
  });

  it("refuses values that validation should have stopped", () => {
    expect(() => sshArgv(access, { name: "vm 1", ip: "10.77.0.2" }, [], batch)).toThrow(
      /^internal: VM name/,
    );
    expect(() =>
      sshArgv(access, { name: "vm-1", ip: "10.77.0.2 -oProxyCommand=x" }, [], batch),
    ).toThrow(/^internal: IPv4/);
    expect(() => sshArgv({ ...access, namespace: "other" }, vm1, [], batch)).toThrow(
      /^internal: namespace/,
    );
  });
});

describe("the two ends of shoal cp", () => {
  it("reads VM:/path (a name or a pattern) as a VM's path and the rest as local", () => {
    expect(parseCopyEnd("vm-1:/etc/hostname")).toEqual({
      kind: "vm",
      pattern: "vm-1",
      path: "/etc/hostname",
    });
    expect(parseCopyEnd("*:/tmp/")).toEqual({ kind: "vm", pattern: "*", path: "/tmp/" });
    expect(parseCopyEnd("vm-1:")).toEqual({ kind: "vm", pattern: "vm-1", path: "." });
    expect(parseCopyEnd("./a:b")).toEqual({ kind: "local", path: "./a:b" });
    expect(parseCopyEnd("/tmp/x")).toEqual({ kind: "local", path: "/tmp/x" });
    expect(parseCopyEnd(":x")).toEqual({ kind: "local", path: ":x" });
  });
});

describe("port forwards", () => {
  it("read HOSTPORT:VMPORT or one port for both, and nothing else", () => {
    expect(parsePortForward("8080:80")).toEqual({ hostPort: 8080, vmPort: 80 });
    expect(parsePortForward("443")).toEqual({ hostPort: 443, vmPort: 443 });
    for (const bad of ["0", "65536", "80:", ":80", "a:80", "1.2.3.4:80:80", "80 "]) {
      expect(parsePortForward(bad)).toBeUndefined();
    }
  });

  it("listen on this host's loopback only and reach a fleet's namespace through a proxy command", () => {
    const argv = forwardArgv(access, vm1, [{ hostPort: 8080, vmPort: 80 }], batch);
    expect(argv[0]).toBe("ssh");
    expect(argv).toContain("ProxyCommand=ip netns exec shoal-lab busybox nc %h %p");
    expect(argv.slice(-6)).toEqual([
      "ExitOnForwardFailure=yes",
      "-N",
      "-L",
      "127.0.0.1:8080:127.0.0.1:80",
      "--",
      "10.77.0.2",
    ]);
    const direct = forwardArgv(
      { ...access, namespace: undefined },
      vm1,
      [{ hostPort: 1, vmPort: 2 }],
      batch,
    );
    expect(direct.some((word) => word.startsWith("ProxyCommand="))).toBe(false);
    expect(() => forwardArgv(access, vm1, [], batch)).toThrow(/^internal/);
  });
});

describe("the names a VM may send back", () => {
  it("are the last part of the requested path, or what it matches as a pattern", () => {
    expect(isAskedName("/var/log/app.log", "app.log")).toBe(true);
    expect(isAskedName("/var/log/app.log", ".bashrc")).toBe(false);
    expect(isAskedName("/etc/", "etc")).toBe(true);
    expect(isAskedName("/var/log/*.log", ".hidden.log")).toBe(true);
    expect(isAskedName("/var/log/*.log", "app.txt")).toBe(false);
    expect(isAskedName("/srv/{a,b}", "b")).toBe(true);
    expect(isAskedName("/srv/{a,b}", "c")).toBe(false);
    expect(isAskedName("/srv/!x", "!x")).toBe(true);
    expect(isAskedName("/srv/!x", "y")).toBe(false);
    expect(isAskedName("/srv/file[12]", "file2")).toBe(true);
  });
});

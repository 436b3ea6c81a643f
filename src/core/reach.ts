import { posix } from "node:path";
import picomatch from "picomatch";
import shellQuote from "shell-quote";
import { parseIpv4 } from "./ipv4.js";
import { isDnsLabel } from "./names.js";
import { inNamespace } from "./net.js";
import { assertRenderable, isSafePath } from "./syntax.js";

/**
 * How shoal reaches a VM: OpenSSH's ssh and scp, run inside the fleet's network namespace (the
 * host's own routing never sees the fleet), logging in as root with the fleet's key and accepting
 * only the host key shoal made for that VM.
 */

export interface SshAccess {
  /** The fleet's known_hosts, which lists each VM by name. */
  readonly knownHosts: string;
  /** The fleet's private key. */
  readonly identity: string;
  /** Where the fleet's network is, when it has its own namespace. */
  readonly namespace: string | undefined;
}

export interface SshTarget {
  readonly name: string;
  readonly ip: string;
}

export interface SshOptions {
  /** Never ask anything (exec, cp, wait); an interactive `shoal ssh` may ask for a passphrase. */
  readonly batch: boolean;
  readonly connectTimeoutSeconds: number;
}

function checkAccess(access: SshAccess, target: SshTarget): void {
  assertRenderable("VM name", target.name, isDnsLabel(target.name));
  assertRenderable("IPv4 address", target.ip, parseIpv4(target.ip) !== undefined);
  assertRenderable("known_hosts path", access.knownHosts, isSafePath(access.knownHosts));
  assertRenderable("key path", access.identity, isSafePath(access.identity));
}

/**
 * The options ssh and scp share. The user's ~/.ssh/config is left out (-F none) so that nothing in
 * it weakens the checks; the host key is looked up by the VM's name (HostKeyAlias), so an address
 * reused by another fleet or VM can never match an old entry.
 */
function commonOptions(access: SshAccess, target: SshTarget, options: SshOptions): string[] {
  checkAccess(access, target);
  const settings = {
    IdentityFile: access.identity,
    IdentitiesOnly: "yes",
    IdentityAgent: "none",
    UserKnownHostsFile: access.knownHosts,
    GlobalKnownHostsFile: "/dev/null",
    StrictHostKeyChecking: "yes",
    HostKeyAlias: target.name,
    CheckHostIP: "no",
    UpdateHostKeys: "no",
    User: "root",
    BatchMode: options.batch ? "yes" : "no",
    ConnectTimeout: String(options.connectTimeoutSeconds),
    ServerAliveInterval: "15",
    LogLevel: "ERROR",
  };
  return [
    "-F",
    "none",
    ...Object.entries(settings).flatMap(([key, value]) => ["-o", `${key}=${value}`]),
  ];
}

/**
 * What the VM's shell runs: one argument is a command line as the user typed it (`'ps | grep x'`);
 * several are words, quoted so the VM sees exactly these words.
 */
export function remoteCommand(words: readonly string[]): string | undefined {
  if (words.length === 0) return undefined;
  if (words.length === 1) return words[0];
  return shellQuote.quote([...words]);
}

export function sshArgv(
  access: SshAccess,
  target: SshTarget,
  command: readonly string[],
  options: SshOptions & { readonly tty?: boolean },
): [string, ...string[]] {
  const line = remoteCommand(command);
  return inNamespace(access.namespace, [
    "ssh",
    ...commonOptions(access, target, options),
    ...(options.tty ? ["-t"] : []),
    "--",
    target.ip,
    ...(line === undefined ? [] : [line]),
  ]);
}

/** A path on a VM as scp names it. */
export interface RemotePath {
  readonly target: SshTarget;
  readonly path: string;
}

/** The VM's end of a copy; one end must be a VM's. */
export function remoteEnd(from: string | RemotePath, to: string | RemotePath): RemotePath {
  const remote = typeof from === "string" ? to : from;
  if (typeof remote === "string") throw new Error("internal: a copy between two local paths");
  return remote;
}

/**
 * scp in its original protocol (-O): the VM needs only an scp program, not an SFTP server, which
 * the tiny image's dropbear lacks. Directories are copied whole (-r); times and modes are kept (-p).
 */
export function scpArgv(
  access: SshAccess,
  from: string | RemotePath,
  to: string | RemotePath,
  options: SshOptions,
): [string, ...string[]] {
  const remote = remoteEnd(from, to);
  const spell = (end: string | RemotePath) => {
    if (typeof end === "string") {
      assertRenderable("local path", end, end !== "" && !end.includes("\n"));
      // A local name with a colon would be read as HOST:PATH.
      return end.includes(":") && !end.startsWith("/") ? `./${end}` : end;
    }
    assertRenderable("remote path", end.path, end.path !== "" && !end.path.includes("\n"));
    return `${end.target.ip}:${end.path}`;
  };
  return inNamespace(access.namespace, [
    "scp",
    "-O",
    "-r",
    "-p",
    ...commonOptions(access, remote.target, options),
    "--",
    spell(from),
    spell(to),
  ]);
}

/**
 * Whether a name a VM sent at the top of a copy is one the user asked for: the last part of the
 * requested path, or a name it matches as a pattern (`*.log`, `{a,b}`; leading dots too). scp
 * makes this check itself only without -r, and shoal always copies with -r: without it a guest
 * asked for `app.log` could send `.bashrc` into the user's home directory.
 */
export function isAskedName(remotePath: string, name: string): boolean {
  const asked = posix.basename(remotePath);
  return (
    name === asked || picomatch.isMatch(name, asked, { dot: true, nonegate: true, noextglob: true })
  );
}

/** One side of `shoal cp`: `VM:/path` (VM a name or pattern) or a local path, as scp reads them. */
export type CopyEnd =
  | { readonly kind: "local"; readonly path: string }
  | { readonly kind: "vm"; readonly pattern: string; readonly path: string };

/** A colon before the first slash makes a VM path, as with scp; `./a:b` stays local. */
export function parseCopyEnd(text: string): CopyEnd {
  const colon = text.indexOf(":");
  const slash = text.indexOf("/");
  if (colon > 0 && (slash === -1 || colon < slash)) {
    const path = text.slice(colon + 1);
    return { kind: "vm", pattern: text.slice(0, colon), path: path === "" ? "." : path };
  }
  return { kind: "local", path: text };
}

/** One port forward: a TCP port on this host's loopback to a port on the VM. */
export interface PortForward {
  readonly hostPort: number;
  readonly vmPort: number;
}

function isPort(port: number): boolean {
  return Number.isInteger(port) && port >= 1 && port <= 65_535;
}

/** `8080:80` (this host's port, the VM's) or `80` (the same on both); undefined if neither. */
export function parsePortForward(text: string): PortForward | undefined {
  const match = /^(?:(\d{1,5}):)?(\d{1,5})$/.exec(text);
  if (!match?.[2]) return undefined;
  const vmPort = Number(match[2]);
  const hostPort = match[1] === undefined ? vmPort : Number(match[1]);
  return isPort(hostPort) && isPort(vmPort) ? { hostPort, vmPort } : undefined;
}

/**
 * ssh forwarding ports on this host's loopback to a VM, until stopped. ssh runs in the host's
 * namespace (its listening sockets must be there) and reaches a fleet's own network through a
 * ProxyCommand that opens the connection inside the fleet's namespace.
 */
export function forwardArgv(
  access: SshAccess,
  target: SshTarget,
  forwards: readonly PortForward[],
  options: SshOptions,
): [string, ...string[]] {
  if (forwards.length === 0) throw new Error("internal: nothing to forward");
  for (const { hostPort, vmPort } of forwards) {
    assertRenderable("port", `${hostPort}:${vmPort}`, isPort(hostPort) && isPort(vmPort));
  }
  const proxy =
    access.namespace === undefined
      ? []
      : // ssh hands this line to a shell; every part of it is a validated name or ssh's own %h %p.
        [
          "-o",
          `ProxyCommand=${inNamespace(access.namespace, ["busybox", "nc", "%h", "%p"]).join(" ")}`,
        ];
  return [
    "ssh",
    ...commonOptions(access, target, options),
    ...proxy,
    "-o",
    "ExitOnForwardFailure=yes",
    "-N",
    ...forwards.flatMap(({ hostPort, vmPort }) => [
      "-L",
      `127.0.0.1:${hostPort}:127.0.0.1:${vmPort}`,
    ]),
    "--",
    target.ip,
  ];
}

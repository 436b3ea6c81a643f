import { quoted } from "./excerpt.js";
import { parseIpv4 } from "./ipv4.js";

/**
 * The hosts of a fleet spread over several machines (backend libvirt): each a libvirt daemon reached
 * by its connection URI. Pure: parsing and checking what the fleet file says of them.
 */

/**
 * The libvirt drivers shoal renders domains for. Not libvirt's Xen driver (xen://) yet: its
 * domains are Xen's PV machines, which backend xl makes.
 */
export type LibvirtDriver = "qemu";

/** libvirt's remote transports (libvirt.org/uri.html); none means the local daemon. */
const TRANSPORTS = ["ssh", "libssh", "libssh2", "tcp", "tls", "unix", "ext"] as const;

export interface LibvirtUri {
  readonly driver: LibvirtDriver;
  /** The host part, for a remote daemon; undefined for this machine's own. */
  readonly hostname?: string;
}

/** libvirt's URIs go to virsh as one argument: no spaces or control characters, a sane length. */
const URI_MAX = 1024;

export function parseLibvirtUri(
  text: string,
): { ok: true; uri: LibvirtUri } | { ok: false; message: string } {
  const fail = (why: string) => ({ ok: false as const, message: `${quoted(text)} ${why}` });
  if (text.length > URI_MAX || /[\s\p{Cc}]/u.test(text))
    return fail(`is not a libvirt URI: no spaces or control characters, at most ${URI_MAX} bytes`);
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return fail("is not a libvirt URI like qemu+ssh://root@host/system");
  }
  const [driver, transport, ...rest] = url.protocol.slice(0, -1).split("+");
  if (driver === "xen")
    return fail(
      "names libvirt's Xen driver, for which shoal renders no domains yet; use backend xl on Xen hosts",
    );
  if (driver !== "qemu") return fail("names a libvirt driver shoal has no domains for; use qemu");
  if (rest.length > 0 || (transport !== undefined && !isTransport(transport)))
    return fail(`names no libvirt transport; use one of ${TRANSPORTS.join(", ")}`);
  // The QEMU driver's /session daemon runs as a user and cannot put VMs on a host's bridge.
  if (url.pathname !== "/system")
    return fail(`is not a system connection; its path must be /system (${driver}:///system)`);
  const hostname = url.hostname.replace(/^\[|\]$/g, "");
  if (transport !== undefined && transport !== "unix" && hostname === "")
    return fail(`names no host, which ${transport} connections need`);
  return { ok: true, uri: { driver, ...(hostname === "" ? {} : { hostname }) } };
}

function isTransport(text: string): text is (typeof TRANSPORTS)[number] {
  return (TRANSPORTS as readonly string[]).includes(text);
}

export interface HostCapacity {
  readonly vms?: number;
  readonly memoryMiB?: number;
}

export interface HostSpec {
  readonly name: string;
  readonly uri: string;
  readonly driver: LibvirtDriver;
  /**
   * Where the other hosts reach this one for the fleet's network (its VXLAN endpoint): `address:`,
   * else the URI's host when that is an IPv4 address; else looked up when the network is made.
   */
  readonly address?: string;
  /** The URI's host part, looked up for `address` when that is not given. */
  readonly hostname?: string;
  readonly capacity: HostCapacity;
}

/** A host from what the fleet file (or the record) says of it; its URI was checked there. */
export function hostSpec(entry: {
  readonly name: string;
  readonly uri: string;
  readonly address?: string | undefined;
  readonly capacity?: HostCapacity;
}): HostSpec {
  const parsed = parseLibvirtUri(entry.uri);
  if (!parsed.ok) throw new Error(`internal: host ${entry.name}'s URI was not checked`);
  const { hostname, driver } = parsed.uri;
  // The underlay address: as given, or the URI's host if that is an address.
  const address =
    entry.address ??
    (hostname !== undefined && parseIpv4(hostname) !== undefined ? hostname : undefined);
  return {
    name: entry.name,
    uri: entry.uri,
    driver,
    ...(address === undefined ? {} : { address }),
    ...(hostname === undefined ? {} : { hostname }),
    capacity: entry.capacity ?? {},
  };
}

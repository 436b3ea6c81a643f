import { join, resolve } from "node:path";
import { isDnsLabel } from "../core/names.js";
import { isSafePath, SAFE_PATH_RULE, UNIX_SOCKET_PATH_MAX } from "../core/syntax.js";
import { ShoalError, UserError } from "../errors.js";

/**
 * The state directory, defined here and nowhere else (the README shows the same tree):
 *
 *   STATE/
 *     images/
 *       lock                   the image store's lock
 *       by-name/NAME -> ../ID  image names
 *       ID/                    one sealed image, ID = sha256 of base.img
 *         base.img             the read-only base (0444)
 *         vmlinuz initrd.img   its kernel, and shoal's initramfs for it (or the image's own)
 *         image.json           name, id, size, kernel version, source, creation time, sealing
 *       .staging-*             an image being made; removed when that fails or is killed
 *     host/accel.json          whether KVM works on this host, probed once per host boot
 *     host/xl-bases/ID/        backend xl: the base's one read-only loop device on this host
 *       loop.json              which loop device it is (checked against the kernel before use)
 *       users/UUID             one empty file per domain that boots from it
 *       use.lock attach.lock   flock(2) locks: shared while domains are made, exclusive to release
 *     fleets/FLEET/
 *       lock                   flock(2) lock; holds the pid and command of its holder
 *       state.json             what shoal created, with the spec each VM was made from
 *       known_hosts            every VM's SSH host key
 *       ssh/id_ed25519         the key shoal logs in to the VMs with (0600), in every VM's authorized_keys
 *       net/                   the fleet network's dnsmasq: config, reservations, leases, pid, log
 *       vms/VM/                QEMU: root:shoal-qemu 0710 (and vms/), which QEMU may only enter
 *         layer.img            the VM's private writable layer (disk layers; QEMU: root:shoal-qemu 0660)
 *         identity.tar         its identity seed: hostname, machine-id, host key (0600; QEMU: 0640)
 *         vm.xl.cfg | vm.qemu  the hypervisor definition shoal rendered for the last start
 *         vif-hotplug          xl: the script that puts the VM's vif on the fleet's bridge
 *         block-hotplug        xl: the script that attaches the VM's disks (xen-block-hotplug)
 *         serial.log           the serial console, kept on the host (xl: xenconsoled writes it
 *                              through a link in its log directory; QEMU: root:shoal-qemu 0620)
 *         qemu.pid             written by QEMU (root:shoal-qemu 0620)
 *         qemu.log             QEMU's own messages (0600, opened by shoal)
 *         sockets/             QEMU's: console.sock, qmp.sock (root:shoal-qemu 0770)
 *         ssh/                 the VM's host key (0700, the private key 0600)
 */

export const DEFAULT_STATE_DIR = "/var/lib/shoal";

export interface VmPaths {
  readonly dir: string;
  readonly layer: string;
  readonly seed: string;
  readonly xlConfig: string;
  readonly vifHotplug: string;
  readonly blockHotplug: string;
  readonly qemuArgv: string;
  readonly serialLog: string;
  /** The one directory QEMU may write to: it makes its sockets there. */
  readonly socketDir: string;
  readonly consoleSocket: string;
  readonly qmpSocket: string;
  readonly pidFile: string;
  readonly qemuLog: string;
  readonly hostKeys: string;
}

export interface NetworkPaths {
  readonly dir: string;
  readonly conf: string;
  readonly dhcpHosts: string;
  readonly dnsHosts: string;
  readonly leases: string;
  readonly pid: string;
  readonly log: string;
  /** What the fleet's impairments last made of each device (net/impairments.ts). */
  readonly impairments: string;
  /** The same for the devices on one of the fleet's hosts (libvirt). */
  readonly impairmentsOn: (host: string) => string;
}

export interface FleetPaths {
  readonly dir: string;
  readonly lock: string;
  readonly state: string;
  readonly knownHosts: string;
  /** The fleet's client key's directory (0700). */
  readonly clientKeys: string;
  readonly net: NetworkPaths;
  readonly vms: string;
  vm(name: string): VmPaths;
}

export interface ImagePaths {
  readonly dir: string;
  readonly base: string;
  readonly kernel: string;
  readonly initrd: string;
  readonly meta: string;
}

/** backend xl's hold on one base (see backends/xl/base-loops.ts). */
export interface XlBasePaths {
  readonly dir: string;
  readonly record: string;
  readonly users: string;
  readonly useLock: string;
  readonly attachLock: string;
}

export interface StateLayout {
  readonly root: string;
  readonly images: string;
  readonly imageLock: string;
  readonly imageNames: string;
  readonly accelCache: string;
  readonly xlBases: string;
  xlBase(id: string): XlBasePaths;
  readonly fleets: string;
  image(id: string): ImagePaths;
  fleet(name: string): FleetPaths;
}

export const IMAGE_ID = /^[0-9a-f]{64}$/;

/**
 * Fleet and VM names and image ids also come back from records, links and layers, which someone
 * may have edited: one that is not what shoal would have written never becomes a path.
 */
function component(what: string, value: string, valid: boolean): string {
  if (!valid) {
    throw new ShoalError(
      `the state directory names ${what} ${JSON.stringify(value.slice(0, 80))}, which shoal never writes`,
      { hint: "a record, link or layer was edited or damaged: look at it, it is not used" },
    );
  }
  return value;
}

/** Checks the state directory's path and lays out every path under it (see trust.ts for its owner). */
export function stateLayout(stateDir: string): StateLayout {
  const root = resolve(stateDir);
  if (!isSafePath(root)) {
    throw new UserError(
      `state directory ${JSON.stringify(stateDir)} is not usable`,
      `it must be ${SAFE_PATH_RULE}`,
    );
  }
  const fleets = join(root, "fleets");
  const images = join(root, "images");
  return {
    root,
    images,
    imageLock: join(images, "lock"),
    imageNames: join(images, "by-name"),
    accelCache: join(root, "host", "accel.json"),
    xlBases: join(root, "host", "xl-bases"),
    xlBase(id) {
      const dir = join(root, "host", "xl-bases", component("an image id", id, IMAGE_ID.test(id)));
      return {
        dir,
        record: join(dir, "loop.json"),
        users: join(dir, "users"),
        useLock: join(dir, "use.lock"),
        attachLock: join(dir, "attach.lock"),
      };
    },
    fleets,
    image(id) {
      const dir = join(images, component("an image id", id, IMAGE_ID.test(id)));
      return {
        dir,
        base: join(dir, "base.img"),
        kernel: join(dir, "vmlinuz"),
        initrd: join(dir, "initrd.img"),
        meta: join(dir, "image.json"),
      };
    },
    fleet(name) {
      const dir = join(fleets, component("a fleet", name, isDnsLabel(name)));
      const vms = join(dir, "vms");
      return {
        dir,
        lock: join(dir, "lock"),
        state: join(dir, "state.json"),
        knownHosts: join(dir, "known_hosts"),
        clientKeys: join(dir, "ssh"),
        net: {
          dir: join(dir, "net"),
          conf: join(dir, "net", "dnsmasq.conf"),
          dhcpHosts: join(dir, "net", "dhcp-hosts"),
          dnsHosts: join(dir, "net", "dns-hosts"),
          leases: join(dir, "net", "leases"),
          pid: join(dir, "net", "dnsmasq.pid"),
          log: join(dir, "net", "dnsmasq.log"),
          impairments: join(dir, "net", "impairments.json"),
          impairmentsOn: (host) =>
            join(dir, "net", `impairments-on-${component("a host", host, isDnsLabel(host))}.json`),
        },
        vms,
        vm(vmName) {
          const vmDir = join(vms, component("a VM", vmName, isDnsLabel(vmName)));
          const socketDir = join(vmDir, "sockets");
          return {
            dir: vmDir,
            layer: join(vmDir, "layer.img"),
            seed: join(vmDir, "identity.tar"),
            xlConfig: join(vmDir, "vm.xl.cfg"),
            vifHotplug: join(vmDir, "vif-hotplug"),
            blockHotplug: join(vmDir, "block-hotplug"),
            qemuArgv: join(vmDir, "vm.qemu"),
            serialLog: join(vmDir, "serial.log"),
            socketDir,
            consoleSocket: join(socketDir, "console.sock"),
            qmpSocket: join(socketDir, "qmp.sock"),
            pidFile: join(vmDir, "qemu.pid"),
            qemuLog: join(vmDir, "qemu.log"),
            hostKeys: join(vmDir, "ssh"),
          };
        },
      };
    },
  };
}

/** Unix socket paths are limited to 107 bytes; long state directories and names can pass that. */
export function checkSocketPaths(layout: StateLayout, fleet: string, vms: readonly string[]): void {
  for (const vm of vms) {
    const paths = layout.fleet(fleet).vm(vm);
    const longest = [paths.consoleSocket, paths.qmpSocket].find(
      (path) => Buffer.byteLength(path) > UNIX_SOCKET_PATH_MAX,
    );
    if (longest) {
      throw new UserError(
        `VM ${vm}'s socket path ${longest} is ${Buffer.byteLength(longest)} bytes; Unix sockets take at most ${UNIX_SOCKET_PATH_MAX}`,
        "use a shorter --state-dir, fleet name or VM name",
      );
    }
  }
}

import type { HostSpec } from "../../core/hosts.js";
import type { Backend, BackendDeps, BackendKind } from "../backend.js";
import { LibvirtBackend } from "./backend.js";
import { checkLibvirtHost } from "./doctor.js";
import { LIBVIRT_GUEST_DEVICES } from "./render.js";

function create(deps: BackendDeps): Backend {
  return new LibvirtBackend({
    runner: deps.runner,
    layout: deps.layout,
    hosts: new Map((deps.hosts ?? []).map((host): [string, HostSpec] => [host.name, host])),
    accel: deps.accel,
    notice: deps.notice,
    ...(deps.tcgCacheMiB === undefined ? {} : { tcgCacheMiB: deps.tcgCacheMiB }),
  });
}

export const libvirtKind: BackendKind = {
  name: "libvirt",
  guestDevices: LIBVIRT_GUEST_DEVICES,
  // The qemu backend's devices: its guest modules (listed there) serve these guests too.
  guestModules: { block: [], net: [], memory: [], entropy: [], dax: [] },
  macPrefix: "52:54:00",
  tools: [
    {
      name: "virsh",
      versionArgv: ["virsh", "--version"],
      debianPackage: "libvirt-clients",
      neededFor: "driving libvirt hosts",
    },
  ],
  checkHost: async ({ runner, layout, fleet }) => {
    const hosts = fleet?.hosts?.list ?? [];
    const results = await Promise.all(
      hosts.map((host) => checkLibvirtHost(runner, host, layout.root)),
    );
    return results.flat();
  },
  create,
};

import type { BackendKind } from "../backend.js";
import { XlBackend } from "./backend.js";
import { checkXenHost } from "./doctor.js";
import { XL_GUEST_DEVICES } from "./render.js";
import { xenNeeds } from "./xen.js";

export const xlKind: BackendKind = {
  name: "xl",
  guestDevices: XL_GUEST_DEVICES,
  // Xen's own balloon driver is built into Debian's kernel; a PV domU has no persistent-memory
  // device to map the base with, so it reads the base as a disk.
  guestModules: {
    block: ["xen_blkfront"],
    net: ["xen_netfront"],
    memory: [],
    entropy: [],
    dax: [],
  },
  // Xen's own OUI, which xl gives domUs.
  macPrefix: "00:16:3e",
  tools: [
    {
      // xl's version comes from the hypervisor (`xl info`), checked with the dom0.
      name: "xl",
      versionArgv: ["xl", "help"],
      versionless: true,
      debianPackage: "xen-utils-4.17",
      neededFor: "running Xen domUs",
    },
    {
      name: "xz",
      versionArgv: ["xz", "--version"],
      debianPackage: "xz-utils",
      neededFor: "unpacking each image's kernel once, instead of Xen unpacking it for every domU",
      optional: true,
    },
    {
      name: "xenstore-read",
      versionArgv: ["xenstore-read", "--help"],
      versionless: true,
      debianPackage: "xenstore-utils",
      neededFor: "putting domUs on the fleet's bridge, reaching their consoles",
    },
  ],
  // The whole fleet, as if none of it ran yet, on one base.
  checkHost: ({ runner, fleet }) => checkXenHost(runner, fleet && xenNeeds(fleet.vms, 1)),
  create: (deps) => new XlBackend(deps.runner, deps.layout),
};

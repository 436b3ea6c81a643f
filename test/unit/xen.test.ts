import { describe, expect, it } from "vitest";
import { isBaseLoop, loopsUnder, majMinOf } from "../../src/backends/xl/base-loops.js";
import { consoleLogDir } from "../../src/backends/xl/host.js";
import {
  consoleLogOwnership,
  domainOwnership,
  domainUuid,
  guestConsoleLog,
  isDeviceSetupTimeout,
  loopDeviceLimit,
  parseDom0,
  parseXlDiskPaths,
  parseXlList,
  parseXlListIdentity,
  parseXlListUuids,
  parseXlUptimeSeconds,
  xenconsoledGuestLogDir,
  xenNeeds,
  xenShortfall,
} from "../../src/backends/xl/xen.js";
import { fleetOf } from "../helpers/fleet.js";

const listing = (state: string) =>
  [
    "Name                                        ID   Mem VCPUs\tState\tTime(s)",
    `lab.vm-1                                     3   128     1     ${state}       1.9`,
    "",
  ].join("\n");

describe("xl list", () => {
  it("reads running and blocked domains as running", () => {
    for (const state of ["r-----", "-b----", "------"]) {
      expect(parseXlList(listing(state), "lab.vm-1")).toEqual({ kind: "running" });
    }
  });

  it("takes a paused domain for a start cut short: not running", () => {
    expect(parseXlList(listing("--p---"), "lab.vm-1")).toEqual({
      kind: "crashed",
      reason: "it is paused (a start cut short?)",
    });
  });

  it("tells a powered-off domain from a crashed one by the shutdown reason", () => {
    expect(parseXlList(listing("--ps--"), "lab.vm-1")).toEqual({ kind: "shut-down" });
    expect(parseXlList(listing("---sc-"), "lab.vm-1")).toEqual({
      kind: "crashed",
      reason: "Xen reports a crash",
    });
    expect(parseXlList(listing("---sw-"), "lab.vm-1")).toEqual({
      kind: "crashed",
      reason: "the watchdog fired",
    });
    // xl's monitor restarts a rebooting domain at once.
    expect(parseXlList(listing("---sr-"), "lab.vm-1")).toEqual({ kind: "running" });
  });

  it("sees a dying domain", () => {
    expect(parseXlList(listing("-b---d"), "lab.vm-1")).toEqual({ kind: "dying" });
  });

  it("finds only the domain asked for", () => {
    expect(parseXlList(listing("-b----"), "lab.vm-10")).toBeUndefined();
    expect(parseXlList(listing("-b----"), "lab.vm")).toBeUndefined();
  });
});

describe("xl uptime", () => {
  const uptime = (value: string) =>
    `Name                                ID Uptime\nlab.vm-1   3 ${value}\n`;

  it("reads hours, minutes and seconds, and days", () => {
    expect(parseXlUptimeSeconds(uptime(" 0:01:05"), "lab.vm-1")).toBe(65);
    expect(parseXlUptimeSeconds(uptime("1 day,  2:00:00"), "lab.vm-1")).toBe(93_600);
    expect(parseXlUptimeSeconds(uptime("3 days, 0:00:01"), "lab.vm-1")).toBe(259_201);
  });

  it("has no answer for another domain", () => {
    expect(parseXlUptimeSeconds(uptime(" 0:01:05"), "lab.vm-2")).toBeUndefined();
  });
});

describe("xl create's failures", () => {
  it("tells dom0's slowness (libxl's fixed device timeouts) from other failures", () => {
    expect(
      isDeviceSetupTimeout(
        "libxl: error: libxl_create.c:1672:domcreate_launch_dm: Domain 6:unable to add disk devices",
      ),
    ).toBe(true);
    expect(
      isDeviceSetupTimeout(
        "libxl: error: libxl_create.c:1898:domcreate_attach_devices: Domain 4:unable to add vif devices",
      ),
    ).toBe(true);
    expect(
      isDeviceSetupTimeout(
        "libxl: error: libxl_aoutils.c:539:hotplug_timeout: killing execution of /etc/xen/scripts/block add because of timeout",
      ),
    ).toBe(true);
    expect(isDeviceSetupTimeout("libxl: error: failed to get free memory")).toBe(false);
    expect(isDeviceSetupTimeout("")).toBe(false);
  });
});

describe("xenconsoled's guest logs", () => {
  it("are written with --log=guest or all, to the default directory or --log-dir", () => {
    expect(xenconsoledGuestLogDir(["/usr/sbin/xenconsoled", "--log=guest"])).toBe(
      "/var/log/xen/console",
    );
    expect(
      xenconsoledGuestLogDir([
        "xenconsoled",
        "--pid-file=/run/x.pid",
        "--log",
        "all",
        "--log-dir=/srv/c",
      ]),
    ).toBe("/srv/c");
    expect(xenconsoledGuestLogDir(["xenconsoled", "--log=all", "--log-dir", "/srv/d"])).toBe(
      "/srv/d",
    );
  });

  it("are not written without --log, or with hv only", () => {
    expect(
      xenconsoledGuestLogDir(["/usr/sbin/xenconsoled", "--pid-file=/run/x.pid"]),
    ).toBeUndefined();
    expect(xenconsoledGuestLogDir(["xenconsoled", "--log=hv"])).toBeUndefined();
  });

  it("are named after the domain", () => {
    expect(guestConsoleLog("/var/log/xen/console/", "lab.vm-1")).toBe(
      "/var/log/xen/console/guest-lab.vm-1.log",
    );
  });
});

describe("whose a domain is", () => {
  const lab = { root: "/var/lib/shoal", fleet: "lab" };

  it("gives each VM of each state directory a UUID of its own (RFC 9562 version 8)", () => {
    const uuid = domainUuid(lab, "vm-1");
    expect(uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(domainUuid({ ...lab }, "vm-1")).toBe(uuid);
    expect(domainUuid({ ...lab, root: "/tmp/suite" }, "vm-1")).not.toBe(uuid);
    expect(domainUuid(lab, "vm-2")).not.toBe(uuid);
    expect(() => domainUuid(lab, "../x")).toThrow(/^internal: VM name/);
  });

  it("reads a domain's id and UUID from `xl list -v`", () => {
    const text = [
      "Name                                        ID   Mem VCPUs\tState\tTime(s)   UUID                            Reason-Code\tSecurity Label",
      "Domain-0                                     0  1024     2     r-----      20.1 00000000-0000-0000-0000-000000000000        -                -",
      "lab.vm-1                                    12   128     1     -b----       2.0 0b1ce0a2-7d1c-8e1f-9a3b-0c1d2e3f4a5b        -                -",
      "",
    ].join("\n");
    expect(parseXlListIdentity(text, "lab.vm-1")).toEqual({
      domid: 12,
      uuid: "0b1ce0a2-7d1c-8e1f-9a3b-0c1d2e3f4a5b",
    });
    expect(parseXlListIdentity(text, "lab.vm-2")).toBeUndefined();
    expect(parseXlListIdentity(text, "Name")).toBeUndefined();
  });

  it("reads the disks of `xl list -l`, and nothing from SXP or a domain without configuration", () => {
    const json = JSON.stringify([
      { domid: 3, config: { disks: [{ pdev_path: "/a/base.img" }, { vdev: "xvdz" }] } },
    ]);
    expect(parseXlDiskPaths(json)).toEqual(["/a/base.img"]);
    expect(parseXlDiskPaths("[]\n")).toBeUndefined();
    expect(parseXlDiskPaths("(domain (domid 3))")).toBeUndefined();
  });

  it("tells an earlier shoal's domain of the VM, another state directory's and another program's by their disks", () => {
    const seed = "/var/lib/shoal/fleets/lab/vms/vm-1/identity.tar";
    expect(domainOwnership(["/var/lib/shoal/images/x/base.img", seed], seed)).toEqual({
      kind: "ours",
    });
    expect(
      domainOwnership(
        ["/var/lib/shoal/images/x/base.img", "/tmp/suite/fleets/lab/vms/vm-1/identity.tar"],
        seed,
      ),
    ).toEqual({ kind: "other", root: "/tmp/suite", fleet: "lab" });
    expect(domainOwnership(["/srv/vm.img"], seed)).toEqual({ kind: "unmarked" });
    expect(domainOwnership(["/x\u001b[2J/fleets/lab/vms/vm-1/identity.tar"], seed)).toEqual({
      kind: "unmarked",
    });
  });

  it("takes only shoal's link to the VM's serial.log as its console log", () => {
    const serial = "/var/lib/shoal/fleets/lab/vms/vm-1/serial.log";
    expect(consoleLogOwnership(serial, serial)).toEqual({ kind: "ours" });
    expect(consoleLogOwnership("/tmp/suite/fleets/lab/vms/vm-1/serial.log", serial)).toEqual({
      kind: "other",
      root: "/tmp/suite",
      fleet: "lab",
    });
    // A file xenconsoled wrote itself, or a link somewhere else.
    expect(consoleLogOwnership(undefined, serial)).toEqual({ kind: "unmarked" });
    expect(consoleLogOwnership("/etc/shadow", serial)).toEqual({ kind: "unmarked" });
  });
});

describe("where shoal finds guest console logs", () => {
  const daemon = (uid: number, dir: string) => async () => [
    { pid: 10, uid, argv: ["xenconsoled", "--log=guest", `--log-dir=${dir}`] },
  ];

  it("takes the directory from root's xenconsoled only, and only a plain absolute path", async () => {
    expect(await consoleLogDir(daemon(0, "/var/log/xen/console"))).toBe("/var/log/xen/console");
    // Any user may start a process named xenconsoled: its --log-dir would have root make links there.
    await expect(consoleLogDir(daemon(1000, "/home/u/planted"))).rejects.toThrow(
      "xenconsoled does not log guest consoles",
    );
    await expect(consoleLogDir(daemon(0, "/var/log/../../etc"))).rejects.toThrow(
      "which is no plain absolute path",
    );
    await expect(consoleLogDir(daemon(0, "relative/dir"))).rejects.toThrow(
      "which is no plain absolute path",
    );
  });
});

describe("what starting domUs needs, and whether the host has it", () => {
  const fleet = fleetOf(
    "name: lab\nbackend: xl\ncount: 3\nvm: { memory: 64M }\nvms: [{ name: vm-3, layer: { type: tmpfs } }]\n",
  );

  it("counts each domU's memory, its seed and disk layer, and each base not attached yet", () => {
    expect(xenNeeds(fleet.vms, 1)).toEqual({ memoryMiB: 192, loopDevices: 2 + 2 + 1 + 1 });
    expect(xenNeeds(fleet.vms, 0).loopDevices).toBe(5);
    expect(xenNeeds([], 1)).toEqual({ memoryMiB: 0, loopDevices: 0 });
  });

  it("finds the limit of loop devices in the minor numbers the loop module gives each", () => {
    expect(loopDeviceLimit(0)).toBe(1048576);
    expect(loopDeviceLimit(15)).toBe(65536);
    expect(loopDeviceLimit(2 ** 19)).toBe(1);
  });

  it("names memory first, then loop devices, each with its fix", () => {
    const room = {
      xenVersion: "4.17.5",
      freeMemoryMiB: 191,
      loopDevicesAttached: 1,
      loopDeviceLimit: 8,
    };
    expect(xenShortfall({ memoryMiB: 192, loopDevices: 6 }, room)).toEqual({
      short: "memory",
      what: "the domUs to start need 192 MiB and Xen has 191 MiB free",
      fix: "fewer or smaller VMs (memory:), other domUs stopped, or a smaller dom0_mem",
    });
    expect(xenShortfall({ memoryMiB: 191, loopDevices: 8 }, room)).toMatchObject({
      short: "loop devices",
      what: "the domUs to start need 8 loop devices and dom0 can make 7 more (1 attached, at most 8)",
    });
    expect(xenShortfall({ memoryMiB: 191, loopDevices: 7 }, room)).toBeUndefined();
  });

  it("reads dom0's memory and vCPUs from `xl list 0`", () => {
    expect(
      parseDom0(
        "Name                                        ID   Mem VCPUs\tState\tTime(s)\nDomain-0                                     0  1024     2     r-----      42.0\n",
      ),
    ).toEqual({ memoryMiB: 1024, vcpus: 2 });
    expect(parseDom0("")).toBeUndefined();
  });

  it("lists every domain's UUID from `xl list -v`", () => {
    const text = [
      "Name                                        ID   Mem VCPUs\tState\tTime(s)   UUID                            Reason-Code\tSecurity Label",
      "Domain-0                                     0  1024     2     r-----      42.0 00000000-0000-0000-0000-000000000000        -                -",
      "lab.vm-1                                     3    64     1     -b----       1.9 a39cf9b5-41ed-81fa-abb6-1a4a2b57821f        -                -",
      "",
    ].join("\n");
    expect(parseXlListUuids(text)).toEqual(
      new Set(["00000000-0000-0000-0000-000000000000", "a39cf9b5-41ed-81fa-abb6-1a4a2b57821f"]),
    );
  });
});

describe("the base's loop device, as losetup shows it", () => {
  const base = { majMin: "254:1", ino: "1234" };
  const listing = (entry: object) =>
    JSON.stringify({
      loopdevices: [
        {
          name: "/dev/loop3",
          "back-file": "/var/lib/shoal/images/ab/base.img",
          "back-ino": "1234",
          // As util-linux 2.38 prints it.
          "back-maj:min": "     254:1  ",
          ro: true,
          offset: 0,
          sizelimit: 0,
          autoclear: false,
          ...entry,
        },
      ],
    });

  it("is the whole base file, by device and inode, read-only, never clearing itself", () => {
    expect(isBaseLoop(listing({}), "/dev/loop3", base)).toBe(true);
    expect(isBaseLoop(listing({}), "/dev/loop4", base)).toBe(false);
    expect(isBaseLoop(listing({ "back-ino": "99" }), "/dev/loop3", base)).toBe(false);
    expect(isBaseLoop(listing({ "back-maj:min": "8:1" }), "/dev/loop3", base)).toBe(false);
    expect(isBaseLoop(listing({ ro: false }), "/dev/loop3", base)).toBe(false);
    expect(isBaseLoop(listing({ offset: 4096 }), "/dev/loop3", base)).toBe(false);
    expect(isBaseLoop(listing({ sizelimit: 1 }), "/dev/loop3", base)).toBe(false);
    expect(isBaseLoop(listing({ autoclear: true }), "/dev/loop3", base)).toBe(false);
    expect(isBaseLoop("not json", "/dev/loop3", base)).toBe(false);
  });

  it("splits a device number as the kernel does", () => {
    expect(majMinOf(0xfe01n)).toBe("254:1");
    expect(majMinOf((259n << 8n) | 5n)).toBe("259:5");
    // Minor numbers above 255 go into the high bits.
    expect(majMinOf((0x1200n << 12n) | (8n << 8n) | 0x34n)).toBe(`8:${0x1234}`);
  });

  it("finds the loop devices on a VM's files by their directory, never a neighbour's", () => {
    const text = JSON.stringify({
      loopdevices: [
        {
          name: "/dev/loop1",
          "back-file": "/s/fleets/lab/vms/vm-1/layer.img",
          ro: false,
          autoclear: false,
        },
        {
          name: "/dev/loop2",
          "back-file": "/s/fleets/lab/vms/vm-10/layer.img",
          ro: false,
          autoclear: false,
        },
        {
          name: "/dev/loop3",
          "back-file": "/s/fleets/lab/vms/vm-1/identity.tar (deleted)",
          ro: true,
          autoclear: false,
        },
      ],
    });
    expect(loopsUnder(text, "/s/fleets/lab/vms/vm-1")).toEqual(["/dev/loop1", "/dev/loop3"]);
  });
});

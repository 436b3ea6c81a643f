import { describe, expect, it } from "vitest";
import {
  QEMU_DAX_GUEST_DEVICES,
  QEMU_GUEST_DEVICES,
  QEMU_USER,
  renderQemuArgv,
} from "../../src/backends/qemu/render.js";
import {
  renderVifHotplug,
  renderXlConfig,
  XL_GUEST_DEVICES,
} from "../../src/backends/xl/render.js";
import { domainUuid } from "../../src/backends/xl/xen.js";
import { renderKernelCmdline } from "../../src/core/cmdline.js";
import type { VmSpec } from "../../src/core/fleet.js";
import { renderDhcpHosts, renderDnsHosts } from "../../src/core/render/dnsmasq.js";
import { fleetOf } from "../helpers/fleet.js";

const fleet = fleetOf(`name: lab
count: 2
vm:
  name: "agent-{n:03}"
  memory: 256M
  vcpus: 2
  layer: { type: disk, size: 256M }
  kernel_args: [quiet, "loglevel=4"]
vms:
  - name: agent-002
    layer: { type: tmpfs, size: 64M }
    kernel_args: []
`);
const xen = fleetOf(
  'name: lab\nbackend: xl\ncount: 2\nvm: { name: "agent-{n:03}" }\nvms: [{ name: agent-002, layer: { type: tmpfs } }]\n',
);
const [diskVm, tmpfsVm] = fleet.vms as [VmSpec, VmSpec];
const [xenDiskVm, xenTmpfsVm] = xen.vms as [VmSpec, VmSpec];

const boot = {
  kernel: "/var/lib/shoal/images/abc/vmlinuz",
  initrd: "/var/lib/shoal/images/abc/initrd.img",
  base: "/var/lib/shoal/images/abc/base.img",
  baseId: "ab".repeat(32),
};
const vmDir = "/var/lib/shoal/fleets/lab/vms/agent-001";
const files = {
  seed: `${vmDir}/identity.tar`,
  layer: `${vmDir}/layer.img`,
  serialLog: `${vmDir}/serial.log`,
  consoleSocket: `${vmDir}/sockets/console.sock`,
  qmpSocket: `${vmDir}/sockets/qmp.sock`,
  pidFile: `${vmDir}/qemu.pid`,
};

describe("kernel command line", () => {
  it("tells the union-root init where base and layer are, and gives the VM its identity", () => {
    expect(renderKernelCmdline(QEMU_GUEST_DEVICES, diskVm, boot)).toMatchInlineSnapshot(
      `"console=ttyS0 shoal.base=/dev/vda shoal.base_id=abababababababababababababababababababababababababababababababab shoal.seed=/dev/vdb shoal.layer=/dev/vdc shoal.on_base_change=warn systemd.hostname=agent-001 systemd.machine_id=5432d5c765c44aada58e382792843ff0 no_timer_check quiet loglevel=4"`,
    );
  });

  it("names a tmpfs layer and its size instead of a device", () => {
    expect(renderKernelCmdline(QEMU_GUEST_DEVICES, tmpfsVm, boot)).toMatchInlineSnapshot(
      `"console=ttyS0 shoal.base=/dev/vda shoal.base_id=abababababababababababababababababababababababababababababababab shoal.seed=/dev/vdb shoal.layer=tmpfs shoal.layer_size=64M systemd.hostname=agent-002 systemd.machine_id=ff1c00870fc94d92b6ab5accf7269592 no_timer_check"`,
    );
  });

  it("uses Xen's PV devices and console for xl", () => {
    expect(renderKernelCmdline(XL_GUEST_DEVICES, xenDiskVm, boot)).toMatchInlineSnapshot(
      `"console=hvc0 shoal.base=/dev/xvda shoal.base_id=abababababababababababababababababababababababababababababababab shoal.seed=/dev/xvdb shoal.layer=/dev/xvdc shoal.on_base_change=warn systemd.hostname=agent-001 systemd.machine_id=5432d5c765c44aada58e382792843ff0"`,
    );
  });

  it("passes the layer policies, and root= only for an image booting with its own initramfs", () => {
    const vm = {
      ...diskVm,
      kernelArgs: [],
      layer: { ...diskVm.layer, onBaseChange: "reset" as const, fallback: "tmpfs" as const },
    };
    expect(renderKernelCmdline(QEMU_GUEST_DEVICES, vm, { ...boot, ownInitramfs: true })).toBe(
      `console=ttyS0 root=/dev/vda ro shoal.base=/dev/vda shoal.base_id=${"ab".repeat(32)} shoal.seed=/dev/vdb shoal.layer=/dev/vdc shoal.on_base_change=reset shoal.fallback=tmpfs systemd.hostname=agent-001 systemd.machine_id=5432d5c765c44aada58e382792843ff0 no_timer_check`,
    );
  });

  it("names the base's persistent-memory device and its DAX mount for both initramfs kinds, and keeps the guest from setting bounce buffers aside", () => {
    expect(renderKernelCmdline(QEMU_DAX_GUEST_DEVICES, diskVm, boot)).toBe(
      `console=ttyS0 rootflags=dax=always shoal.base=/dev/pmem0 shoal.base_id=${"ab".repeat(32)} shoal.seed=/dev/vda shoal.layer=/dev/vdb shoal.on_base_change=warn systemd.hostname=agent-001 systemd.machine_id=5432d5c765c44aada58e382792843ff0 no_timer_check swiotlb=noforce quiet loglevel=4`,
    );
    expect(
      renderKernelCmdline(QEMU_DAX_GUEST_DEVICES, tmpfsVm, { ...boot, ownInitramfs: true }),
    ).toMatch(/^console=ttyS0 root=\/dev\/pmem0 ro rootflags=dax=always shoal.base=\/dev\/pmem0 /);
  });

  it("refuses a parameter that slipped past validation", () => {
    expect(() =>
      renderKernelCmdline(QEMU_GUEST_DEVICES, { ...diskVm, kernelArgs: ['init="/bin/sh"'] }, boot),
    ).toThrow(/^internal: kernel parameter/);
  });
});

describe("xl.cfg", () => {
  const xlInput = {
    fleet: "lab",
    vm: xenDiskVm,
    uuid: domainUuid({ root: "/var/lib/shoal", fleet: "lab" }, "agent-001"),
    boot,
    layer: files.layer,
    bridge: "shoal0",
    vifName: "s3f2a1-1",
    seed: files.seed,
    baseDevice: "/dev/loop3",
    blockScript: "/var/lib/shoal/fleets/lab/vms/agent-001/block-hotplug",
    vifScript: "/var/lib/shoal/fleets/lab/vms/agent-001/vif-hotplug",
  };

  it("renders a PV domU with the shared base's loop device read-only and its own layer read-write, every disk through shoal's block script", async () => {
    await expect(renderXlConfig(xlInput)).toMatchFileSnapshot("__snapshots__/agent-001.xl.cfg");
  });

  it("leaves out the layer disk for a tmpfs layer", async () => {
    const { layer: _, ...tmpfs } = xlInput;
    await expect(
      renderXlConfig({
        ...tmpfs,
        vm: xenTmpfsVm,
        uuid: domainUuid({ root: "/var/lib/shoal", fleet: "lab" }, "agent-002"),
        seed: files.seed.replace("agent-001", "agent-002"),
        blockScript: xlInput.blockScript.replace("agent-001", "agent-002"),
        vifScript: xlInput.vifScript.replace("agent-001", "agent-002"),
      }),
    ).toMatchFileSnapshot("__snapshots__/agent-002-tmpfs.xl.cfg");
  });

  it("puts target= last in each disk spec, as xl requires", () => {
    const config = renderXlConfig(xlInput);
    const disks = config.match(/^disk = \[ (.*) \]$/m)?.[1]?.split('", "') ?? [];
    expect(disks).toHaveLength(3);
    for (const disk of disks) expect(disk).toMatch(/target=[^,]+"?$/);
  });

  it("refuses paths and bridge names that would break its syntax", () => {
    const render = (override: object) => () => renderXlConfig({ ...xlInput, ...override });
    expect(render({ layer: '/tmp/x", "y' })).toThrow(/^internal: layer path/);
    expect(render({ baseDevice: "/dev/loop1,x" })).toThrow(/^internal: base device path/);
    expect(render({ baseDevice: "/tmp/base.img" })).toThrow(/^internal: base device/);
    expect(render({ blockScript: "/tmp/a,b" })).toThrow(/^internal: block script path/);
    expect(render({ bridge: "a-bridge-name-too-long" })).toThrow(/^internal: bridge name/);
    expect(render({ vifScript: "/tmp/a b" })).toThrow(/^internal: vif script path/);
    expect(render({ uuid: 'x"\nname = "y' })).toThrow(/^internal: domain UUID/);
  });
});

describe("vif hotplug script", () => {
  const script = "#!/bin/sh\nset -u\nnamespace=$1\n";

  it("is shoal's script with the fleet's namespace, bridge and the vif's name set in front of libxl's arguments", () => {
    expect(
      renderVifHotplug({ script, namespace: "shoal-lab", bridge: "shoal0", vifName: "s3f2a1-1" }),
    ).toBe(
      [
        "#!/bin/sh",
        "# Generated by shoal for this VM's network interface: shoal's xen-vif-hotplug, with the",
        "# fleet's namespace, bridge and the vif's name.",
        'set -- shoal-lab shoal0 s3f2a1-1 "$@"',
        "set -u",
        "namespace=$1",
        "",
      ].join("\n"),
    );
  });

  it("says - for a bridge in the host's namespace", () => {
    expect(renderVifHotplug({ script, bridge: "br0", vifName: "s3f2a1-1" })).toContain(
      'set -- - br0 s3f2a1-1 "$@"\n',
    );
  });

  it("refuses words that a shell would split or expand, and a script that is not sh", () => {
    const render = (override: object) => () =>
      renderVifHotplug({ script, bridge: "br0", vifName: "s3f2a1-1", ...override });
    expect(render({ bridge: "br$(id)" })).toThrow(/^internal: bridge name/);
    expect(render({ vifName: "v;reboot" })).toThrow(/^internal: vif name/);
    expect(render({ namespace: "a b" })).toThrow(/^internal: namespace/);
    expect(render({ namespace: "-x" })).toThrow(/^internal: namespace/);
    expect(render({ script: "#!/bin/bash\n" })).toThrow(/not a sh script/);
  });
});

describe("QEMU argv", () => {
  it("attaches the base readonly=on, the layer read-write, and boots the kernel directly, as user shoal-qemu in the fleet's namespace under the sandbox", () => {
    expect(
      renderQemuArgv({
        fleet: "lab",
        vm: diskVm,
        boot,
        files,
        tap: "tap1",
        namespace: "shoal-lab",
        accel: "tcg",
        user: QEMU_USER,
      }),
    ).toMatchSnapshot();
  });

  it("runs QEMU as an unprivileged user with no capabilities, under its seccomp sandbox, and lets shoal put it in the background", () => {
    const argv = renderQemuArgv({
      fleet: "lab",
      vm: diskVm,
      boot,
      files,
      tap: "tap1",
      namespace: "shoal-lab",
      accel: "tcg",
      user: "shoal-qemu",
    });
    // The namespace is entered as root, then setpriv drops to the user for good and execs QEMU.
    expect(argv.slice(0, argv.indexOf("qemu-system-x86_64"))).toEqual([
      "ip",
      "netns",
      "exec",
      "shoal-lab",
      "setpriv",
      "--reuid=shoal-qemu",
      "--regid=shoal-qemu",
      "--init-groups",
      "--inh-caps=-all",
      "--bounding-set=-all",
      "--no-new-privs",
      "--",
    ]);
    expect(argv.slice(-2)).toEqual([
      "-sandbox",
      "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]);
    // -daemonize forks and calls setsid, -runas calls setuid: the sandbox kills QEMU for either.
    expect(argv).not.toContain("-daemonize");
    expect(argv).not.toContain("-runas");
    expect(() =>
      renderQemuArgv({ fleet: "lab", vm: diskVm, boot, files, accel: "tcg", user: "x --" }),
    ).toThrow(/^internal: user name/);
  });

  it("bounds software emulation's translation cache by the VM's memory, or as the user sets it, and gives every VM a balloon that reports free pages", () => {
    const accelOf = (vm: VmSpec, tcgCacheMiB?: number) => {
      const argv = renderQemuArgv({
        fleet: "lab",
        vm,
        boot,
        files,
        accel: "tcg",
        ...(tcgCacheMiB === undefined ? {} : { tcgCacheMiB }),
      });
      expect(argv).toContain("virtio-balloon-pci,free-page-reporting=on");
      return argv[argv.indexOf("-accel") + 1];
    };
    expect(accelOf({ ...diskVm, memoryMiB: 32 })).toBe("tcg,tb-size=16");
    expect(accelOf({ ...diskVm, memoryMiB: 128 })).toBe("tcg,tb-size=32");
    expect(accelOf({ ...diskVm, memoryMiB: 384 })).toBe("tcg,tb-size=64");
    expect(accelOf({ ...diskVm, memoryMiB: 8192 })).toBe("tcg,tb-size=64");
    expect(accelOf({ ...diskVm, memoryMiB: 128 }, 200)).toBe("tcg,tb-size=200");
    expect(() => accelOf(diskVm, 0)).toThrow(/^internal: translation cache size/);
    expect(() => accelOf(diskVm, 1.5)).toThrow(/^internal: translation cache size/);
  });

  it("maps a base that can be for DAX privately and read-only, beside the VM's memory, and attaches the others as a disk", () => {
    const mapped = renderQemuArgv({
      fleet: "lab",
      vm: diskVm,
      boot: { ...boot, dax: { bytes: 58 * 1024 * 1024 } },
      files,
      accel: "tcg",
    });
    const at = (flag: string) => mapped[mapped.indexOf(flag) + 1];
    expect(at("-m")).toBe("256M,maxmem=314M");
    expect(mapped.slice(mapped.indexOf("-object"), mapped.indexOf("-object") + 4)).toEqual([
      "-object",
      `memory-backend-file,id=base,mem-path=${boot.base},size=58M,share=off,readonly=on`,
      "-device",
      "virtio-pmem-pci,memdev=base",
    ]);
    expect(at("-append")).toContain("shoal.base=/dev/pmem0 ");
    expect(mapped.join(" ")).not.toContain("id=base,file=");
    // The seed is the first disk, the layer the second.
    expect(mapped.filter((arg) => arg.startsWith("if=none,"))).toEqual([
      `if=none,id=seed,file=${files.seed},format=raw,readonly=on`,
      `if=none,id=layer,file=${files.layer},format=raw,discard=unmap,detect-zeroes=unmap`,
    ]);

    for (const bytes of [0, -2 * 1024 * 1024, 57 * 1024 * 1024, 2 ** 60]) {
      expect(() =>
        renderQemuArgv({
          fleet: "lab",
          vm: diskVm,
          boot: { ...boot, dax: { bytes } },
          files,
          accel: "tcg",
        }),
      ).toThrow(/^internal: base size/);
    }
    const disk = renderQemuArgv({ fleet: "lab", vm: diskVm, boot, files, accel: "tcg" });
    expect(disk[disk.indexOf("-m") + 1]).toBe("256M");
    expect(disk).not.toContain("-object");
    expect(disk[disk.indexOf("-append") + 1]).toContain("shoal.base=/dev/vda ");
    expect(disk).toContain(`if=none,id=base,file=${boot.base},format=raw,readonly=on`);
  });

  it("uses the host CPU under KVM", () => {
    const argv = renderQemuArgv({
      fleet: "lab",
      vm: diskVm,
      boot,
      files,
      tap: "sh-lab-1",
      accel: "kvm",
    });
    expect(argv.slice(argv.indexOf("-accel"), argv.indexOf("-accel") + 4)).toEqual([
      "-accel",
      "kvm",
      "-cpu",
      "host",
    ]);
  });

  it("attaches the identity seed read-only, and no layer drive for a tmpfs layer", () => {
    const argv = renderQemuArgv({
      fleet: "lab",
      vm: tmpfsVm,
      boot,
      files: { ...files, layer: undefined } as Omit<typeof files, "layer">,
      tap: "sh-lab-2",
      accel: "tcg",
    });
    expect(argv.filter((arg) => arg.startsWith("if=none"))).toEqual([
      "if=none,id=base,file=/var/lib/shoal/images/abc/base.img,format=raw,readonly=on",
      "if=none,id=seed,file=/var/lib/shoal/fleets/lab/vms/agent-001/identity.tar,format=raw,readonly=on",
    ]);
  });

  it("runs QEMU inside the fleet's network namespace, where its tap is", () => {
    const argv = renderQemuArgv({
      fleet: "lab",
      vm: diskVm,
      boot,
      files,
      tap: "tap1",
      namespace: "shoal-lab",
      accel: "tcg",
    });
    expect(argv.slice(0, 5)).toEqual(["ip", "netns", "exec", "shoal-lab", "qemu-system-x86_64"]);
    expect(() =>
      renderQemuArgv({
        fleet: "lab",
        vm: diskVm,
        boot,
        files,
        namespace: "x; rm -rf /",
        accel: "tcg",
      }),
    ).toThrow(/^internal: namespace/);
  });

  it("refuses a comma in a path, which QEMU would read as the next option", () => {
    expect(() =>
      renderQemuArgv({
        fleet: "lab",
        vm: diskVm,
        boot: { ...boot, base: "/x/base.img,readonly=off" },
        files,
        tap: "t",
        accel: "tcg",
      }),
    ).toThrow(/^internal: base path/);
  });

  it("refuses a socket path longer than a Unix socket takes", () => {
    const long = `/${"d".repeat(100)}/qmp.sock`;
    expect(() =>
      renderQemuArgv({
        fleet: "lab",
        vm: diskVm,
        boot,
        files: { ...files, qmpSocket: long },
        tap: "t",
        accel: "tcg",
      }),
    ).toThrow(/^internal: socket path/);
  });
});

describe("dnsmasq", () => {
  it("reserves each VM's address for its MAC, with infinite leases", () => {
    expect(renderDhcpHosts(fleet.vms)).toMatchInlineSnapshot(`
      "52:54:00:69:35:3f,10.77.0.2,agent-001,infinite
      52:54:00:d9:94:fc,10.77.0.3,agent-002,infinite
      "
    `);
  });

  it("names each VM both alone and within its fleet", () => {
    expect(renderDnsHosts("lab", fleet.vms)).toMatchInlineSnapshot(`
      "10.77.0.2 agent-001.lab agent-001
      10.77.0.3 agent-002.lab agent-002
      "
    `);
  });

  it("refuses a hostname that would inject another line", () => {
    expect(() => renderDhcpHosts([{ ...diskVm, hostname: "a\ndhcp-range=0.0.0.0" }])).toThrow(
      /^internal: hostname/,
    );
  });
});

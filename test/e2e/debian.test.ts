import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { VmSpec } from "../../src/core/fleet.js";
import { ProcessRunner } from "../../src/host/runner.js";
import { Ext4Image } from "../../src/image/ext4.js";
import type { ImageMeta } from "../../src/image/store.js";
import { createLayer, readLayerFile } from "../../src/layer/layer.js";
import { stateLayout } from "../../src/state/layout.js";
import { destroyAllFleets, shoal } from "../helpers/cli.js";
import { fleetOf } from "../helpers/fleet.js";
import { fingerprints, waitForIdentity } from "../helpers/identity.js";
import { useFileTempDir, useTempDirs } from "../helpers/tmp.js";
import {
  killAllVms,
  killQemusMentioning,
  qemuPidsMentioning,
  sha256,
  TestVm,
} from "../helpers/vm.js";

/**
 * Real Debian images, built with mmdebstrap, booted (QEMU, software emulation) through shoal's
 * initramfs and, with --hook initramfs-tools, through the image's own initramfs.
 */

const tempDir = useTempDirs();
const stateDir = useFileTempDir("shoal-debian-");
const runner = new ProcessRunner();
let state: string;
const images: Record<string, ImageMeta> = {};

beforeAll(async () => {
  state = stateDir();
  // As a host's state directory is: dnsmasq reads the fleet's files as user nobody.
  await chmod(state, 0o755);
  for (const [name, extra] of [
    ["debian", []],
    ["debian-hook", ["--hook", "initramfs-tools"]],
  ] as const) {
    const built = await shoal([
      "--state-dir",
      state,
      "image",
      "build",
      name,
      "--from",
      "debian:bookworm",
      ...extra,
    ]);
    expect(built.code, built.stderr).toBe(0);
    images[name] = JSON.parse(
      (await shoal(["--state-dir", state, "image", "inspect", name])).stdout,
    ) as ImageMeta;
  }
});

afterEach(killAllVms);
afterAll(async () => {
  // Whatever a failed test left goes (VMs, networks); the state directory itself is removed after.
  await destroyAllFleets(state);
  await killQemusMentioning(state);
});

function spec(layer: string): VmSpec {
  const vm = fleetOf(`name: test\nvms: [{ name: agent-1, memory: 512M, layer: ${layer} }]\n`)
    .vms[0];
  if (!vm) throw new Error("no VM");
  return vm;
}

async function boot(imageName: string, layer?: string): Promise<TestVm> {
  const image = images[imageName];
  if (!image) throw new Error(`no image ${imageName}`);
  const dir = join(await tempDir(), "vm");
  await mkdir(dir);
  return TestVm.boot({
    image: { ...stateLayout(state).image(image.id), id: image.id },
    vm: spec(layer ? "{ type: disk }" : "{ type: tmpfs }"),
    dir,
    ...(layer ? { layer } : {}),
    ...(image.boot === "image-initramfs" ? { ownInitramfs: true } : {}),
  });
}

async function newLayer(): Promise<string> {
  const layer = join(await tempDir(), "layer.img");
  await createLayer(layer, 1024 ** 3);
  return layer;
}

/**
 * Boots to the login prompt, which shows the VM's own hostname, checks the identity the booted
 * system reports (its host key derived from the private key sshd uses), then shuts down by ACPI.
 */
async function bootToLogin(vm: TestVm, layerDescription: RegExp): Promise<void> {
  await vm.waitFor(layerDescription);
  await vm.waitFor(/agent-1 login:/, 300_000);
  const identity = await waitForIdentity(vm.log);
  const seeded = (await readFile(join(dirname(vm.log), "ssh/ssh_host_ed25519_key.pub"), "utf8"))
    .split(" ")
    .slice(0, 2)
    .join(" ");
  expect(identity).toEqual({
    hostname: "agent-1",
    machineId: spec("{}").machineId,
    hostKey: seeded,
  });
  await vm.powerOffByButton();
}

describe("a Debian image", () => {
  it("is sealed, with a kernel, systemd and sshd", async () => {
    const image = images.debian;
    if (!image) throw new Error("no image");
    expect(
      image.sealed.removed.filter((path) => path.startsWith("/etc/ssh/ssh_host_")).length,
    ).toBeGreaterThan(0);
    const base = new Ext4Image(runner, stateLayout(state).image(image.id).base);
    expect(await base.readFile("/etc/machine-id")).toBe("");
    expect((await base.list("/etc/ssh"))?.some((entry) => entry.name.startsWith("ssh_host_"))).toBe(
      false,
    );
    expect(await base.readFile("/etc/systemd/network/80-shoal.network")).toContain(
      "ClientIdentifier=mac",
    );
    expect(
      (await base.list("/boot"))?.some((entry) => entry.name === `vmlinuz-${image.kernelVersion}`),
    ).toBe(true);
    expect(image.boot).toBe("shoal-initramfs");
    expect(images["debian-hook"]?.boot).toBe("image-initramfs");
  });

  it("boots through shoal's initramfs with a disk layer, which takes the system's writes", async () => {
    const image = images.debian;
    if (!image) throw new Error("no image");
    const layer = await newLayer();
    await bootToLogin(
      await boot("debian", layer),
      /root is the union of base \/dev\/vda \(read-only\) and layer \/dev\/vdc/,
    );
    // systemd wrote the machine-id it was given into the union, so into the layer.
    expect(await readLayerFile(runner, layer, "/etc/machine-id")).toBe(`${spec("{}").machineId}\n`);
    expect(await sha256(stateLayout(state).image(image.id).base)).toBe(image.id);
  });

  it("boots through shoal's initramfs with a tmpfs layer", async () => {
    await bootToLogin(
      await boot("debian"),
      /root is the union of base \/dev\/vda \(read-only\) and layer tmpfs/,
    );
  });

  it("boots through its own initramfs with shoal's initramfs-tools hook", async () => {
    const image = images["debian-hook"];
    if (!image) throw new Error("no image");
    const layer = await newLayer();
    const vm = await boot("debian-hook", layer);
    await bootToLogin(
      vm,
      /root is the union of base \/dev\/vda \(read-only\) and layer \/dev\/vdc/,
    );
    expect(await vm.output()).toContain("Loading, please wait...");
    expect(await readLayerFile(runner, layer, "/etc/machine-id")).toBe(`${spec("{}").machineId}\n`);
    expect(await sha256(stateLayout(state).image(image.id).base)).toBe(image.id);
  });

  it("comes up as a fleet of 2 with `shoal up`, each VM with its own identity, as known_hosts lists them", async () => {
    const fleetFile = join(await tempDir(), "debian.yaml");
    await writeFile(
      fleetFile,
      "name: deb\nimage: debian\ncount: 2\nvm: { memory: 512M, layer: { type: disk, size: 1G } }\n",
    );
    const up = await shoal([
      "--state-dir",
      state,
      "up",
      "-f",
      fleetFile,
      "--json",
      "--timeout",
      "600",
    ]);
    expect(up.code, up.stderr).toBe(0);
    const plan = JSON.parse(
      (await shoal(["--state-dir", state, "plan", "-f", fleetFile, "--json"])).stdout,
    ) as { name: string; machineId: string; ip: string }[];
    const fleet = stateLayout(state).fleet("deb");
    const knownHosts = await readFile(fleet.knownHosts, "utf8");
    const keys: string[] = [];
    for (const vm of plan) {
      const identity = await waitForIdentity(fleet.vm(vm.name).serialLog);
      expect(identity.hostname).toBe(vm.name);
      expect(identity.machineId).toBe(vm.machineId);
      expect(knownHosts).toContain(`${vm.name},${vm.name}.deb,${vm.ip} ${identity.hostKey}\n`);
      keys.push(identity.hostKey);
    }
    expect(new Set(await fingerprints(keys)).size).toBe(2);
    // systemd answers the power button: both shut down cleanly.
    const down = await shoal(["--state-dir", state, "down", "-f", fleetFile, "--timeout", "300"]);
    expect(down.code, down.stderr).toBe(0);
    expect(down.stdout).not.toContain("forced");
    const destroyed = await shoal(["--state-dir", state, "destroy", "-f", fleetFile, "--yes"]);
    expect(destroyed.code, destroyed.stderr).toBe(0);
    expect(await qemuPidsMentioning(state)).toEqual([]);
    const image = images.debian;
    expect(await sha256(stateLayout(state).image(image?.id ?? "").base)).toBe(image?.id);
  });
});

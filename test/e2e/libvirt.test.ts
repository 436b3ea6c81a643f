import { execFile } from "node:child_process";
import { chmod, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { renderDomainXml, type Volume } from "../../src/backends/libvirt/render.js";
import { ownerMark } from "../../src/core/net.js";
import { ownedDomainUuid } from "../../src/core/render/boot.js";
import { type ImageMeta, imageBoot } from "../../src/image/store.js";
import { stateLayout } from "../../src/state/layout.js";
import { readFleetRecord } from "../../src/state/store.js";
import { shoalOk } from "../helpers/cli.js";
import { sharedImage } from "../helpers/images.js";
import { type LibvirtHost, LibvirtHosts } from "../helpers/libvirt-hosts.js";
import { useFileTempDir } from "../helpers/tmp.js";
import { sha256 } from "../helpers/vm.js";

/**
 * Two libvirt hosts on this machine (test/helpers/libvirt-hosts.ts), each with its own libvirtd
 * and sshd in namespaces of its own, reached from a control namespace over `qemu+ssh://`. A VM of
 * shoal's, its domain rendered by shoal, boots on each from volumes of that host's storage pool:
 * the base, the kernel and shoal's initramfs uploaded into it once, its seed and layer beside. The
 * tests build on each other, in order.
 */

const exec = promisify(execFile);
const stateDir = useFileTempDir("shoal-libvirt-");
const hostsDir = useFileTempDir("shoal-libvirt-hosts-");
let state: string;
let image: ImageMeta;
/** The base's sha256 before any host had it. */
let baseSum: string;
let hosts: LibvirtHosts | undefined;
const POOL = "shoal";
/** Where the pool's files are on each host (its own /var/lib/libvirt). */
const POOL_DIR = "/var/lib/libvirt/shoal";
const BOOT_WAIT_MS = 180_000;

function theHosts(): LibvirtHosts {
  if (!hosts) throw new Error("the libvirt hosts did not start");
  return hosts;
}

async function virsh(host: LibvirtHost, ...args: string[]): Promise<string> {
  return (await theHosts().virsh(host, ...args)).stdout;
}

/** Each host runs one VM of the fleet: vm-1 on h1, vm-2 on h2. */
const vmOf = (host: LibvirtHost) => `vm-${host.name.slice(1)}`;
const domainOf = (host: LibvirtHost) => `lab.${vmOf(host)}`;
const consoleLogOf = (host: LibvirtHost) => `/var/log/libvirt/qemu/${domainOf(host)}.console.log`;

/** The same steps on every host at once, as shoal acts on many hosts. */
const onEveryHost = (steps: (host: LibvirtHost) => Promise<void>) =>
  Promise.all(theHosts().hosts.map(steps));

async function upload(host: LibvirtHost, name: string, file: string): Promise<void> {
  const bytes = (await exec("stat", ["-c", "%s", file])).stdout.trim();
  await virsh(host, "vol-create-as", POOL, name, bytes, "--format", "raw");
  await virsh(host, "vol-upload", "--pool", POOL, name, file, "--sparse");
}

beforeAll(async () => {
  state = stateDir();
  await chmod(state, 0o755);
  image = await sharedImage(state, "tiny", { from: "busybox" });
  baseSum = await sha256(imageBoot(stateLayout(state), image).base);
  const file = join(state, "lab.yaml");
  await writeFile(file, "name: lab\ncount: 2\nvm: { layer: { type: disk, size: 64M } }\n");
  // The VMs' identity seeds and layers, made as for any backend.
  await shoalOk(state, ["create", "-f", file]);
  hosts = new LibvirtHosts({
    dir: hostsDir(),
    tag: String(process.pid),
    count: 2,
    subnet: "10.253.0",
  });
  await hosts.start();
});

afterAll(async () => {
  await hosts?.stop();
});

describe("a VM of shoal's on libvirt hosts reached over qemu+ssh", () => {
  it("each host takes the base, the kernel and the initramfs into its storage pool, the base's copy byte for byte", async () => {
    const boot = imageBoot(stateLayout(state), image);
    await onEveryHost(async (host) => {
      await virsh(host, "pool-define-as", POOL, "dir", "--target", POOL_DIR);
      await virsh(host, "pool-build", POOL);
      await virsh(host, "pool-start", POOL);
      await upload(host, `base-${image.id}`, boot.base);
      await upload(host, `kernel-${image.id}`, boot.kernel);
      await upload(host, `initrd-${image.id}`, boot.initrd);
      const paths = stateLayout(state).fleet("lab").vm(vmOf(host));
      await upload(host, `${vmOf(host)}-seed`, paths.seed);
      await upload(host, `${vmOf(host)}-layer`, paths.layer);
      const copy = join(hostsDir(), `${host.name}-base`);
      await virsh(host, "vol-download", "--pool", POOL, `base-${image.id}`, copy);
      expect(await sha256(copy)).toBe(baseSum);
      expect((await virsh(host, "vol-list", POOL)).split("\n").filter(Boolean)).toHaveLength(5);
    });
  });

  it("boots from the host's volumes as the domain shoal renders, through shoal's initramfs", async () => {
    const record = await readFleetRecord(stateLayout(state), "lab");
    const boot = imageBoot(stateLayout(state), image);
    await onEveryHost(async (host) => {
      const spec = record?.vms[vmOf(host)]?.spec;
      if (!spec) throw new Error(`${vmOf(host)} was not created`);
      const volume = (name: string): Volume => ({ pool: POOL, name });
      const path = async (name: string) =>
        (await virsh(host, "vol-path", "--pool", POOL, name)).trim();
      const xml = renderDomainXml({
        fleet: "lab",
        uuid: ownedDomainUuid("libvirt", { root: state, fleet: "lab" }, spec.name),
        vm: spec,
        boot,
        kernel: await path(`kernel-${image.id}`),
        initrd: await path(`initrd-${image.id}`),
        disks: {
          base: volume(`base-${image.id}`),
          seed: volume(`${spec.name}-seed`),
          layer: volume(`${spec.name}-layer`),
        },
        accel: "tcg",
        consoleLog: consoleLogOf(host),
        owner: ownerMark({ root: state, fleet: "lab" }, 255),
      });
      const xmlFile = join(hostsDir(), `${host.name}.xml`);
      await writeFile(xmlFile, xml);
      await virsh(host, "define", xmlFile);
      await virsh(host, "start", domainOf(host));
    });
    for (const host of theHosts().hosts) {
      // The console log is on the host: its /var/log/libvirt is the host's own directory here.
      const log = join(host.dir, "log", consoleLogOf(host).slice("/var/log/libvirt/".length));
      const until = Date.now() + BOOT_WAIT_MS;
      let text = "";
      while (!text.includes(`shoal-tiny: ${vmOf(host)} is up`)) {
        expect(Date.now(), `${host.name}'s console:\n${text.slice(-2000)}`).toBeLessThan(until);
        await sleep(500);
        text = await readFile(log, "utf8").catch(() => "");
      }
      expect(text).toContain("shoal: root is the union of base");
      expect((await virsh(host, "domstate", "--reason", domainOf(host))).trim()).toBe(
        "running (booted)",
      );
      expect(
        await virsh(host, "metadata", domainOf(host), "https://shoal.dev/xmlns/libvirt/1"),
      ).toContain(`owner="shoal owner=${state} fleet=lab"`);
    }
  });

  it("a host whose libvirtd stopped does not answer, the other does; its VM runs on and is there when the daemon is back", async () => {
    const [h1, h2] = theHosts().hosts as [LibvirtHost, LibvirtHost];
    await theHosts().stopDaemon(h1);
    const refused = await theHosts()
      .virsh(h1, "list", "--all")
      .then(
        () => undefined,
        (error: { code: number; stderr: string }) => error,
      );
    expect(refused?.code).toBe(1);
    expect(refused?.stderr).toContain("failed to connect to the hypervisor");
    expect((await virsh(h2, "domstate", domainOf(h2))).trim()).toBe("running");
    await theHosts().startDaemon(h1);
    expect((await virsh(h1, "domstate", domainOf(h1))).trim()).toBe("running");
  });

  it("leaves nothing on either host once the domains, volumes and pool are removed; the base is unchanged", async () => {
    await onEveryHost(async (host) => {
      await virsh(host, "destroy", domainOf(host));
      await virsh(host, "undefine", domainOf(host));
      // `vol-list` (without a header, -q) gives a volume's name and path on each line.
      for (const line of (await virsh(host, "vol-list", POOL)).split("\n")) {
        const [volume] = line.trim().split(/\s+/);
        if (volume) await virsh(host, "vol-delete", "--pool", POOL, volume);
      }
      await virsh(host, "pool-destroy", POOL);
      await virsh(host, "pool-delete", POOL);
      await virsh(host, "pool-undefine", POOL);
      expect(await virsh(host, "list", "--all", "--name")).toBe("");
      expect(await virsh(host, "pool-list", "--all", "--name")).toBe("");
    });
    expect(await sha256(imageBoot(stateLayout(state), image).base)).toBe(baseSum);
  });
});

import { execFile } from "node:child_process";
import { mkdir, readdir, readFile, stat, writeFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";
import { fleetTag, hostTapName, namespaceName } from "../../src/core/net.js";
import { ProcessRunner } from "../../src/host/runner.js";
import { Ext4Image } from "../../src/image/ext4.js";
import { stateLayout } from "../../src/state/layout.js";
import { shoal } from "../helpers/cli.js";
import { useFileTempDir, useTempDirs } from "../helpers/tmp.js";

/**
 * Fleet commands on real files without booting a VM: `create` makes every VM's layer, identity
 * and QEMU definition; bad input changes nothing. (Booting is the end-to-end tests' part.)
 */

const exec = promisify(execFile);
const tempDir = useTempDirs();
const imageState = useFileTempDir("shoal-fleet-");
const KEY =
  "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINdamAGCsQq31Uv+08lkBzoO4XLz2qYjJa8CGmj3B1Ea alice@laptop";
// The KVM probe is the end-to-end tests' concern; here it would only cost time.
const env = { SHOAL_ACCEL: "tcg" };
let state: string;

beforeAll(async () => {
  state = imageState();
  const built = await shoal(["--state-dir", state, "image", "build", "tiny", "--from", "busybox"]);
  expect(built.code, built.stderr).toBe(0);
}, 120_000);

async function fleet(name: string, text: string): Promise<string> {
  const path = join(await tempDir(), "shoal.yaml");
  await writeFile(path, `name: ${name}\n${text}`);
  return path;
}

function run(args: readonly string[]) {
  return shoal(["--state-dir", state, ...args], { env });
}

describe("shoal create", () => {
  it("gives each VM a blank sparse layer, its identity seed and host key (root's only), and the fleet a known_hosts", async () => {
    const file = await fleet(
      "made",
      `count: 3\nssh: { authorized_keys: ["${KEY}"] }\nvms: [{ name: vm-3, layer: { type: tmpfs } }]\n`,
    );
    const created = await run(["create", "-f", file, "--json"]);
    expect(created.code, created.stderr).toBe(0);
    const rows = JSON.parse(created.stdout) as { name: string; state: string; done: string[] }[];
    expect(rows.map((row) => [row.name, row.state, row.done])).toEqual([
      ["vm-1", "stopped", ["create"]],
      ["vm-2", "stopped", ["create"]],
      ["vm-3", "stopped", ["create"]],
    ]);
    const fleetPaths = stateLayout(state).fleet("made");
    const knownHosts = (await readFile(fleetPaths.knownHosts, "utf8")).trim().split("\n");
    const clientKeyFile = join(fleetPaths.clientKeys, "id_ed25519");
    expect((await stat(clientKeyFile)).mode & 0o777).toBe(0o600);
    const clientPublic = await readFile(`${clientKeyFile}.pub`, "utf8");
    expect((await exec("ssh-keygen", ["-y", "-f", clientKeyFile])).stdout).toBe(clientPublic);
    const clientKey = clientPublic.replace(/ shoal@made\n$/, "\n");
    expect(knownHosts).toHaveLength(3);
    for (const [i, name] of ["vm-1", "vm-2", "vm-3"].entries()) {
      const paths = fleetPaths.vm(name);
      expect((await stat(paths.dir)).mode & 0o777).toBe(0o700);
      const privateKey = join(paths.hostKeys, "ssh_host_ed25519_key");
      expect((await stat(privateKey)).mode & 0o777).toBe(0o600);
      // ssh-keygen reads the key shoal wrote and derives the public key shoal published.
      const derived = (await exec("ssh-keygen", ["-y", "-f", privateKey])).stdout.trim();
      expect(knownHosts[i]).toMatch(new RegExp(`^${name},${name}\\.made,10\\.77\\.0\\.\\d+ `));
      expect(derived.split(" ").slice(0, 2).join(" ")).toBe(
        knownHosts[i]?.split(" ").slice(1).join(" "),
      );
      // The seed is a tar archive the VM's init unpacks; secrets keep their 0600.
      expect((await stat(paths.seed)).mode & 0o777).toBe(0o600);
      const listing = (await exec("tar", ["-tvf", paths.seed])).stdout;
      expect(listing).toMatch(/^-rw------- root\/root .* etc\/ssh\/ssh_host_ed25519_key$/m);
      expect(listing).toMatch(/^-rw------- root\/root .* root\/\.ssh\/authorized_keys$/m);
      expect(listing).toMatch(
        /^-rw------- root\/root .* etc\/dropbear\/dropbear_ed25519_host_key$/m,
      );
      // dropbear's own converter turns the OpenSSH key into exactly the file shoal seeds.
      const converted = join(await tempDir(), "dropbear-key");
      await exec("dropbearconvert", ["openssh", "dropbear", privateKey, converted]);
      const seededDropbear = await exec(
        "tar",
        ["-xOf", paths.seed, "etc/dropbear/dropbear_ed25519_host_key"],
        { encoding: "buffer" },
      );
      expect(seededDropbear.stdout).toEqual(await readFile(converted));
      // The fleet's own key first (`shoal ssh` logs in with it), then the fleet file's keys.
      const seeded = (await exec("tar", ["-xOf", paths.seed, "root/.ssh/authorized_keys"])).stdout;
      expect(seeded).toBe(`${clientKey}${KEY}\n`);
      expect((await exec("tar", ["-xOf", paths.seed, "etc/hostname"])).stdout).toBe(`${name}\n`);
      const argv = JSON.parse(await readFile(paths.qemuArgv, "utf8")) as string[];
      // SHOAL_ACCEL=tcg: software emulation, with a 128M VM's translation cache, and a balloon.
      expect(argv).toContain("tcg,tb-size=32");
      expect(argv).toContain("virtio-balloon-pci,free-page-reporting=on");
      if (name === "vm-3") {
        await expect(stat(paths.layer)).rejects.toThrow();
      } else {
        const layer = await stat(paths.layer);
        expect(layer.size).toBe(1024 ** 3);
        expect(layer.blocks).toBe(0);
        expect(layer.mode & 0o777).toBe(0o600);
      }
    }
    // New keys in the fleet file reach every VM's seed, for its next boot.
    const other = KEY.replace("alice@laptop", "bob@desk");
    await writeFile(
      file,
      `name: made\ncount: 3\nssh: { authorized_keys: ["${other}"] }\nvms: [{ name: vm-3, layer: { type: tmpfs } }]\n`,
    );
    const rekeyed = await run(["create", "-f", file]);
    expect(rekeyed.code, rekeyed.stderr).toBe(0);
    expect(rekeyed.stderr).toContain(
      "ssh.authorized_keys changed: each VM takes the new keys at its next boot",
    );
    for (const name of ["vm-1", "vm-2", "vm-3"]) {
      const seed = fleetPaths.vm(name).seed;
      expect((await exec("tar", ["-xOf", seed, "root/.ssh/authorized_keys"])).stdout).toBe(
        `${clientKey}${other}\n`,
      );
    }
    const ps = await run(["ps", "-f", file]);
    expect(ps.stdout).toMatch(/^vm-1\s+stopped\s+qemu\s+10\.77\.0\.\d+\s+-\s+0B$/m);
    const again = await run(["create", "-f", file, "--json"]);
    expect(
      (JSON.parse(again.stdout) as { done: string[] }[]).every((row) => row.done.length === 0),
    ).toBe(true);
  });

  it("costs well under 1 MiB of disk per VM", async () => {
    const file = await fleet("small", "count: 20\n");
    expect((await run(["create", "-f", file])).code).toBe(0);
    const used = Number(
      (await exec("du", ["-s", "-B1", stateLayout(state).fleet("small").dir])).stdout.split(
        "\t",
      )[0],
    );
    expect(used / 20).toBeLessThan(1024 ** 2);
  });
});

describe("bad input to fleet commands", () => {
  it("a missing image: exit 2, one line, nothing created", async () => {
    const file = await fleet("noimage", "image: nosuch\n");
    const result = await run(["up", "-f", file]);
    expect(result.code).toBe(2);
    expect(result.stderr.trim().split("\n")).toEqual([
      "shoal: no image named nosuch; `shoal image ls` lists the images; `shoal image build` makes one",
    ]);
    expect(await readdir(stateLayout(state).fleet("noimage").dir).catch(() => [])).not.toContain(
      "state.json",
    );
  });

  it.each([
    ["a VM pattern that matches nothing", ["up", "web-*"], /no VM of this fleet matches "web-\*"/],
    ["--workers 0", ["up", "--workers", "0"], /--workers "0" is not a positive whole number/],
    [
      "--timeout soon",
      ["down", "--timeout", "soon"],
      /--timeout "soon" is not a positive whole number/,
    ],
    ["start before anything was created", ["start", "vm-1"], /fleet bad has no VMs yet/],
    ["an unknown --fleet", ["ps", "--fleet", "ghost"], /there is no fleet ghost on this host/],
    ["a --fleet that is no name", ["ps", "--fleet", "../x"], /--fleet "..\/x" is not a fleet name/],
  ])("%s: exit 2, one line, no stack trace", async (_what, args, message) => {
    const file = await fleet("bad", "count: 2\n");
    const [verb, ...rest] = args as [string, ...string[]];
    const result = await run([verb, "-f", file, ...rest]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(message);
    expect(result.stderr.trim().split("\n")).toHaveLength(1);
    await expect(stat(stateLayout(state).fleet("bad").state)).rejects.toThrow();
  });

  it("--dry-run, which fleet verbs do not take: exit 2, pointing to plan", async () => {
    const file = await fleet("dry", "count: 1\n");
    const result = await run(["--dry-run", "up", "-f", file]);
    expect(result.code).toBe(2);
    expect(result.stderr.trim()).toBe(
      "shoal: --dry-run does not apply to `shoal up`; `shoal plan` shows what `shoal up` would do to each VM",
    );
    await expect(stat(stateLayout(state).fleet("dry").dir)).rejects.toThrow();
  });

  it("a fleet larger than its network takes: exit 2 before anything is made", async () => {
    const file = await fleet("huge", "count: 24001\n");
    const result = await run(["create", "-f", file]);
    expect(result.code).toBe(2);
    // Refused while the file is read, so `validate` refuses it too.
    expect(result.stderr.trim()).toBe(
      `${file}:2:8 count: 24001 VMs are too many: a fleet's own network takes at most 24000 VMs (24 bridges of 1000); split the fleet into several fleets (each gets its own network)`,
    );
    await expect(stat(stateLayout(state).fleet("huge").state)).rejects.toThrow();
    const bridged = await fleet(
      "bridged",
      "count: 1024\nnetwork: { bridge: br-lab, managed: false }\n",
    );
    const onHostBridge = await run(["create", "-f", bridged]);
    expect(onHostBridge.code).toBe(2);
    expect(onHostBridge.stderr.trim()).toBe(
      `${bridged}:2:8 count: 1024 VMs are too many: a host bridge takes at most 1023 VMs; split the fleet into several fleets (each gets its own network)`,
    );
    await expect(stat(stateLayout(state).fleet("bridged").state)).rejects.toThrow();
  });

  it("more vCPUs or memory than this host can run: `up` refuses with the host's figures, before anything is made", async () => {
    const cpus = availableParallelism();
    const wide = await fleet("wide", `count: 1\nvm: { vcpus: ${cpus + 1} }\n`);
    const refused = await run(["up", "-f", wide]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(
      new RegExp(
        `^shoal: no room on this host: VM vm-1 has ${cpus + 1} vCPUs; this host has ${cpus} CPUs and \\d+ MiB of memory, \\d+ MiB of it available; give it at most ${cpus} vcpus:\n$`,
      ),
    );
    await expect(stat(stateLayout(state).fleet("wide").state)).rejects.toThrow();
    const many = await fleet("many", "count: 4000\nvm: { memory: 1G }\n");
    const tooMuch = await run(["up", "-f", many]);
    expect(tooMuch.code).toBe(2);
    expect(tooMuch.stderr).toMatch(
      /^shoal: no room on this host: the 4000 VMs to start have 4096000 MiB of memory together; this host has \d+ CPUs and \d+ MiB of memory, \d+ MiB of it available; start fewer VMs/,
    );
    await expect(stat(stateLayout(state).fleet("many").state)).rejects.toThrow();
    // `doctor` shows the same figures, and the shortfall for the fleet file.
    const doctor = await run(["doctor", "-f", many]);
    expect(doctor.stdout).toMatch(/room .*the 4000 VMs to start have 4096000 MiB/);
  });

  it("SHOAL_ACCEL with an unknown value", async () => {
    const file = await fleet("accel", "count: 1\n");
    const result = await shoal(["--state-dir", state, "create", "-f", file], {
      env: { SHOAL_ACCEL: "fast" },
    });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/SHOAL_ACCEL="fast" is not one of auto, kvm, tcg/);
  });

  it("SHOAL_TCG_CACHE that is not a size in whole MiB within QEMU's range", async () => {
    const file = await fleet("tcgcache", "count: 1\n");
    for (const value of ["big", "0", "1500K", "2G"]) {
      const result = await shoal(["--state-dir", state, "create", "-f", file], {
        env: { SHOAL_ACCEL: "tcg", SHOAL_TCG_CACHE: value },
      });
      expect(result.code).toBe(2);
      expect(result.stderr).toContain(
        `SHOAL_TCG_CACHE=${JSON.stringify(value)} is not a size from 1M to 1024M in whole MiB`,
      );
    }
    await expect(stat(stateLayout(state).fleet("tcgcache").state)).rejects.toThrow();
  });
});

describe("what the record does not cover", () => {
  it("a layer whose type or size changed is refused before anything changes", async () => {
    const file = await fleet("resize", "count: 1\n");
    expect((await run(["create", "-f", file])).code).toBe(0);
    const record = await readFile(stateLayout(state).fleet("resize").state, "utf8");
    await writeFile(file, "name: resize\ncount: 1\nvm: { layer: { size: 2G } }\n");
    const result = await run(["create", "-f", file]);
    expect(result.code).toBe(2);
    expect(result.stderr.trim()).toBe(
      "shoal: VM vm-1's layer cannot change from disk 1G to disk 2G in place; `shoal destroy vm-1` then `shoal up` makes it anew (its changes are lost), or keep the old layer settings",
    );
    expect(await readFile(stateLayout(state).fleet("resize").state, "utf8")).toBe(record);
    expect((await stat(stateLayout(state).fleet("resize").vm("vm-1").layer)).size).toBe(1024 ** 3);
  });

  it("a VM directory the record does not know is reported and left alone; destroy removes it", async () => {
    const file = await fleet("stray", "count: 1\n");
    expect((await run(["create", "-f", file])).code).toBe(0);
    const stray = stateLayout(state).fleet("stray").vm("old-vm");
    await mkdir(stray.dir);
    await writeFile(stray.layer, "someone's data");
    const again = await run(["create", "-f", file]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toContain(
      `shoal: ${stray.dir} is not in fleet stray's record and was left alone; \`shoal destroy old-vm\` removes it`,
    );
    expect(await readFile(stray.layer, "utf8")).toBe("someone's data");
    expect((await run(["destroy", "-f", file, "--yes"])).code).toBe(0);
    await expect(stat(stray.dir)).rejects.toThrow();
  });

  it("a temporary record file a killed shoal left is removed by the next command", async () => {
    const file = await fleet("temp", "count: 1\n");
    expect((await run(["create", "-f", file])).code).toBe(0);
    const dir = stateLayout(state).fleet("temp").dir;
    // pid 4194304 is above Linux's largest pid: that writer is certainly gone.
    const leftover = join(dir, ".state.json.4194304.0a1b2c3d.shoal-tmp");
    await writeFile(leftover, "{ half a rec");
    expect((await run(["ps", "-f", file])).code).toBe(0);
    await expect(stat(leftover)).rejects.toThrow();
  });
});

describe("shoal destroy", () => {
  it("removes a created fleet's every file, and says so", async () => {
    const file = await fleet("gone", "count: 2\n");
    expect((await run(["create", "-f", file])).code).toBe(0);
    const result = await run(["destroy", "-f", file, "--yes"]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout.trim()).toBe("destroyed 2 VMs and fleet gone");
    await expect(stat(stateLayout(state).fleet("gone").dir)).rejects.toThrow();
  });
});

describe("fleets on a host bridge", () => {
  const BRIDGED = "network: { subnet: 10.79.0.0/24, bridge: br-test, managed: false }\n";

  it("get host-wide tap names and no namespace of their own", async () => {
    const file = await fleet("hbone", `count: 2\n${BRIDGED}`);
    const created = await run(["create", "-f", file]);
    expect(created.code, created.stderr).toBe(0);
    const argv = JSON.parse(
      await readFile(stateLayout(state).fleet("hbone").vm("vm-2").qemuArgv, "utf8"),
    ) as string[];
    // QEMU runs in the host's namespace (no `ip netns exec`, only the drop to its user), on a tap
    // named for the fleet.
    expect(argv[0]).toBe("setpriv");
    expect(argv).toContain(
      `tap,id=net0,ifname=${hostTapName({ root: stateLayout(state).root, fleet: "hbone" }, 2)},script=no,downscript=no`,
    );
  });

  it("refuse an overlapping subnet on a host bridge, a move between networks and a missing bridge, before anything is written", async () => {
    const overlapping = await fleet(
      "hbtwo",
      "network: { subnet: 10.79.0.128/25, bridge: br-other, managed: false }\n",
    );
    const refused = await run(["create", "-f", overlapping]);
    expect(refused.code).toBe(2);
    expect(refused.stderr.trim().split("\n")).toEqual([
      "shoal: network.subnet 10.79.0.128/25 overlaps fleet hbone's 10.79.0.0/24 on host bridge br-test; fleets on host bridges share the host's routing and DHCP: give each its own subnet",
    ]);
    await expect(stat(stateLayout(state).fleet("hbtwo").state)).rejects.toThrow();
    // A fleet's own network is a namespace of its own: the same subnet is fine there.
    const isolated = await fleet("hbiso", "count: 1\nnetwork: { subnet: 10.79.0.0/24 }\n");
    expect((await run(["create", "-f", isolated])).code).toBe(0);

    const record = await readFile(stateLayout(state).fleet("hbone").state, "utf8");
    const moved = await fleet("hbone", "count: 2\nnetwork: { subnet: 10.79.0.0/24 }\n");
    const move = await run(["create", "-f", moved]);
    expect(move.code).toBe(2);
    expect(move.stderr).toContain(
      "fleet hbone's VMs are on host bridge br-test; network.bridge cannot move them to its own network in place",
    );
    // br-test exists nowhere: `up` says so before starting anything.
    const up = await run(["up", "-f", await fleet("hbone", `count: 2\n${BRIDGED}`)]);
    expect(up.code).toBe(2);
    expect(up.stderr.trim()).toBe(
      "shoal: network.bridge br-test does not exist on this host; make it first (`ip link add br-test type bridge`), or leave out bridge: for the fleet's own network",
    );
    expect(await readFile(stateLayout(state).fleet("hbone").state, "utf8")).toBe(record);
    for (const name of ["hbone", "hbiso"]) {
      expect((await run(["destroy", "--fleet", name, "--yes"])).code).toBe(0);
    }
  });

  it("refuse a fleet whose name hashes to the host interface names of another's", async () => {
    const seen = new Map<string, string>();
    let pair: [string, string] | undefined;
    for (let i = 0; pair === undefined; i++) {
      const name = `tag${i}`;
      const tag = fleetTag({ root: stateLayout(state).root, fleet: name });
      const other = seen.get(tag);
      if (other === undefined) seen.set(tag, name);
      else pair = [other, name];
    }
    const [first, second] = pair;
    const natted = await fleet(first, "count: 1\nnetwork: { nat: true }\n");
    expect((await run(["create", "-f", natted])).code).toBe(0);
    const bridged = await fleet(
      second,
      "count: 1\nnetwork: { subnet: 10.120.0.0/24, bridge: br-x, managed: false }\n",
    );
    const refused = await run(["create", "-f", bridged]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain(
      `fleet names ${second} and ${first} hash to the same host interface names or NAT link; rename one of the fleets`,
    );
    expect((await run(["destroy", "--fleet", first, "--yes"])).code).toBe(0);
  });
});

describe("a fleet's names in the host", () => {
  it("`up` refuses a namespace of the fleet's name that is not this state directory's, before making anything", async () => {
    const name = `squat${process.pid}`;
    const namespace = namespaceName({ root: stateLayout(state).root, fleet: name });
    await exec("ip", ["netns", "add", namespace]);
    try {
      const up = await run(["up", "-f", await fleet(name, "count: 1\n"), "--no-wait"]);
      expect(up.code).toBe(2);
      expect(up.stderr.trim()).toBe(
        `shoal: network namespace ${namespace} exists without shoal's owner mark: another program made it, or a shoal before owner marks; shoal neither uses nor removes it; remove it yourself if it is a leftover`,
      );
      await expect(stat(stateLayout(state).fleet(name).vms)).rejects.toThrow();
      await expect(stat(stateLayout(state).fleet(name).state)).rejects.toThrow();
      expect((await exec("ip", ["netns", "list"])).stdout).toContain(namespace);
    } finally {
      await exec("ip", ["netns", "del", namespace]);
    }
  });
});

/** A layer as shoal's init leaves it after the VM ran: its base's id, and what the VM changed. */
async function bootedLayer(
  path: string,
  baseId: string,
  extra: (upper: string) => Promise<void> = async () => {},
): Promise<void> {
  const tree = join(await tempDir(), "layer");
  for (const dir of ["upper/root/.ssh", "upper/etc/dropbear", "upper/srv", "work", "shoal"])
    await mkdir(join(tree, dir), { recursive: true });
  await writeFile(join(tree, "shoal/base-id"), `${baseId}\n`);
  await writeFile(join(tree, "upper/root/notes"), "mine\n");
  await writeFile(join(tree, "upper/srv/data"), "x".repeat(5000));
  // Written by the seed at every boot: identity, not the VM's changes.
  await writeFile(join(tree, "upper/etc/hostname"), "vm-1\n");
  await writeFile(join(tree, "upper/etc/dropbear/dropbear_ed25519_host_key"), "key");
  await writeFile(join(tree, "upper/root/.ssh/authorized_keys"), `${KEY}\n`);
  await exec("mknod", [join(tree, "upper/etc/os-release"), "c", "0", "0"]);
  await extra(join(tree, "upper"));
  await exec("mkfs.ext4", ["-q", "-F", "-L", "shoal-layer", "-d", tree, path, "64M"]);
}

describe("a stopped VM's layer: diff, reset, df", () => {
  it("`diff` lists the VM's own changes with sizes; `reset` empties the layer and keeps the identity", async () => {
    const file = await fleet("looked", "count: 2\nvm: { layer: { size: 64M } }\n");
    expect((await run(["create", "-f", file])).code).toBe(0);
    const image = JSON.parse((await run(["image", "inspect", "tiny"])).stdout) as { id: string };
    const vm1 = stateLayout(state).fleet("looked").vm("vm-1");
    await bootedLayer(vm1.layer, image.id);

    const diff = await run(["diff", "vm-1", "-f", file, "--json"]);
    expect(diff.code, diff.stderr).toBe(0);
    expect(JSON.parse(diff.stdout)).toEqual([
      { path: "/etc/os-release", change: "deleted", type: "file", size: 67 },
      { path: "/root/notes", change: "added", type: "file", size: 5 },
      { path: "/srv", change: "added", type: "dir", size: 0 },
      { path: "/srv/data", change: "added", type: "file", size: 5000 },
    ]);
    const table = await run(["diff", "vm-1", "-f", file]);
    expect(table.stdout).toMatch(/^added\s+file\s+4\.9K\s+\/srv\/data$/m);
    expect((await run(["diff", "vm-2", "-f", file])).stdout).toBe(
      "VM vm-2 has no changes of its own\n",
    );

    const df = JSON.parse((await run(["df", "-f", file, "--json"])).stdout) as {
      images: { name: string; vms: number; bytes: number }[];
      vms: { name: string; layerBytes: number; otherBytes: number }[];
      basesBytes: number;
      totalBytes: number;
      fullCopiesBytes: number;
      ratio: number;
    };
    const baseBytes = (await stat(stateLayout(state).image(image.id).base)).blocks * 512;
    expect(df.images).toEqual([{ name: "tiny", id: image.id, bytes: baseBytes, vms: 2 }]);
    expect(df.vms.map((vm) => vm.name)).toEqual(["vm-1", "vm-2"]);
    expect(df.vms[0]?.layerBytes).toBe((await stat(vm1.layer)).blocks * 512);
    expect(df.vms[0]?.layerBytes).toBeGreaterThan(df.vms[1]?.layerBytes ?? 0);
    const others = (df.vms[0]?.otherBytes ?? 0) + (df.vms[1]?.otherBytes ?? 0);
    const layers = (df.vms[0]?.layerBytes ?? 0) + (df.vms[1]?.layerBytes ?? 0);
    expect(df.totalBytes).toBe(baseBytes + layers + others);
    expect(df.fullCopiesBytes).toBe(2 * baseBytes + others);
    expect(df.ratio).toBeCloseTo(df.fullCopiesBytes / df.totalBytes, 6);
    expect((await run(["df", "-f", file])).stdout).toMatch(
      /^as full copies of the base: \S+ \(\d+\.\dx what shoal takes\)$/m,
    );

    const seed = await readFile(vm1.seed);
    const reset = await run(["reset", "vm-1", "-f", file, "--yes"]);
    expect(reset.code, reset.stderr).toBe(0);
    const layer = await stat(vm1.layer);
    expect(layer.size).toBe(64 * 1024 ** 2);
    expect(layer.blocks).toBe(0);
    expect(await readFile(vm1.seed)).toEqual(seed);
    expect((await run(["diff", "vm-1", "-f", file])).stdout).toBe(
      "VM vm-1 has no changes of its own\n",
    );
  });

  it("`image commit` folds a stopped VM's layer into a new base, without its identity", async () => {
    const file = await fleet("committed", "count: 2\nvm: { layer: { size: 64M } }\n");
    expect((await run(["create", "-f", file])).code).toBe(0);
    const tiny = JSON.parse((await run(["image", "inspect", "tiny"])).stdout) as { id: string };
    const vm1 = stateLayout(state).fleet("committed").vm("vm-1");
    // Names a guest may choose: a quote, a newline, an escape sequence, a byte that is not UTF-8.
    const weird = ['q"uote', "new\nline", "esc\u001b[31mred", "dir\nx"];
    await bootedLayer(vm1.layer, tiny.id, async (upper) => {
      for (const name of weird) await writeFile(join(upper, "srv", name), name);
      await writeFile(Buffer.from(`${upper}/srv/bad\xff`, "latin1"), "bad");
    });
    const layerSum = await exec("sha256sum", [vm1.layer]);

    const never = await run(["image", "commit", "never", "--from-vm", "vm-2", "-f", file]);
    expect(never.code).toBe(2);
    expect(never.stderr).toContain("VM vm-2 never booted: it has no changes to commit");

    const made = await run(["image", "commit", "vm1-image", "--from-vm", "vm-1", "-f", file]);
    expect(made.code, made.stderr).toBe(0);
    const image = JSON.parse((await run(["image", "inspect", "vm1-image"])).stdout) as {
      id: string;
      source: string;
    };
    expect(image.source).toMatch(/^VM vm-1 of fleet committed over tiny \([0-9a-f]{12}\)$/);
    const read = (path: string) =>
      exec("debugfs", ["-R", `cat ${path}`, stateLayout(state).image(image.id).base]).then(
        (result) => (result.stderr.includes("not found") ? undefined : result.stdout),
      );
    expect(await read("/root/notes")).toBe("mine\n");
    expect(await read("/srv/data")).toBe("x".repeat(5000));
    expect(await read("/etc/os-release")).toBeUndefined();
    // Identity stays with the VM: its hostname, host key and authorized_keys are not in the image.
    expect(await read("/etc/hostname")).toBeUndefined();
    expect(await read("/etc/dropbear/dropbear_ed25519_host_key")).toBeUndefined();
    expect(await read("/root/.ssh/authorized_keys")).toBeUndefined();
    expect(await read("/etc/inittab")).toContain("::sysinit:");
    const srv = await new Ext4Image(
      new ProcessRunner(),
      stateLayout(state).image(image.id).base,
    ).list("/srv");
    expect(srv?.map((entry) => [entry.name, entry.size]).sort()).toEqual(
      [
        ...weird.map((name) => [name, Buffer.byteLength(name)]),
        ["bad\udcff", 3],
        ["data", 5000],
      ].sort(),
    );
    // The VM's layer is only read; the image holds its files and nothing else.
    expect(await exec("sha256sum", [vm1.layer])).toEqual(layerSum);
    expect((await readdir(stateLayout(state).image(image.id).dir)).sort()).toEqual([
      "base.img",
      "image.json",
      "initrd.img",
      "vmlinuz",
    ]);
  });

  it("refuses a tmpfs layer and an unknown VM, changing nothing", async () => {
    const file = await fleet(
      "refused",
      "count: 2\nvms: [{ name: vm-2, layer: { type: tmpfs } }]\n",
    );
    expect((await run(["create", "-f", file])).code).toBe(0);
    const tmpfs = await run(["diff", "vm-2", "-f", file]);
    expect(tmpfs.code).toBe(2);
    expect(tmpfs.stderr).toMatch(/VM vm-2 has a tmpfs layer: its changes live in its memory/);
    const unknown = await run(["reset", "vm-9", "-f", file, "--yes"]);
    expect(unknown.code).toBe(2);
    // Every VM is checked before any layer goes: vm-1 keeps its layer when vm-2 cannot be reset.
    const vm1 = stateLayout(state).fleet("refused").vm("vm-1");
    await writeFile(vm1.layer, "not empty");
    const both = await run(["reset", "vm-1", "vm-2", "-f", file, "--yes"]);
    expect(both.code).toBe(2);
    expect(await readFile(vm1.layer, "utf8")).toBe("not empty");
  });
});

describe("shoal upgrade, on stopped VMs", () => {
  let tiny: string;
  let moved: string;

  beforeAll(async () => {
    const derived = await run([
      "image",
      "derive",
      "tiny-moved",
      "--from",
      "tiny",
      "--run",
      "echo '# moved' >> /etc/inittab",
    ]);
    expect(derived.code, derived.stderr).toBe(0);
    const idOf = async (name: string) =>
      (JSON.parse((await run(["image", "inspect", name])).stdout) as { id: string }).id;
    tiny = await idOf("tiny");
    moved = await idOf("tiny-moved");
  }, 120_000);

  /** Three stopped VMs: vm-1 edited /etc/inittab (which the new base also changed), vm-2 only wrote its own files. */
  async function conflictingFleet(name: string) {
    const file = await fleet(name, "count: 3\nvm: { layer: { size: 64M } }\n");
    expect((await run(["create", "-f", file])).code).toBe(0);
    const paths = stateLayout(state).fleet(name);
    const tree = join(await tempDir(), "layer");
    for (const dir of ["upper/etc", "work", "shoal"])
      await mkdir(join(tree, dir), { recursive: true });
    await writeFile(join(tree, "shoal/base-id"), `${tiny}\n`);
    await writeFile(join(tree, "upper/etc/inittab"), "::sysinit:/bin/mine\n");
    await exec("mkfs.ext4", [
      "-q",
      "-F",
      "-L",
      "shoal-layer",
      "-d",
      tree,
      paths.vm("vm-1").layer,
      "64M",
    ]);
    await bootedLayer(paths.vm("vm-2").layer, tiny);
    const layerSum = (await exec("sha256sum", [paths.vm("vm-1").layer])).stdout;
    return { file, paths, layerSum };
  }

  async function upgradeReports(...args: string[]) {
    const done = await run(["upgrade", ...args, "--image", "tiny-moved", "--json"]);
    expect(done.code, done.stderr).toBe(0);
    const reports = JSON.parse(done.stdout) as {
      name: string;
      outcome: string;
      conflicts: { path: string }[];
    }[];
    return reports.map((report) => [
      report.name,
      report.outcome,
      report.conflicts.map((c) => c.path),
    ]);
  }

  async function recordedBases(paths: ReturnType<ReturnType<typeof stateLayout>["fleet"]>) {
    const record = JSON.parse(await readFile(paths.state, "utf8")) as {
      vms: Record<string, { baseId: string; spec: { image: string } }>;
    };
    return Object.entries(record.vms).map(([vm, entry]) => [vm, entry.spec.image, entry.baseId]);
  }

  it("reports conflicts with --dry-run, changing nothing, then moves every VM to the new base", async () => {
    const { file, paths, layerSum } = await conflictingFleet("moving");
    const record = await readFile(paths.state, "utf8");

    const dry = await run(["--dry-run", "upgrade", "-f", file, "--image", "tiny-moved"]);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toBe(
      [
        "vm-1: its layer hides 1 file the new base changed (--conflicts proceed: it keeps its own versions):",
        "  modified /etc/inittab",
        "vm-2: no conflicts",
        "vm-3: no conflicts",
        `would move 3 VMs to image tiny-moved (${moved.slice(0, 12)}), 1 at a time`,
        "",
      ].join("\n"),
    );
    expect(dry.stderr).toContain("the fleet file still names image tiny: change it to tiny-moved");
    expect((await exec("sha256sum", [paths.vm("vm-1").layer])).stdout).toBe(layerSum);
    expect(await readFile(paths.state, "utf8")).toBe(record);

    expect(await upgradeReports("-f", file)).toEqual([
      ["vm-1", "upgraded", ["/etc/inittab"]],
      ["vm-2", "upgraded", []],
      ["vm-3", "upgraded", []],
    ]);
    expect(await recordedBases(paths)).toEqual(
      ["vm-1", "vm-2", "vm-3"].map((vm) => [vm, "tiny-moved", moved]),
    );
    for (const vm of ["vm-1", "vm-2", "vm-3"]) {
      expect(await readFile(paths.vm(vm).qemuArgv, "utf8")).toContain(`${moved}/base.img`);
    }
    // The layers are kept as they were.
    expect((await exec("sha256sum", [paths.vm("vm-1").layer])).stdout).toBe(layerSum);
    const again = await run(["upgrade", "-f", file, "--image", "tiny-moved"]);
    expect(again.stdout).toBe("every VM of fleet moving boots from image tiny-moved already\n");
  });

  it("--conflicts skip leaves a conflicting VM on its base; --conflicts reset empties its layer and moves it", async () => {
    const { file, paths, layerSum } = await conflictingFleet("policies");
    expect(await upgradeReports("-f", file, "--conflicts", "skip")).toEqual([
      ["vm-1", "skipped", ["/etc/inittab"]],
      ["vm-2", "upgraded", []],
      ["vm-3", "upgraded", []],
    ]);
    expect(await recordedBases(paths)).toEqual([
      ["vm-1", "tiny", tiny],
      ["vm-2", "tiny-moved", moved],
      ["vm-3", "tiny-moved", moved],
    ]);
    expect((await exec("sha256sum", [paths.vm("vm-1").layer])).stdout).toBe(layerSum);
    expect(await readFile(paths.vm("vm-1").qemuArgv, "utf8")).toContain(`${tiny}/base.img`);

    expect(await upgradeReports("-f", file, "--conflicts", "reset")).toEqual([
      ["vm-1", "upgraded", ["/etc/inittab"]],
    ]);
    expect((await recordedBases(paths))[0]).toEqual(["vm-1", "tiny-moved", moved]);
    const diff = await run(["diff", "vm-1", "-f", file]);
    expect(diff.code, diff.stderr).toBe(0);
    expect(diff.stdout).toContain("no changes of its own");
  });
});

import { spawn } from "node:child_process";
import { chmod, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ImageMeta } from "../../src/image/store.js";
import { stateLayout } from "../../src/state/layout.js";
import { destroyAllFleets, SHOAL, shoal, shoalOk } from "../helpers/cli.js";
import { sharedImage } from "../helpers/images.js";
import { useFileTempDir } from "../helpers/tmp.js";
import { killQemusMentioning, sha256 } from "../helpers/vm.js";

/**
 * A fleet of Debian VMs moved to a base with one more package, the way a user does it: derive the
 * new base with apt-get, look at the conflicts, upgrade a few VMs at a time (real QEMU, software
 * emulation), survive a SIGKILL half-way.
 */

const stateDir = useFileTempDir("shoal-upgrade-");
let state: string;
let file: string;
let debSum: string;
const images: Record<string, ImageMeta> = {};
// Three: one moved, one down and owed its start, one untouched when the SIGKILL comes.
const VMS = ["up-1", "up-2", "up-3"];
/** A small package the base does not have, and the file it brings. */
const PACKAGE = "tree";
const PACKAGE_FILE = "/usr/bin/tree";

function ok(...args: string[]): Promise<string> {
  return shoalOk(state, args);
}

async function inspect(name: string): Promise<ImageMeta> {
  images[name] = JSON.parse(await ok("image", "inspect", name)) as ImageMeta;
  return images[name];
}

/** Each VM's answer to a shell line (over SSH). */
async function answers(line: string): Promise<Record<string, string>> {
  const outcomes = JSON.parse(await ok("exec", "-f", file, "--all", "--json", "--", line)) as {
    name: string;
    stdout: string;
  }[];
  return Object.fromEntries(outcomes.map((outcome) => [outcome.name, outcome.stdout.trim()]));
}

async function recorded() {
  return (
    JSON.parse(await readFile(stateLayout(state).fleet("upg").state, "utf8")) as {
      vms: Record<string, { baseId?: string; upgrading?: boolean }>;
    }
  ).vms;
}

async function baseIds(): Promise<Record<string, string | undefined>> {
  const vms = await recorded();
  return Object.fromEntries(VMS.map((vm) => [vm, vms[vm]?.baseId]));
}

async function upgrading(): Promise<Record<string, boolean | undefined>> {
  const vms = await recorded();
  return Object.fromEntries(VMS.map((vm) => [vm, vms[vm]?.upgrading]));
}

beforeAll(async () => {
  state = stateDir();
  await chmod(state, 0o755);
  await sharedImage(state, "deb", { from: "debian:bookworm" });
  debSum = await sha256(stateLayout(state).image((await inspect("deb")).id).base);
  file = join(state, "upg.yaml");
  await writeFile(
    file,
    "name: upg\ncount: 3\nvm: { name: 'up-{n}', image: deb, memory: 512M, layer: { size: 1G } }\n",
  );
  // The new base is derived while the fleet boots on the old one (the derive waits on the
  // network, the boots on the CPU): one more package, and a setting the VMs' SSH server reads
  // changed.
  await Promise.all([
    ok(
      "image",
      "derive",
      "deb-next",
      "--from",
      "deb",
      "--run",
      `apt-get update -q && apt-get install -y -q --no-install-recommends ${PACKAGE} && apt-get clean && echo '# deb-next' >> /etc/ssh/sshd_config`,
    ).then(() => inspect("deb-next")),
    ok("up", "-f", file, "--workers", "3").then(() => ok("wait", "-f", file, "--timeout", "300")),
  ]);
});

afterAll(async () => {
  await destroyAllFleets(state);
  await killQemusMentioning(state);
});

describe("upgrading a fleet to a new base", () => {
  it("`--dry-run` names the VM whose edited file the new base also changed, changing nothing", async () => {
    await ok("exec", "-f", file, "--all", "--", "echo $(hostname) > /root/own && sync");
    await ok(
      "exec",
      "-f",
      file,
      "up-2",
      "--",
      "echo 'ClientAliveInterval 30' >> /etc/ssh/sshd_config && sync",
    );
    const before = await baseIds();
    const dry = await shoal([
      "--state-dir",
      state,
      "--dry-run",
      "upgrade",
      "-f",
      file,
      "--image",
      "deb-next",
      "--json",
    ]);
    expect(dry.code, dry.stderr).toBe(0);
    const rows = JSON.parse(dry.stdout) as { name: string; conflicts: { path: string }[] }[];
    expect(rows.map((row) => [row.name, row.conflicts.map((c) => c.path)])).toEqual([
      ["up-1", []],
      ["up-2", ["/etc/ssh/sshd_config"]],
      ["up-3", []],
    ]);
    expect(await baseIds()).toEqual(before);
    expect(Object.values(before).every((id) => id === images.deb?.id)).toBe(true);
  });

  it("a SIGKILL half-way leaves every VM on one base or the other; the next upgrade finishes", async () => {
    const child = spawn(
      process.execPath,
      [SHOAL, "--state-dir", state, "upgrade", "-f", file, "--image", "deb-next"],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    let stderr = "";
    child.stderr.on("data", (chunk) => {
      stderr += chunk;
      // The first VM is back on the new base; the second is down.
      if (/up-1: ready[\s\S]*up-2: stopped/.test(stderr)) child.kill("SIGKILL");
    });
    const signal = await new Promise<NodeJS.Signals | null>((resolve) =>
      child.on("close", (_code, signal) => resolve(signal)),
    );
    expect(signal, stderr).toBe("SIGKILL");
    const half = Object.values(await baseIds());
    for (const id of half) expect([images.deb?.id, images["deb-next"]?.id]).toContain(id);
    expect(half.filter((id) => id === images["deb-next"]?.id).length).toBeGreaterThan(0);
    expect(half.filter((id) => id === images.deb?.id).length).toBeGreaterThan(0);
    // up-2 is down, and the record says the upgrade owes it a start.
    expect((await upgrading())["up-2"]).toBe(true);
    const down = JSON.parse(await ok("ps", "-f", file, "--json")) as { state: string }[];
    expect(down.map((row) => row.state)).toEqual(["running", "stopped", "running"]);

    const reports = JSON.parse(
      // The rest at once: up-2's owed start and up-3's move.
      await ok(
        "upgrade",
        "-f",
        file,
        "--image",
        "deb-next",
        "--max-unavailable",
        "2",
        "--timeout",
        "600",
        "--json",
      ),
    ) as { name: string; outcome: string }[];
    expect(reports.length).toBeGreaterThan(0);
    expect(reports.every((report) => report.outcome === "upgraded")).toBe(true);
    expect(Object.values(await baseIds())).toEqual(VMS.map(() => images["deb-next"]?.id));
    expect(Object.values(await upgrading())).toEqual(VMS.map(() => undefined));
    const ps = JSON.parse(await ok("ps", "-f", file, "--json")) as { state: string }[];
    expect(ps.map((row) => row.state)).toEqual(VMS.map(() => "running"));
  });

  it("every VM has the package from its base, kept its own files, and holds no copy of the package", async () => {
    await ok("wait", "-f", file, "--timeout", "300");
    expect(
      await answers(
        `test -x ${PACKAGE_FILE} && echo has-${PACKAGE}; cat /root/own; test -e /run/shoal/layer/upper${PACKAGE_FILE} && echo copied; grep -c '^ClientAliveInterval 30' /etc/ssh/sshd_config || true`,
      ),
    ).toEqual(
      Object.fromEntries(
        VMS.map((vm) => [vm, `has-${PACKAGE}\n${vm}\n${vm === "up-2" ? "1" : "0"}`]),
      ),
    );
    expect(await sha256(stateLayout(state).image(images.deb?.id ?? "").base)).toBe(debSum);
  });
});

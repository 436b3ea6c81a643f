import { execFile } from "node:child_process";
import { chmod, chown, mkdir, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";
import { stateLayout } from "../../src/state/layout.js";
import { shoal } from "../helpers/cli.js";
import { useFileTempDir, useTempDirs } from "../helpers/tmp.js";

/**
 * The state directory is shoal's own: one others can change is refused, and links planted in it
 * are never followed when shoal writes, removes or runs what it holds.
 */

const tempDir = useTempDirs();
const imageState = useFileTempDir("shoal-trust-");
const env = { SHOAL_ACCEL: "tcg" };
let images: string;

beforeAll(async () => {
  images = imageState();
  const built = await shoal(["--state-dir", images, "image", "build", "tiny", "--from", "busybox"]);
  expect(built.code, built.stderr).toBe(0);
});

/** A state directory of its own holding a copy of the tiny image, in a directory the test watches. */
async function stateWithImage(): Promise<{ state: string; around: string }> {
  const around = await tempDir();
  const state = join(around, "state");
  await promisify(execFile)("cp", ["-a", images, state]);
  return { state, around };
}

async function fleetFile(dir: string, text: string): Promise<string> {
  const path = join(dir, "shoal.yaml");
  await writeFile(path, text);
  return path;
}

/** A refusal as the user sees it: exit 2, one line, no stack trace. */
function expectRefused(result: { code: number | null; stderr: string }, text: string): void {
  expect(result.code, result.stderr).toBe(2);
  expect(result.stderr).toContain(text);
  expect(result.stderr.trim().split("\n")).toHaveLength(1);
  expect(result.stderr).not.toContain("internal error");
}

describe("a state directory others could change, or that is no directory", () => {
  it("is refused with the fix, and nothing is made in it", async () => {
    const dir = await tempDir();
    const open = join(dir, "open");
    await mkdir(open);
    await chmod(open, 0o1777);
    expectRefused(
      await shoal(["--state-dir", open, "image", "ls"]),
      `state directory ${open} is writable by other users; it must be owned by root and writable by no other user: \`chown root:root ${open} && chmod go-w ${open}\``,
    );
    const foreign = join(dir, "foreign");
    await mkdir(foreign);
    await chown(foreign, 65534, 65534);
    expectRefused(
      await shoal(["--state-dir", foreign, "image", "ls"]),
      `state directory ${foreign} is owned by uid 65534`,
    );
    // Under a directory others may write (and not sticky), the state directory itself could be replaced.
    const shared = join(dir, "shared");
    await mkdir(shared);
    await chmod(shared, 0o777);
    expectRefused(
      await shoal(["--state-dir", join(shared, "state"), "ps", "--fleet", "lab"]),
      `is below ${shared}, which is writable by other users`,
    );
    expect(await readdir(open)).toEqual([]);
    expect(await readdir(shared)).toEqual([]);
    const file = join(dir, "file");
    await writeFile(file, "");
    expectRefused(await shoal(["--state-dir", file, "image", "ls"]), "is not a directory");
    expectRefused(
      await shoal(["--state-dir", join(file, "below"), "image", "ls"]),
      `${file} is not a directory`,
    );
  });

  it("in /proc, /sys or /dev, or empty, is refused at once", async () => {
    for (const [dir, where] of [
      ["/proc/self/shoal", "proc"],
      ["/proc/1", "proc"],
      ["/sys/kernel/shoal", "sysfs"],
      ["/dev/shoal", "/dev"],
    ] as const) {
      const started = Date.now();
      expectRefused(await shoal(["--state-dir", dir, "image", "ls"]), `is in ${where}`);
      expect(Date.now() - started).toBeLessThan(10_000);
    }
    expectRefused(
      await shoal(["image", "ls"], { env: { SHOAL_STATE_DIR: "" } }),
      "the state directory is empty",
    );
  });
});

describe("links planted in the state directory", () => {
  it("are not written through: the fleet's lock and a VM's definition", async () => {
    const { state, around } = await stateWithImage();
    const file = await fleetFile(around, "name: trap\ncount: 1\n");
    expect((await shoal(["--state-dir", state, "create", "-f", file], { env })).code).toBe(0);
    const paths = stateLayout(state).fleet("trap");
    const precious = join(around, "precious");
    await writeFile(precious, "precious\n");

    await rm(paths.lock);
    await symlink(precious, paths.lock);
    const locked = await shoal(["--state-dir", state, "ps", "-f", file]);
    expect(locked.code).toBe(0);
    const changing = await shoal(["--state-dir", state, "create", "-f", file], { env });
    expect(changing.code).toBe(1);
    expect(changing.stderr).toContain(`the lock ${paths.lock} is a symbolic link`);
    expect(await readFile(precious, "utf8")).toBe("precious\n");
    await rm(paths.lock);

    // A changed spec redefines the VM: its definition is written anew.
    const definition = paths.vm("vm-1").qemuArgv;
    await rm(definition);
    await symlink(precious, definition);
    await writeFile(file, "name: trap\ncount: 1\nvm: { memory: 96M }\n");
    const redefined = await shoal(["--state-dir", state, "create", "-f", file], { env });
    expect(redefined.code).toBe(1);
    expect(redefined.stderr).toContain(`${definition} is a symbolic link`);
    expect(await readFile(precious, "utf8")).toBe("precious\n");
  });

  it("are not followed when removing: an image name, a record key, a fleet directory", async () => {
    const { state, around } = await stateWithImage();
    const victim = join(around, "victim");
    await mkdir(victim);
    await writeFile(join(victim, "keep"), "keep\n");

    // An image name that points outside the store: nothing it points to is removed.
    await symlink("../../../victim", join(stateLayout(state).imageNames, "evil"));
    const removed = await shoal(["--state-dir", state, "image", "rm", "evil"]);
    expect(removed.code).toBe(1);
    expect(removed.stderr).toContain("not to an image of this store");
    expect(await readdir(victim)).toEqual(["keep"]);
    await rm(join(stateLayout(state).imageNames, "evil"));

    // A record whose VM key climbs out of the fleet's directory.
    const file = await fleetFile(around, "name: keys\ncount: 1\n");
    expect((await shoal(["--state-dir", state, "create", "-f", file], { env })).code).toBe(0);
    const record = stateLayout(state).fleet("keys").state;
    const parsed = JSON.parse(await readFile(record, "utf8")) as {
      vms: Record<string, { spec: { name: string } }>;
    };
    const entry = parsed.vms["vm-1"];
    if (!entry) throw new Error("vm-1 was not recorded");
    parsed.vms["../../../../victim"] = entry;
    await writeFile(record, JSON.stringify(parsed));
    const destroyed = await shoal(["--state-dir", state, "destroy", "--fleet", "keys", "--yes"]);
    expect(destroyed.code).toBe(1);
    expect(destroyed.stderr).toContain("is not one shoal can read");
    expect(await readdir(victim)).toEqual(["keep"]);

    // A fleet directory replaced by a link to somewhere else, holding a VM of the same name.
    await mkdir(join(victim, "vms", "vm-1"), { recursive: true });
    await writeFile(join(victim, "vms", "vm-1", "keep"), "keep\n");
    await writeFile(
      join(victim, "state.json"),
      JSON.stringify({ ...parsed, fleet: "moved", vms: { "vm-1": entry } }),
    );
    await symlink(victim, join(stateLayout(state).fleets, "moved"));
    const linked = await shoal(["--state-dir", state, "destroy", "--fleet", "moved", "--yes"]);
    expect(linked.code).toBe(1);
    expect(linked.stderr).toContain("is a symbolic link");
    expect(await readdir(join(victim, "vms", "vm-1"))).toEqual(["keep"]);
  });
});

describe("a record made by an earlier shoal", () => {
  it("with a kernel parameter shoal now refuses: start names it and the fix", async () => {
    const { state, around } = await stateWithImage();
    const file = await fleetFile(around, "name: old\ncount: 1\n");
    expect((await shoal(["--state-dir", state, "create", "-f", file], { env })).code).toBe(0);
    const record = stateLayout(state).fleet("old").state;
    const parsed = JSON.parse(await readFile(record, "utf8")) as {
      vms: Record<string, { spec: { kernelArgs: string[] } }>;
    };
    const entry = parsed.vms["vm-1"];
    if (!entry) throw new Error("vm-1 was not recorded");
    entry.spec.kernelArgs = ["console=tty0"];
    await writeFile(record, JSON.stringify(parsed));
    // One VM's failure, as any VM that cannot start: the others would still be started.
    const started = await shoal(["--state-dir", state, "start", "vm-1", "-f", file], { env });
    expect(started.code, started.stderr).toBe(1);
    expect(started.stdout).toContain(
      'VM vm-1 was made with kernel_args "console=tty0", which shoal no longer takes: console is set by shoal',
    );
    expect(started.stderr).not.toContain("internal error");
  });
});

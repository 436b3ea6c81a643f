import { execFile, spawnSync } from "node:child_process";
import { chmod, lstat, mkdir, readdir, readFile, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";
import { FleetReach } from "../../src/fleet/reach.js";
import type { FleetSession } from "../../src/fleet/session.js";
import { type Command, ProcessRunner, type Runner } from "../../src/host/runner.js";
import { ensureClientKey } from "../../src/identity/identity.js";
import { useFileTempDir, useTempDirs } from "../helpers/tmp.js";

/**
 * `shoal cp VM:/path DEST` against a guest that lies. The host's real scp receives; what it
 * receives comes from a hostile sender (scp -S runs a script in place of ssh that speaks the scp
 * protocol the way a malicious guest could), or, for what no honest scp could ever write (links,
 * FIFOs, devices), from a stand-in for scp that writes those straight into its target.
 */

const run = promisify(execFile);
const tempDir = useTempDirs();
const fileDir = useFileTempDir("shoal-cp-");
const VM = { name: "vm-1", ip: "10.77.0.2" };

/** Sends the records of $RECORDS, one per line (printf %b escapes), each after the receiver's ack. */
const HOSTILE_SENDER = `#!/bin/bash
ack() { head -c1 >/dev/null; }
ack
while IFS= read -r line <&3; do
  printf '%b' "$line"
  ack
done 3< "$RECORDS"
`;

let sender: string;
let sent = 0;

beforeAll(async () => {
  sender = join(fileDir(), "hostile-sender");
  await writeFile(sender, HOSTILE_SENDER, { mode: 0o755 });
});

/** A runner whose scp talks to a hostile sender instead of a VM's ssh. */
function sends(records: readonly string[]): Runner {
  const real = new ProcessRunner();
  const file = join(fileDir(), `records-${++sent}`);
  return {
    async run(command: Command) {
      const [program, ...rest] = command.argv;
      if (program !== "scp") throw new Error(`unexpected command ${program}`);
      await writeFile(file, records.map((record) => `${record}\n`).join(""));
      return real.run({
        ...command,
        argv: ["scp", "-S", sender, ...rest],
        env: { ...command.env, RECORDS: file },
      });
    },
  };
}

/** A runner whose "scp" is a script that writes into its target (its last argument) directly. */
function arrives(script: string): Runner {
  const real = new ProcessRunner();
  return {
    run(command: Command) {
      const [program, ...rest] = command.argv;
      if (program !== "scp") throw new Error(`unexpected command ${program}`);
      return real.run({
        ...command,
        argv: ["bash", "-euc", `target="\${@: -1}"; ${script}`, "scp", ...rest],
      });
    },
  };
}

async function reachOver(runner: Runner): Promise<FleetReach> {
  const keys = await tempDir();
  await ensureClientKey(keys, "cp-test");
  const knownHosts = join(keys, "known_hosts");
  await writeFile(knownHosts, "");
  const session = {
    fleet: "cp-test",
    paths: { clientKeys: keys, knownHosts },
    network: { namespace: undefined },
    entry: (name: string) => {
      if (name !== VM.name) throw new Error(`no VM ${name}`);
      return { spec: { ip: VM.ip } };
    },
  } as unknown as FleetSession;
  return FleetReach.open(runner, session);
}

async function fetchWith(runner: Runner, path: string, dest: string, options = {}) {
  const reach = await reachOver(runner);
  return reach.copy({ target: reach.target(VM.name), path }, dest, options);
}

/** Every path under `dir` (relative) with its type and permission bits, as `ls -l` would show. */
async function tree(dir: string): Promise<Record<string, string>> {
  const { stdout } = await run("find", [dir, "-mindepth", "1", "-printf", "%P\\0%M\\0"]);
  const fields = stdout.split("\0");
  const listing: Record<string, string> = {};
  for (let i = 0; i + 1 < fields.length; i += 2) listing[fields[i] ?? ""] = fields[i + 1] ?? "";
  return listing;
}

describe("files from a guest that speaks scp's protocol with hostile intent", () => {
  it("land without setuid, setgid or sticky bits; other modes and times are kept", async () => {
    const dest = await tempDir();
    const records = [
      "T1000000000 0 1000000000 0\\n",
      "D6777 0 d\\n",
      "C4755 3 suid\\n",
      "hi\\n\\0",
      "C2750 3 sgid\\n",
      "hi\\n\\0",
      "C1640 3 sticky\\n",
      "hi\\n\\0",
      "T1000000000 0 1000000000 0\\n",
      "C0604 3 plain\\n",
      "hi\\n\\0",
      "E\\n",
    ];
    await fetchWith(sends(records), "/d", dest);
    expect(await tree(dest)).toEqual({
      d: "drwxrwxrwx",
      "d/suid": "-rwxr-xr-x",
      "d/sgid": "-rwxr-x---",
      "d/sticky": "-rw-r-----",
      "d/plain": "-rw----r--",
    });
    expect((await stat(join(dest, "d", "plain"))).mtimeMs).toBe(1_000_000_000_000);
    expect((await stat(join(dest, "d"))).mtimeMs).toBe(1_000_000_000_000);
  });

  it("never escapes the destination by a name with a slash, '.' or '..' (scp itself refuses them)", async () => {
    const parent = await tempDir();
    const dest = join(parent, "dest");
    await mkdir(dest);
    for (const records of [
      ["C0644 3 ../x\\n", "hi\\n\\0"],
      ["D0755 0 ..\\n", "C0644 3 x\\n", "hi\\n\\0", "E\\n"],
      ["D0755 0 d\\n", "D0755 0 ..\\n", "D0755 0 ..\\n", "C0644 3 x\\n", "hi\\n\\0", "E\\n"],
      ["D0777 0 .\\n", "C4755 3 x\\n", "hi\\n\\0", "E\\n"],
      ["C0644 3 /tmp/x\\n", "hi\\n\\0"],
    ]) {
      await expect(fetchWith(sends(records), "/d", dest)).rejects.toThrow(/unexpected filename/);
    }
    // What arrived before the refusal lands, as with scp: the empty d of the third sender.
    expect(await tree(parent)).toEqual({ dest: "drwxr-xr-x", "dest/d": "drwxr-xr-x" });
  });

  it("refuses a name that was not asked for (.bashrc for app.log) and places nothing", async () => {
    const dest = await tempDir();
    const records = ["C0644 3 app.log\\n", "ok\\n\\0", "C0755 4 .bashrc\\n", "id\\n\\n\\0"];
    const copy = fetchWith(sends(records), "/var/log/app.log", dest);
    await expect(copy).rejects.toThrow(/sent \.bashrc, which was not asked for.*nothing copied/);
    expect(await readdir(dest)).toEqual([]);
  });

  it("accepts every name a requested pattern matches", async () => {
    const dest = await tempDir();
    const records = ["C0644 2 a.log\\n", "a\\n\\0", "C0644 2 b.log\\n", "b\\n\\0"];
    await fetchWith(sends(records), "/var/log/*.log", dest);
    expect(await tree(dest)).toEqual({ "a.log": "-rw-r--r--", "b.log": "-rw-r--r--" });
  });

  it("never descends through a link already in the destination, nor writes through one", async () => {
    const dest = await tempDir();
    const outside = await tempDir();
    await writeFile(join(outside, "f"), "theirs\n");
    await mkdir(join(dest, "d"));
    await symlink(outside, join(dest, "d", "link"));
    await symlink(join(outside, "f"), join(dest, "d", "f"));
    const records = [
      "D0755 0 d\\n",
      "D1777 0 link\\n",
      "C4755 3 planted\\n",
      "hi\\n\\0",
      "E\\n",
      "C4755 4 f\\n",
      "new\\n\\0",
      "C0644 3 fresh\\n",
      "hi\\n\\0",
      "E\\n",
    ];
    const copy = fetchWith(sends(records), "/d", dest).catch((error: Error) => error);
    const outcome = await copy;
    expect(await readdir(outside)).toEqual(["f"]);
    expect(await readFile(join(outside, "f"), "utf8")).toBe("theirs\n");
    expect((await stat(outside)).mode & 0o7777).toBe(0o700);
    expect((await stat(join(outside, "f"))).mode & 0o7777).toBe(0o644);
    expect(String(outcome)).toMatch(/d\/link is a symbolic link/);
    // Refused before anything moved: the rest of the copy is not there either.
    expect((await readdir(join(dest, "d"))).sort()).toEqual(["f", "link"]);
  });
  it("merges into a directory that is there without taking the guest's mode for it", async () => {
    const dest = await tempDir();
    await mkdir(join(dest, "d"), { mode: 0o700 });
    await writeFile(join(dest, "d", "f"), "old\n");
    await writeFile(join(dest, "d", "mine"), "kept\n");
    const records = ["D1777 0 d\\n", "C0644 4 f\\n", "new\\n\\0", "E\\n"];
    await fetchWith(sends(records), "/d", dest);
    expect((await stat(join(dest, "d"))).mode & 0o7777).toBe(0o700);
    expect(await readFile(join(dest, "d", "f"), "utf8")).toBe("new\n");
    expect(await readFile(join(dest, "d", "mine"), "utf8")).toBe("kept\n");
  });
});

describe("what only a broken scp could write, found before anything is placed", () => {
  it("refuses FIFOs, sockets, devices, links and hard links to files elsewhere; nothing lands", async () => {
    const dest = await tempDir();
    const outside = await tempDir();
    const victim = join(outside, "victim");
    await writeFile(victim, "x");
    await chmod(victim, 0o4755);
    const script = [
      'mkdir -m 4777 "$target/d"',
      'mkfifo "$target/d/fifo"',
      'mknod "$target/d/null" c 1 3',
      'mknod "$target/d/loop" b 7 0',
      `node -e 'require("net").createServer().listen(process.argv[1], () => process.exit(0))' "$target/d/socket"`,
      'ln -s /etc "$target/d/etc"',
      `ln ${victim} "$target/d/hard"`,
      'echo hi > "$target/d/plain"',
    ].join("; ");
    const outcome = await fetchWith(arrives(script), "/d", dest).catch((error: Error) => error);
    expect(await readdir(dest)).toEqual([]);
    // The hard link's other name keeps its mode: shoal changed nothing through it.
    expect((await stat(victim)).mode & 0o7777).toBe(0o4755);
    expect(String(outcome)).toMatch(
      /refused: .*d\/etc is a symbolic link.*d\/fifo is a FIFO.*nothing copied/,
    );
  });

  it("refuses names shoal keeps for its scratch directories, wherever they are", async () => {
    const dest = await tempDir();
    const copy = fetchWith(
      arrives('mkdir -p "$target/d/e"; echo hi > "$target/d/e/.cp.1.ab.shoal-tmp"'),
      "/d",
      dest,
    );
    await expect(copy).rejects.toThrow(/d\/e\/.cp.1.ab.shoal-tmp has a name shoal keeps/);
    expect(await readdir(dest)).toEqual([]);
  });

  it("keeps names with newlines, escape sequences and bytes that are not UTF-8, and shows them escaped", async () => {
    const dest = await tempDir();
    const copy = fetchWith(
      arrives(
        [
          'mkdir "$target/d"',
          `echo hi > "$target/d/$(printf 'two\\nlines')"`,
          `chmod 4755 "$target/d/$(printf 'two\\nlines')"`,
          `echo hi > "$target/d/$(printf '\\377\\376')"`,
        ].join("; "),
      ),
      "/d",
      dest,
    );
    await copy;
    const names = await readdir(join(dest, "d"), { encoding: "buffer" });
    expect(names.map((name) => name.toString("hex")).sort()).toEqual(
      [Buffer.from("two\nlines").toString("hex"), "fffe"].sort(),
    );
    expect((await stat(join(dest, "d", "two\nlines"))).mode & 0o7777).toBe(0o755);

    const shown = fetchWith(
      arrives(`mkdir "$target/d"; mkfifo "$target/d/$(printf '\\033[2J\\nx')"`),
      "/d",
      await tempDir(),
    );
    await expect(shown).rejects.toThrow("d/\\x1b[2J\\nx is a FIFO");
  });
});

describe("where a copy lands", () => {
  it("follows the destination the user named when it is a link, and no link below it", async () => {
    const real = await tempDir();
    const named = join(await tempDir(), "named");
    await symlink(real, named);
    await fetchWith(arrives('echo hi > "$target/f"'), "/f", named);
    expect(await readFile(join(real, "f"), "utf8")).toBe("hi\n");
  });

  it("makes a missing destination the copy itself, replaces a file, and refuses a directory onto a file", async () => {
    const dir = await tempDir();
    const directory = ["D0750 0 d\\n", "C0644 3 f\\n", "hi\\n\\0", "E\\n"];
    await fetchWith(sends(directory), "/d", join(dir, "new"));
    expect(await tree(dir)).toEqual({ new: "drwxr-x---", "new/f": "-rw-r--r--" });
    await writeFile(join(dir, "file"), "old\n");
    await fetchWith(sends(["C0600 4 f\\n", "new\\n\\0"]), "/f", join(dir, "file"));
    expect(await readFile(join(dir, "file"), "utf8")).toBe("new\n");
    expect((await stat(join(dir, "file"))).mode & 0o777).toBe(0o600);
    const ontoFile = fetchWith(sends(directory), "/d", join(dir, "file"));
    await expect(ontoFile).rejects.toThrow(/file is not a directory/);
    expect(await readFile(join(dir, "file"), "utf8")).toBe("new\n");
    const many = ["C0644 2 a.log\\n", "a\\n\\0", "C0644 2 b.log\\n", "b\\n\\0"];
    await expect(fetchWith(sends(many), "/*.log", join(dir, "x"))).rejects.toThrow();
    expect((await readdir(dir)).sort()).toEqual(["file", "new"]);
  });

  it("refuses a destination inside a scratch directory of shoal's, or one where nothing can be made", async () => {
    const dir = await tempDir();
    const scratch = join(dir, ".cp.1.abcd.shoal-tmp");
    await mkdir(scratch);
    for (const dest of [scratch, join(scratch, "new"), join(dir, ".cp.2.abcd.shoal-tmp")]) {
      const copy = fetchWith(arrives('echo hi > "$target/f"'), "/f", dest);
      await expect(copy).rejects.toThrow(/inside a scratch directory of shoal's/);
    }
    expect(await tree(dir)).toEqual({ ".cp.1.abcd.shoal-tmp": "drwxr-xr-x" });
    const readOnly = fetchWith(arrives('echo hi > "$target/f"'), "/f", "/proc/sys/");
    await expect(readOnly).rejects.toThrow(/\/proc\/sys\/: nothing can be copied there/);
  });

  it("receives into a private directory that only root can enter", async () => {
    const dest = await tempDir();
    const seen = join(await tempDir(), "seen");
    await fetchWith(
      arrives(`stat -c '%a %u' "$target/.." > ${seen}; echo hi > "$target/f"`),
      "/f",
      dest,
    );
    expect(await readFile(seen, "utf8")).toBe("700 0\n");
    expect(await readdir(dest)).toEqual(["f"]);
  });

  it("removes nothing half-received: an interrupted copy leaves no trace, a killed one is swept by the next", async () => {
    const dest = await tempDir();
    const stop = new AbortController();
    const copy = fetchWith(
      arrives('echo hi > "$target/f"; chmod 4755 "$target/f"; sleep 30'),
      "/f",
      dest,
      { signal: stop.signal },
    );
    setTimeout(() => stop.abort(), 500);
    await expect(copy).rejects.toThrow(/interrupted/);
    expect(await readdir(dest)).toEqual([]);

    const gone = spawnSync("true").pid;
    const stale = join(dest, `.cp.${gone}.abcd.shoal-tmp`);
    await mkdir(join(stale, "in"), { recursive: true, mode: 0o700 });
    await writeFile(join(stale, "in", "f"), "x", { mode: 0o4755 });
    // Look-alikes that shoal did not make stay: a link, and a directory others may write in.
    const link = join(dest, `.cp.${gone}.link.shoal-tmp`);
    await symlink("/etc", link);
    const open = join(dest, `.cp.${gone}.open.shoal-tmp`);
    await mkdir(open, { mode: 0o777 });
    await chmod(open, 0o777);
    await writeFile(join(open, "theirs"), "x");
    await fetchWith(arrives('echo hi > "$target/g"'), "/g", dest);
    expect((await readdir(dest)).sort()).toEqual([
      `.cp.${gone}.link.shoal-tmp`,
      `.cp.${gone}.open.shoal-tmp`,
      "g",
    ]);
    expect(await readdir(open)).toEqual(["theirs"]);
  });

  it("gives each VM its own directory, made by shoal, never one that is a link", async () => {
    const dest = await tempDir();
    const outside = await tempDir();
    await symlink(outside, join(dest, VM.name));
    const copy = fetchWith(arrives('echo hi > "$target/f"'), "/f", dest, { subdirectory: VM.name });
    await expect(copy).rejects.toThrow(/vm-1 is a symbolic link/);
    expect(await readdir(outside)).toEqual([]);
    const fresh = await tempDir();
    await fetchWith(arrives('echo hi > "$target/f"'), "/f", fresh, { subdirectory: VM.name });
    expect(await tree(fresh)).toEqual({ "vm-1": "drwxr-xr-x", "vm-1/f": "-rw-r--r--" });
  });

  it("refuses to merge into a directory on another filesystem, before placing anything", async () => {
    const dest = await tempDir();
    await mkdir(join(dest, "d", "mnt"), { recursive: true });
    await run("mount", ["-t", "tmpfs", "-o", "size=1m", "cp-test", join(dest, "d", "mnt")]);
    try {
      const copy = fetchWith(
        arrives('mkdir -p "$target/d/mnt"; echo hi > "$target/d/a"; echo hi > "$target/d/mnt/b"'),
        "/d",
        dest,
      );
      await expect(copy).rejects.toThrow(/d\/mnt is on another filesystem/);
      expect(await readdir(join(dest, "d"))).toEqual(["mnt"]);
      expect(await readdir(join(dest, "d", "mnt"))).toEqual([]);
    } finally {
      await run("umount", [join(dest, "d", "mnt")]);
    }
    expect((await lstat(join(dest, "d"))).isDirectory()).toBe(true);
  });
});

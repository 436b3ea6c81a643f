import { execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  appendFile,
  chmod,
  mkdir,
  readFile,
  rename,
  stat,
  symlink,
  writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stateLayout } from "../../src/state/layout.js";
import { collect, destroyAllFleets, SHOAL, shoal } from "../helpers/cli.js";
import { useFileTempDir, useTempDirs } from "../helpers/tmp.js";

/**
 * What guests write reaching the user's terminal (file names in layers, console logs, boot
 * failures), and the promises around it: destroy asks, NO_COLOR, --lock-wait. No VM boots: the
 * images are small ext4 trees made with mkfs.ext4 -d, the layers are what a guest's init would
 * leave, and the one VM that "starts" is run by a stand-in for QEMU that only writes its console.
 */

const exec = promisify(execFile);
const tempDir = useTempDirs();
const stateDir = useFileTempDir("shoal-terminal-");
// Fleet files live as long as their fleets: a describe's files serve all of its tests.
const filesDir = useFileTempDir("shoal-terminal-files-");
const env = { SHOAL_ACCEL: "tcg" };
let state: string;

const ESC = "\u001b";
/** Characters that would drive a terminal, or stand for bytes that are not UTF-8 (U+FFFD). */
function rawControls(text: string): string[] {
  return [...text].filter((char) => {
    const code = char.codePointAt(0) ?? 0;
    if (char === "\n" || char === "\t") return false;
    return code < 0x20 || (code >= 0x7f && code <= 0x9f) || code === 0xfffd;
  });
}

function run(args: readonly string[]) {
  return shoal(["--state-dir", state, ...args], { env });
}

/** A file name as bytes: a guest's names need not be UTF-8. */
const named = (dir: string, ...name: (string | number[])[]) =>
  Buffer.concat([
    Buffer.from(`${dir}/`),
    ...name.map((part) => (typeof part === "string" ? Buffer.from(part) : Buffer.from(part))),
  ]);

/**
 * An image in the store from a tree: its base (an ext4 of the tree) and record, which is what
 * create, diff and upgrade's conflict check read of an image; nothing here boots it.
 */
async function storeImage(name: string, tree: string): Promise<string> {
  const base = join(await tempDir(), "base.img");
  await exec("mkfs.ext4", ["-q", "-F", "-d", tree, base, "16M"]);
  const id = createHash("sha256")
    .update(await readFile(base))
    .digest("hex");
  const layout = stateLayout(state);
  const paths = layout.image(id);
  await mkdir(paths.dir, { recursive: true });
  await mkdir(layout.imageNames, { recursive: true });
  await rename(base, paths.base);
  for (const file of [paths.kernel, paths.initrd]) await writeFile(file, "");
  const meta = {
    name,
    id,
    size: (await stat(paths.base)).size,
    kernelVersion: "6.1.0-test",
    source: "test",
    created: new Date().toISOString(),
    boot: "shoal-initramfs",
    sealed: { removed: [], emptied: [] },
  };
  await writeFile(paths.meta, JSON.stringify(meta));
  await symlink(`../${id}`, join(layout.imageNames, name));
  return id;
}

async function fleetFile(name: string, text = ""): Promise<string> {
  const path = join(filesDir(), `${name}.yaml`);
  await writeFile(
    path,
    `name: ${name}\ncount: 1\nimage: old\nvm: { layer: { size: 64M } }\n${text}`,
  );
  return path;
}

let oldBase: string;
let newBase: string;

beforeAll(async () => {
  state = stateDir();
  // A host's state directory: QEMU's user may enter it (to the one VM that starts here).
  await chmod(state, 0o755);
  // Both bases hold files with a quote, a newline, an escape sequence and a byte that is not
  // UTF-8 in their names; the new base changed them, and a directory with a newline below.
  const make = async (version: string) => {
    const tree = await tempDir();
    for (const dir of ["srv/keep", "srv/dir\nx", "etc"])
      await mkdir(join(tree, dir), { recursive: true });
    for (const name of ['q"uote', "new\nline", `esc${ESC}[31mred`, "dir\nx/f"])
      await writeFile(join(tree, "srv", name), `${version}\n`);
    await writeFile(named(`${tree}/srv`, "bad", [0xff]), `${version}\n`);
    await writeFile(join(tree, "srv/same\nname"), "same\n");
    await writeFile(join(tree, "srv/keep/gone\nname"), "old\n");
    return tree;
  };
  oldBase = await storeImage("old", await make("old"));
  newBase = await storeImage("new", await make("newer"));
}, 60_000);

afterAll(async () => {
  await destroyAllFleets(state);
}, 120_000);

/**
 * A created VM whose layer holds what a guest would have done: changed those files, added one
 * with a newline in its name, deleted a file and a directory with newlines in their names.
 */
async function changedVm(fleet: string): Promise<string> {
  const file = await fleetFile(fleet);
  const created = await run(["create", "-f", file]);
  expect(created.code, created.stderr).toBe(0);
  const tree = await tempDir();
  for (const dir of ["upper/srv/keep", "work", "shoal"])
    await mkdir(join(tree, dir), { recursive: true });
  await writeFile(join(tree, "shoal/base-id"), `${oldBase}\n`);
  for (const name of ['q"uote', "new\nline", `esc${ESC}[31mred`, "same\nname", "added\nfile"])
    await writeFile(join(tree, "upper/srv", name), "vm\n");
  await writeFile(named(`${tree}/upper/srv`, "bad", [0xff]), "vm\n");
  for (const deleted of ["srv/dir\nx", "srv/keep/gone\nname"])
    await exec("mknod", [join(tree, "upper", deleted), "c", "0", "0"]);
  const layer = stateLayout(state).fleet(fleet).vm("vm-1").layer;
  await exec("mkfs.ext4", ["-q", "-F", "-L", "shoal-layer", "-d", tree, layer, "64M"]);
  return file;
}

describe("file names a guest chose", () => {
  it("`diff` lists names with quotes, newlines, escape sequences and bytes that are not UTF-8: escaped in its table, exact in its JSON", async () => {
    const file = await changedVm("tdiff");
    const json = await run(["diff", "vm-1", "-f", file, "--json"]);
    expect(json.code, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual([
      { path: "/srv/added\nfile", change: "added", type: "file", size: 3 },
      // The byte 0xff, as JSON can carry it: a lone surrogate (Python's surrogateescape).
      { path: "/srv/bad\udcff", change: "modified", type: "file", size: 3 },
      { path: "/srv/dir\nx", change: "deleted", type: "dir", size: 0 },
      { path: `/srv/esc${ESC}[31mred`, change: "modified", type: "file", size: 3 },
      { path: "/srv/keep/gone\nname", change: "deleted", type: "file", size: 4 },
      { path: "/srv/new\nline", change: "modified", type: "file", size: 3 },
      { path: '/srv/q"uote', change: "modified", type: "file", size: 3 },
      { path: "/srv/same\nname", change: "modified", type: "file", size: 3 },
    ]);
    expect(rawControls(json.stdout)).toEqual([]);

    const table = await run(["diff", "vm-1", "-f", file]);
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout.split("\n")).toEqual([
      "CHANGE    TYPE  SIZE  PATH",
      "added     file  3B    /srv/added\\nfile",
      "modified  file  3B    /srv/bad\\xff",
      "deleted   dir   -     /srv/dir\\nx",
      "modified  file  3B    /srv/esc\\x1b[31mred",
      "deleted   file  4B    /srv/keep/gone\\nname",
      "modified  file  3B    /srv/new\\nline",
      'modified  file  3B    /srv/q"uote',
      "modified  file  3B    /srv/same\\nname",
      "",
    ]);
  });

  it("`upgrade --dry-run` reports conflicts on such names, and a directory deleted with one", async () => {
    const file = await changedVm("tconflict");
    const dry = await run(["--dry-run", "upgrade", "-f", file, "--image", "new"]);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toBe(
      [
        "vm-1: its layer hides 5 files the new base changed (--conflicts proceed: it keeps its own versions):",
        "  modified /srv/bad\\xff",
        "  deleted /srv/dir\\nx",
        "  modified /srv/esc\\x1b[31mred",
        "  modified /srv/new\\nline",
        '  modified /srv/q"uote',
        `would move 1 VM to image new (${newBase.slice(0, 12)}), 1 at a time`,
        "",
      ].join("\n"),
    );
    const json = await run(["--dry-run", "upgrade", "-f", file, "--image", "new", "--json"]);
    expect(json.code, json.stderr).toBe(0);
    const rows = JSON.parse(json.stdout) as { name: string; conflicts: { path: string }[] }[];
    expect(rows.map((row) => [row.name, row.conflicts.map((c) => c.path)])).toEqual([
      [
        "vm-1",
        ["/srv/bad\udcff", "/srv/dir\nx", `/srv/esc${ESC}[31mred`, "/srv/new\nline", '/srv/q"uote'],
      ],
    ]);
  });
});

/** The console log's bytes: colours, a title change, CRLF line ends, a lone CR, a stray byte. */
const CONSOLE = Buffer.concat([
  Buffer.from(`boot\r\n${ESC}[32mOK${ESC}[0m\r\n${ESC}]0;owned\u0007title\r\nbar 10%\rbar 99%\r\n`),
  Buffer.from([0x62, 0x61, 0x64, 0xff, 0x0d, 0x0a]),
]);
const CONSOLE_SHOWN =
  "boot\n\\x1b[32mOK\\x1b[0m\n\\x1b]0;owned\\x07title\nbar 10%\\rbar 99%\nbad\\xff\n";

async function waitFor(check: () => boolean): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("timed out waiting for shoal's output");
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * Runs shoal, collecting stdout as bytes, until it exits or `until` holds; then `meanwhile`, and
 * shoal is ended (Ctrl-C) however that went.
 */
async function bytesOf(
  args: readonly string[],
  until: (out: Buffer) => boolean,
  meanwhile: (out: () => Buffer) => Promise<void> = async () => {},
): Promise<Buffer> {
  const child = spawn(process.execPath, [SHOAL, "--state-dir", state, ...args], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const chunks: Buffer[] = [];
  const out = () => Buffer.concat(chunks);
  child.stdout?.on("data", (chunk: Buffer) => chunks.push(chunk));
  let ended = false;
  const closed = new Promise<void>((resolve) =>
    child.once("close", () => {
      ended = true;
      resolve();
    }),
  );
  try {
    await waitFor(() => ended || until(out()));
    await meanwhile(out);
  } finally {
    child.kill("SIGINT");
    await closed;
  }
  return out();
}

describe("console logs", () => {
  let log: string;
  let file: string;

  beforeAll(async () => {
    file = await fleetFile("tlogs");
    expect((await run(["create", "-f", file])).code).toBe(0);
    log = stateLayout(state).fleet("tlogs").vm("vm-1").serialLog;
    await writeFile(log, CONSOLE);
  });

  it("`logs` shows control characters and bytes that are not UTF-8 escaped; --raw keeps the bytes", async () => {
    const shown = await run(["logs", "vm-1", "--file", file]);
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.stdout).toBe(CONSOLE_SHOWN);
    const raw = await bytesOf(["logs", "vm-1", "--fleet", "tlogs", "--raw"], () => false);
    expect(raw).toEqual(CONSOLE);
  });

  it("`logs -f` follows the log escaped, and `logs -f --raw` byte for byte", async () => {
    const more = Buffer.from(`${ESC}[2Jgone\r\n`);
    const whole = Buffer.concat([CONSOLE, more]);
    for (const raw of [false, true]) {
      const expected = raw ? whole : Buffer.from(`${CONSOLE_SHOWN}\\x1b[2Jgone\n`);
      const first = raw ? CONSOLE.length : Buffer.byteLength(CONSOLE_SHOWN);
      const got = await bytesOf(
        ["logs", "vm-1", "--fleet", "tlogs", "-f", ...(raw ? ["--raw"] : [])],
        (out) => out.length >= first,
        async (out) => {
          await appendFile(log, more);
          await waitFor(() => out().length >= expected.length);
        },
      );
      expect(got).toEqual(expected);
      await writeFile(log, CONSOLE);
    }
  });
});

/** A program with QEMU's command line that only does what `shoal start` looks for. */
const FAKE_QEMU = (node: string) => `#!${node}
const fs = require("node:fs");
const net = require("node:net");
const args = process.argv.slice(2);
const chardev = (id) => args.find((arg, i) => args[i - 1] === "-chardev" && arg.includes(\`id=\${id},\`));
const field = (spec, key) => spec.split(",").find((part) => part.startsWith(key + "=")).slice(key.length + 1);
fs.writeFileSync(args[args.indexOf("-pidfile") + 1], process.pid + "\\n");
net.createServer((socket) => {
  socket.write(JSON.stringify({ QMP: { version: {}, capabilities: [] } }) + "\\r\\n");
  let buffered = "";
  socket.on("data", (chunk) => {
    buffered += chunk;
    for (let end = buffered.indexOf("\\n"); end >= 0; end = buffered.indexOf("\\n")) {
      const { execute, id } = JSON.parse(buffered.slice(0, end));
      buffered = buffered.slice(end + 1);
      const answer = execute === "query-status" ? { status: "running" } : {};
      socket.write(JSON.stringify({ return: answer, id }) + "\\r\\n");
    }
  });
}).listen(field(chardev("qmp"), "path"), () => {
  fs.appendFileSync(field(chardev("console"), "logfile"), "shoal: FATAL: \\u001b]0;owned\\u0007\\u001b[2Jlayer \\\\ gone\\r\\n");
});
`;

describe("a boot failure the guest reports", () => {
  const namespace = `shoaltest-term-${process.pid}`;
  let fakeQemu: string;

  beforeAll(async () => {
    // The VM's "host": a namespace of the test's own with a bridge, for the VM's tap.
    await exec("ip", ["netns", "add", namespace]);
    await exec("ip", ["-n", namespace, "link", "add", "br0", "type", "bridge"]);
    // Instead of QEMU (started as its user, so where that user may enter): it writes its pid,
    // answers on its QMP socket, and "boots" a guest whose init prints a FATAL line with escape
    // sequences in it, as a guest may. Ended like QEMU, by SIGTERM.
    fakeQemu = await tempDir();
    await chmod(fakeQemu, 0o755);
    await writeFile(join(fakeQemu, "qemu-system-x86_64"), FAKE_QEMU(process.execPath), {
      mode: 0o755,
    });
  });

  afterAll(async () => {
    // The fleet's tap is in the test's namespace: destroyed there, then the namespace goes.
    await shoal(["--state-dir", state, "destroy", "--fleet", "tfatal", "--yes"], { namespace });
    await exec("ip", ["netns", "del", namespace]).catch(() => undefined);
  }, 60_000);

  it("is shown escaped in the progress lines, the result table and the error", async () => {
    const file = await fleetFile(
      "tfatal",
      "network: { bridge: br0, managed: false, subnet: 10.98.0.0/24 }\n",
    );
    const inNamespace = (args: readonly string[], extra: Record<string, string> = {}) =>
      shoal(["--state-dir", state, ...args], { env: { ...env, ...extra }, namespace });
    expect((await inNamespace(["create", "-f", file])).code).toBe(0);
    const started = await inNamespace(["start", "vm-1", "-f", file, "--timeout", "30"], {
      PATH: `${fakeQemu}:${process.env.PATH ?? ""}`,
    });
    expect(started.code).toBe(1);
    const shown = "\\x1b]0;owned\\x07\\x1b[2Jlayer \\ gone";
    expect(started.stdout).toBe(`NAME  RESULT\nvm-1  failed: ${shown}\n`);
    expect(started.stderr).toContain(`vm-1: failed (${shown})`);
    expect(rawControls(started.stdout + started.stderr)).toEqual([]);
  });
});

describe("asking before throwing data away", () => {
  it("`destroy` and `reset` without --yes refuse when stdin is not a terminal, and change nothing", async () => {
    const file = await fleetFile("tkept");
    expect((await run(["create", "-f", file])).code).toBe(0);
    const record = await readFile(stateLayout(state).fleet("tkept").state, "utf8");
    for (const verb of ["destroy", "reset vm-1"]) {
      const refused = await run([...verb.split(" "), "-f", file]);
      expect(refused.code, verb).toBe(2);
      expect(refused.stderr).toBe(
        `shoal: shoal ${verb.split(" ")[0]} asks before it throws anything away, and its input is not a terminal to ask on; pass --yes to ${verb.split(" ")[0]} without being asked\n`,
      );
    }
    expect(await readFile(stateLayout(state).fleet("tkept").state, "utf8")).toBe(record);
    const destroyed = await run(["destroy", "-f", file, "--yes"]);
    expect(destroyed.code, destroyed.stderr).toBe(0);
    expect(destroyed.stdout).toBe("destroyed 1 VMs and fleet tkept\n");
  });
});

describe("NO_COLOR", () => {
  /** `shoal create` on a terminal (a pseudo-terminal with a size, which ora draws on). */
  async function createOnTerminal(fleet: string, noColor: string | undefined) {
    const file = await fleetFile(fleet);
    const { CI: _ci, NO_COLOR: _set, ...rest } = process.env;
    const command = `stty cols 100 rows 30; exec '${process.execPath}' '${SHOAL}' --state-dir '${state}' create -f '${file}'`;
    const result = await collect(["script", "-qefc", command, "/dev/null"], {
      env: {
        ...rest,
        ...env,
        TERM: "xterm-256color",
        ...(noColor === undefined ? {} : { NO_COLOR: noColor }),
      },
    });
    expect(result.code, result.stdout).toBe(0);
    return result.stdout;
  }
  const colour = new RegExp(`${ESC}\\[[0-9;]*m`);

  it("set to anything but the empty string, takes the colour out of the spinner; unset or empty, it stays", async () => {
    expect(await createOnTerminal("tcolour", undefined)).toMatch(colour);
    expect(await createOnTerminal("tcolourempty", "")).toMatch(colour);
    const plain = await createOnTerminal("tnocolour", "1");
    expect(plain).toContain("shoal create");
    expect(plain).not.toMatch(colour);
  });
});

describe("--lock-wait", () => {
  let file: string;
  let lock: string;

  beforeAll(async () => {
    file = await fleetFile("tlocked");
    expect((await run(["create", "-f", file])).code).toBe(0);
    lock = stateLayout(state).fleet("tlocked").lock;
  });

  /**
   * Another process holding the fleet's lock, as a running shoal command does, until `release()`
   * (flock(1) keeps it; the command it runs does not inherit it).
   */
  async function holdLock(): Promise<{ release: () => void }> {
    // No shoal: it writes no name, and the commands before it took theirs with them.
    const holder = spawn("flock", ["--exclusive", "--close", lock, "sleep", "300"], {
      detached: true,
      stdio: "ignore",
    });
    let released = false;
    const release = () => {
      if (released || holder.pid === undefined) return;
      released = true;
      process.kill(-holder.pid, "SIGKILL");
    };
    // flock(1) has the lock once a `flock --nonblock` cannot take it.
    for (;;) {
      const held = await exec("flock", ["--exclusive", "--nonblock", lock, "true"]).then(
        () => false,
        () => true,
      );
      if (held) return { release };
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  it("without it, a busy fleet fails at once with exit 3 and the flag in the hint", async () => {
    const holder = await holdLock();
    try {
      const busy = await run(["diff", "vm-1", "-f", file]);
      expect(busy.code).toBe(3);
      expect(busy.stderr).toBe(
        "shoal: fleet tlocked is busy: another shoal command holds its lock; wait for it to finish, or give --lock-wait SECONDS to wait for it\n",
      );
      const waited = await run(["diff", "vm-1", "-f", file, "--lock-wait", "1"]);
      expect(waited.code).toBe(3);
      expect(waited.stderr).toBe(
        [
          "shoal: fleet tlocked is busy: waiting up to 1s for another shoal command",
          "shoal: fleet tlocked is busy: another shoal command holds its lock and did not finish within 1s; wait for it to finish, or give a longer --lock-wait",
          "",
        ].join("\n"),
      );
    } finally {
      holder.release();
    }
  });

  it("waits for the holder to finish, then does its work", async () => {
    const holder = await holdLock();
    try {
      const waited = await collect(
        [
          process.execPath,
          SHOAL,
          "--state-dir",
          state,
          "diff",
          "vm-1",
          "-f",
          file,
          "--lock-wait",
          "60",
        ],
        {
          env: { ...process.env, ...env },
          // It waits: now the holder finishes.
          onStderr: (stderr) => {
            if (stderr.includes("waiting up to 60s")) holder.release();
          },
        },
      );
      expect(waited.code, waited.stderr).toBe(0);
      expect(waited.stderr).toBe(
        "shoal: fleet tlocked is busy: waiting up to 60s for another shoal command\n",
      );
      expect(waited.stdout).toBe("VM vm-1 has no changes of its own\n");
    } finally {
      holder.release();
    }
  });

  it("is taken by every verb that takes the fleet's lock, and checked: whole seconds up to a day", async () => {
    const verbs = [
      "up",
      "create",
      "down",
      "stop vm-1",
      "start vm-1",
      "restart vm-1",
      "destroy --yes",
      "diff vm-1",
      "reset vm-1 --yes",
      "upgrade",
      "image commit x --from-vm vm-1",
    ];
    const results = await Promise.all(
      verbs.map((verb) => run([...verb.split(" "), "-f", file, "--lock-wait", "1.5"])),
    );
    results.forEach((result, i) => {
      expect(result.code, verbs[i]).toBe(2);
      expect(result.stderr, verbs[i]).toContain(
        'shoal: --lock-wait "1.5" is not a number of seconds from 0 to 86400',
      );
    });
    const bad = ["-1", "abc", "86401", "", "1e3"];
    const [longest, ...refused] = await Promise.all([
      run(["diff", "vm-1", "-f", file, "--lock-wait", "86400"]),
      ...bad.map((value) => run(["diff", "vm-1", "-f", file, `--lock-wait=${value}`])),
    ]);
    refused.forEach((result, i) => {
      expect(result?.code, bad[i]).toBe(2);
      expect(result?.stderr, bad[i]).toContain(
        `--lock-wait ${JSON.stringify(bad[i])} is not a number`,
      );
    });
    expect(longest?.code, longest?.stderr).toBe(0);
  });
});

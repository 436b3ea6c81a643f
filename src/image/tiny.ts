import { chmod, copyFile, mkdir, readdir, readFile, symlink, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { allGuestModules } from "../backends/registry.js";
import { parseLdd } from "../core/ldd.js";
import { loadOrder, parseModuleIndex, TINY_IMAGE_MODULES } from "../core/modules.js";
import { ShoalError } from "../errors.js";
import { ifExists } from "../host/paths.js";
import type { Runner } from "../host/runner.js";
import { GUEST_DIR } from "./initramfs.js";
import { newestKernel, unionRootModules } from "./kernel.js";

/**
 * shoal's tiny image: static busybox (a shell and networking tools) with the host's Debian kernel
 * and only the modules it needs, plus the host's dropbear and scp so that `shoal ssh`, `exec` and
 * `cp` reach it as they reach a Debian VM. It boots in seconds, for demos and fast tests.
 */

/** The SSH server and scp's receiving end, copied from the host with the libraries they load. */
const SSH_PROGRAMS = ["/usr/sbin/dropbear", "/usr/bin/scp"];

const FILES: Record<string, string> = {
  "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
  "etc/group": "root:x:0:\n",
  "etc/shadow": "root:*:19000:0:99999:7:::\n",
  "etc/hosts": "127.0.0.1 localhost\n",
  "etc/fstab": "# the root is the union of shoal's base and layer, mounted by shoal's initramfs\n",
  "etc/os-release": 'NAME="shoal tiny"\nID=shoal-tiny\nPRETTY_NAME="shoal tiny (busybox)"\n',
  "etc/machine-id": "",
  "etc/resolv.conf": "",
  "etc/shells": "/bin/sh\n",
};

const SCRIPTS: Record<string, string> = {
  "etc/inittab": "tiny/inittab",
  "etc/init.d/rcS": "tiny/rcS",
  "etc/init.d/rcK": "tiny/rcK",
  "etc/udhcpc.script": "tiny/udhcpc.script",
  "etc/acpi/PWRF/00000080": "tiny/power-button",
};

/** The host's newest installed Debian kernel, with its modules. */
async function hostKernel(runner: Runner): Promise<string> {
  const find = async () =>
    newestKernel(
      (await ifExists(readdir("/boot"))) ?? [],
      (await ifExists(readdir("/lib/modules"))) ?? [],
    );
  const found = await find();
  if (found) return found;
  await runner.run({
    argv: ["apt-get", "install", "-y", "-q", "--no-install-recommends", "linux-image-amd64"],
    env: { DEBIAN_FRONTEND: "noninteractive" },
  });
  const installed = await find();
  if (!installed)
    throw new ShoalError("no kernel on this host even after installing linux-image-amd64");
  return installed;
}

/** Copies host programs into the image at the same paths, with every library they load. */
async function copyPrograms(runner: Runner, root: string, programs: readonly string[]) {
  const files = new Set<string>();
  for (const program of programs) {
    const ldd = await runner.run({ argv: ["ldd", program], probe: true, okCodes: [1] });
    const libraries = parseLdd(ldd.stdout);
    if (ldd.code !== 0 || !libraries.ok) {
      const why = libraries.ok ? ldd.stderr.trim() : `it needs ${libraries.missing.join(", ")}`;
      throw new ShoalError(`cannot put ${program} into the tiny image: ${why}`, {
        hint: "scripts/setup installs dropbear-bin and openssh-client",
      });
    }
    files.add(program);
    for (const path of libraries.paths) files.add(path);
  }
  for (const file of files) {
    await mkdir(dirname(join(root, file)), { recursive: true });
    // copyFile follows the host's symlinks (libz.so.1 -> libz.so.1.2.13): one file per name.
    await copyFile(file, join(root, file));
    await chmod(join(root, file), 0o755);
  }
}

export async function buildTinyTree(runner: Runner, root: string): Promise<void> {
  const version = await hostKernel(runner);
  for (const dir of [
    "bin",
    "sbin",
    "usr/bin",
    "usr/sbin",
    "etc/init.d",
    "etc/acpi/PWRF",
    "etc/ssh",
    "etc/dropbear",
    "proc",
    "sys",
    "dev",
    "run",
    "tmp",
    "root",
    "mnt",
    "var/log",
    "boot",
  ]) {
    await mkdir(join(root, dir), { recursive: true });
  }
  await chmod(join(root, "tmp"), 0o1777);
  await chmod(join(root, "root"), 0o700);
  await copyFile("/bin/busybox", join(root, "bin/busybox"));
  await chmod(join(root, "bin/busybox"), 0o755);
  const { stdout } = await runner.run({ argv: ["/bin/busybox", "--list-full"], probe: true });
  for (const applet of stdout.split("\n").filter((line) => line && line !== "bin/busybox")) {
    await mkdir(dirname(join(root, applet)), { recursive: true });
    await symlink("/bin/busybox", join(root, applet)).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== "EEXIST") throw error;
    });
  }
  for (const [path, content] of Object.entries(FILES)) await writeFile(join(root, path), content);
  await chmod(join(root, "etc/shadow"), 0o600);
  for (const [path, source] of Object.entries(SCRIPTS)) {
    await copyFile(join(GUEST_DIR, source), join(root, path));
    await chmod(join(root, path), source.endsWith("inittab") ? 0o644 : 0o755);
  }
  await copyPrograms(runner, root, SSH_PROGRAMS);
  await copyFile(`/boot/vmlinuz-${version}`, join(root, `boot/vmlinuz-${version}`));

  const hostModules = `/lib/modules/${version}`;
  const dep = await readFile(join(hostModules, "modules.dep"), "utf8");
  const builtin = await readFile(join(hostModules, "modules.builtin"), "utf8");
  const parsed = parseModuleIndex(dep, builtin);
  if (!parsed.ok)
    throw new ShoalError(
      `${hostModules}/${parsed.bad.file} line ${parsed.bad.line} names no module file: ${JSON.stringify(parsed.bad.entry)}`,
      { hint: "run depmod for that kernel" },
    );
  const order = loadOrder(parsed.index, [
    ...unionRootModules(parsed.index),
    ...allGuestModules().net,
    ...TINY_IMAGE_MODULES,
  ]);
  if (!order.ok)
    throw new ShoalError(
      `the host kernel ${version} lacks the modules ${order.missing.join(", ")}`,
    );
  const included = new Set(order.paths);
  for (const path of order.paths) {
    await mkdir(dirname(join(root, hostModules, path)), { recursive: true });
    await copyFile(join(hostModules, path), join(root, hostModules, path));
  }
  // busybox modprobe reads modules.dep; it lists exactly the modules the image carries.
  const filtered = dep.split("\n").filter((line) => included.has(line.slice(0, line.indexOf(":"))));
  await writeFile(join(root, hostModules, "modules.dep"), `${filtered.join("\n")}\n`);
  await writeFile(join(root, hostModules, "modules.builtin"), builtin);
}

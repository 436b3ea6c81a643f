import { UserError } from "../../errors.js";
import type { Runner } from "../../host/runner.js";
import { QEMU_USER } from "./render.js";

export interface QemuUser {
  readonly uid: number;
  readonly gid: number;
}

/** How the user QEMU runs as is made (what scripts/setup does). */
export const QEMU_USER_FIX = `run scripts/setup, or \`useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ${QEMU_USER}\` (and \`usermod -aG kvm ${QEMU_USER}\` for KVM)`;

/** The user QEMU runs as, from the host's user database (NSS); undefined if there is none. */
export async function findQemuUser(runner: Runner): Promise<QemuUser | undefined> {
  // getent answers 2 for a name it does not know.
  const result = await runner.run({
    argv: ["getent", "passwd", QEMU_USER],
    probe: true,
    okCodes: [2],
  });
  if (result.code === 2) return undefined;
  const [, , uid, gid] = result.stdout.trim().split(":");
  if (!/^\d+$/.test(uid ?? "") || !/^\d+$/.test(gid ?? "")) {
    throw new UserError(`getent passwd ${QEMU_USER} gave no user entry: ${result.stdout.trim()}`);
  }
  return { uid: Number(uid), gid: Number(gid) };
}

/** The user QEMU runs as; one missing, or root under another name, is the host's setup to fix. */
export async function requireQemuUser(runner: Runner): Promise<QemuUser> {
  const user = await findQemuUser(runner);
  if (user === undefined) {
    throw new UserError(
      `QEMU runs as user ${QEMU_USER}, which this host does not have`,
      QEMU_USER_FIX,
    );
  }
  if (user.uid === 0 || user.gid === 0) {
    throw new UserError(
      `user ${QEMU_USER} is uid ${user.uid}, gid ${user.gid}: QEMU must not run as root or with root's group`,
      `make ${QEMU_USER} an unprivileged system user of its own (\`userdel ${QEMU_USER}\`, then ${QEMU_USER_FIX})`,
    );
  }
  return user;
}

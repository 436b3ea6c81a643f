import { constants, existsSync } from "node:fs";
import { lstat, mkdir, open, readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import * as z from "zod";
import { isSafePath } from "../../core/syntax.js";
import { ShoalError } from "../../errors.js";
import { ifExists } from "../../host/paths.js";
import type { Runner } from "../../host/runner.js";
import { writeFileAtomic } from "../../state/atomic.js";
import { parseJsonOrUndefined } from "../../state/json.js";
import { IMAGE_ID, type StateLayout, type XlBasePaths } from "../../state/layout.js";
import { acquireLock, FleetLocked, withLock } from "../../state/lock.js";

/**
 * Each base on this host is one read-only loop device (`losetup --read-only`: read-only at the
 * block layer) that every domU of every fleet on that image boots from, instead of a loop device
 * per domU made by Xen's block script under its dom0-wide lock.
 *
 * Its users are kept as one file per domain UUID (users/UUID, holding the domain's xl.cfg path),
 * added before the domain is made and removed once it is gone. A domain being made holds the
 * base's use lock shared; the device is released only under that lock held exclusively, when no
 * user is left, so it never goes between a domain looking it up and Xen opening it. After a kill at
 * any point the next release repairs: a user whose domain Xen no longer has and whose xl monitor
 * (which restarts a rebooting domain) is gone is dropped; a recorded device that is not the base
 * any more (after a reboot its number may be another's) is never used or detached, only forgotten.
 */

const LOOP_DEVICE = /^\/dev\/loop\d+$/;
const DOMAIN_UUID = /^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$/;
/** Looking up a base waits this long for a release or an attach beside it. */
const LOCK_WAIT_S = 600;

const loopRecord = z.object({ device: z.string().regex(LOOP_DEVICE) });

const flag = z.union([z.boolean(), z.string(), z.number()]);
const number = z.union([z.string(), z.number()]).nullable().optional();

/** `losetup --list --json --output LOSETUP_COLUMNS`. */
const losetupListing = z.object({
  loopdevices: z.array(
    z.object({
      name: z.string(),
      "back-file": z.string().nullable().optional(),
      "back-ino": number,
      "back-maj:min": z.string().nullable().optional(),
      ro: flag,
      offset: number,
      sizelimit: number,
      autoclear: flag,
    }),
  ),
});

export const LOSETUP_COLUMNS = "NAME,BACK-FILE,BACK-INO,BACK-MAJ:MIN,RO,OFFSET,SIZELIMIT,AUTOCLEAR";

function isSet(value: boolean | string | number): boolean {
  return value === true || value === 1 || value === "1";
}

/** A file as losetup names its backing file: the device it is on (MAJ:MIN) and its inode. */
export interface FileIdentity {
  readonly majMin: string;
  readonly ino: string;
}

/** Linux's dev_t split as the kernel does it (MAJOR/MINOR of kdev_t's user-space encoding). */
export function majMinOf(dev: bigint): string {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}

/**
 * Whether `listing` (losetup --list --json) shows `device` as the whole of `file`, read-only, not
 * set to clear itself: the loop device shoal attached for a base, not one another program made.
 */
export function isBaseLoop(listing: string, device: string, file: FileIdentity): boolean {
  const parsed = losetupListing.safeParse(parseJsonOrUndefined(listing));
  const entry = parsed.success
    ? parsed.data.loopdevices.find((loop) => loop.name === device)
    : undefined;
  if (!entry) return false;
  return (
    String(entry["back-ino"]) === file.ino &&
    // util-linux 2.38 pads this column even in JSON.
    entry["back-maj:min"]?.trim() === file.majMin &&
    isSet(entry.ro) &&
    !isSet(entry.autoclear) &&
    Number(entry.offset ?? 0) === 0 &&
    Number(entry.sizelimit ?? 0) === 0
  );
}

/** The loop devices `losetup --list --json` shows whose backing file is under `dir`. */
export function loopsUnder(listing: string, dir: string): string[] {
  const parsed = losetupListing.safeParse(parseJsonOrUndefined(listing));
  if (!parsed.success) return [];
  const prefix = `${dir}/`;
  return parsed.data.loopdevices
    .filter((loop) => (loop["back-file"] ?? "").startsWith(prefix) && LOOP_DEVICE.test(loop.name))
    .map((loop) => loop.name);
}

/** A domain that boots from a base: its UUID, and its xl.cfg, which its xl monitor runs. */
export interface BaseUser {
  readonly uuid: string;
  readonly config: string;
}

/** Which of the users still hold the base: their domain is there, or its monitor will remake it. */
export type LiveUsers = (users: readonly BaseUser[]) => Promise<ReadonlySet<string>>;

export class BaseLoops {
  constructor(
    private readonly runner: Runner,
    private readonly layout: Pick<StateLayout, "xlBase" | "xlBases" | "image">,
    private readonly live: LiveUsers,
  ) {}

  /** Whether this state directory holds a loop device of the base `id` (as last recorded). */
  isHeld(id: string): boolean {
    return existsSync(this.layout.xlBase(id).record);
  }

  /**
   * Runs `work` (the domain's creation) with the base `id` attached and `user` counted as one of
   * its users; `work` gets the loop device. A creation that fails leaves no user behind.
   */
  async using<T>(id: string, user: BaseUser, work: (device: string) => Promise<T>): Promise<T> {
    const paths = this.layout.xlBase(id);
    const subject = `the loop device of base ${id.slice(0, 12)}`;
    await mkdir(paths.users, { recursive: true, mode: 0o700 });
    const use = await acquireLock(this.runner, paths.useLock, {
      subject,
      command: "xl create",
      waitSeconds: LOCK_WAIT_S,
      shared: true,
    });
    let made = false;
    try {
      const device = await withLock(
        this.runner,
        paths.attachLock,
        { subject, command: "losetup", waitSeconds: LOCK_WAIT_S },
        async () => {
          const device = (await this.attached(id)) ?? (await this.attach(id));
          await writeFileAtomic(join(paths.users, user.uuid), `${user.config}\n`, 0o600);
          return device;
        },
      );
      const result = await work(device);
      made = true;
      return result;
    } finally {
      await use.release();
      if (!made) await this.leaveBase(id, user.uuid);
    }
  }

  /** The domain `uuid` is gone: it no longer counts for any base, and a base left unused goes. */
  async leave(uuid: string): Promise<void> {
    for (const id of await this.held()) await this.leaveBase(id, uuid);
  }

  private async leaveBase(id: string, uuid: string): Promise<void> {
    const paths = this.layout.xlBase(id);
    const user = join(paths.users, uuid);
    if (!(await exists(user))) return;
    await rm(user, { force: true });
    if ((await this.users(paths)).length === 0) await this.release(id, { prune: false });
  }

  /**
   * Releases every base this state directory holds that no domain uses, dropping first the users
   * whose domain is gone (a domain destroyed behind shoal's back, a shoal killed half-way).
   */
  async releaseUnused(): Promise<void> {
    for (const id of await this.held()) await this.release(id, { prune: true });
  }

  /**
   * Detaches the base's device when it has no user left (with `prune`, none whose domain is still
   * there). While a domain on the base is being made nothing is released: that creation releases
   * the base itself if it fails.
   */
  private async release(id: string, { prune }: { prune: boolean }): Promise<void> {
    const paths = this.layout.xlBase(id);
    const lock = await acquireLock(this.runner, paths.useLock, {
      subject: `the loop device of base ${id.slice(0, 12)}`,
      command: "losetup --detach",
      waitSeconds: 0,
    }).catch((error: unknown) => {
      if (error instanceof FleetLocked) return undefined;
      throw error;
    });
    if (lock === undefined) return;
    try {
      let users = await this.users(paths);
      if (prune && users.length > 0) {
        const live = await this.live(users);
        for (const user of users.filter((entry) => !live.has(entry.uuid))) {
          await rm(join(paths.users, user.uuid), { force: true });
        }
        users = users.filter((entry) => live.has(entry.uuid));
      }
      if (users.length > 0) return;
      const device = await this.attached(id);
      if (device !== undefined) await this.runner.run({ argv: ["losetup", "--detach", device] });
      await rm(paths.dir, { recursive: true, force: true });
    } finally {
      await lock.release();
    }
  }

  /** The bases this state directory holds a loop device or users for. */
  private async held(): Promise<string[]> {
    const ids = await readdir(this.layout.xlBases).catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return [] as string[];
      throw error;
    });
    return ids.filter((name) => IMAGE_ID.test(name));
  }

  /** The users recorded for a base; an entry shoal would not have written is dropped. */
  private async users(paths: XlBasePaths): Promise<BaseUser[]> {
    const names = await readdir(paths.users).catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return [] as string[];
      throw error;
    });
    const users: BaseUser[] = [];
    for (const uuid of names) {
      const config = DOMAIN_UUID.test(uuid)
        ? (await readSmall(join(paths.users, uuid)))?.trim()
        : undefined;
      if (config !== undefined && isSafePath(config)) users.push({ uuid, config });
      else await rm(join(paths.users, uuid), { force: true });
    }
    return users;
  }

  /** The recorded device while it is still the base; a stale record is forgotten. */
  private async attached(id: string): Promise<string | undefined> {
    const paths = this.layout.xlBase(id);
    const text = await readSmall(paths.record);
    const parsed = loopRecord.safeParse(parseJsonOrUndefined(text ?? ""));
    if (!parsed.success) {
      await rm(paths.record, { force: true });
      return undefined;
    }
    if (await this.isBase(parsed.data.device, id)) return parsed.data.device;
    await rm(paths.record, { force: true });
    return undefined;
  }

  private async attach(id: string): Promise<string> {
    const { base } = this.layout.image(id);
    const attached = await this.runner.run({
      argv: ["losetup", "--find", "--show", "--read-only", base],
    });
    const device = attached.stdout.trim();
    if (!LOOP_DEVICE.test(device) || !(await this.isBase(device, id))) {
      if (LOOP_DEVICE.test(device)) {
        await this.runner.run({ argv: ["losetup", "--detach", device], okCodes: [0, 1] });
      }
      throw new ShoalError(
        `losetup attached base ${id.slice(0, 12)} as ${JSON.stringify(device.slice(0, 40))}, which is not the read-only base shoal asked for`,
        { hint: "see `losetup --list`" },
      );
    }
    await writeFileAtomic(this.layout.xlBase(id).record, `${JSON.stringify({ device })}\n`, 0o600);
    return device;
  }

  /** Whether the kernel shows `device` as the whole base `id`, read-only. */
  private async isBase(device: string, id: string): Promise<boolean> {
    const file = await ifExists(stat(this.layout.image(id).base, { bigint: true }));
    if (file === undefined) return false;
    const listing = await this.runner.run({
      argv: ["losetup", "--list", "--json", "--output", LOSETUP_COLUMNS, device],
      probe: true,
      okCodes: [0, 1],
    });
    return isBaseLoop(listing.stdout, device, {
      majMin: majMinOf(file.dev),
      ino: String(file.ino),
    });
  }
}

async function exists(path: string): Promise<boolean> {
  return lstat(path).then(
    () => true,
    (error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return false;
      throw error;
    },
  );
}

/** A small file of shoal's, never through a link; undefined when it is not there. */
async function readSmall(path: string): Promise<string | undefined> {
  const handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW).catch(
    (error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return undefined;
      throw error;
    },
  );
  if (handle === undefined) return undefined;
  try {
    const buffer = Buffer.alloc(4096);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
    return buffer.subarray(0, bytesRead).toString("utf8");
  } finally {
    await handle.close();
  }
}

import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import {
  chmod,
  mkdir,
  readdir,
  readFile,
  readlink,
  rename,
  rm,
  stat,
  symlink,
} from "node:fs/promises";
import { join } from "node:path";
import * as z from "zod";
import { allGuestModules } from "../backends/registry.js";
import { daxRefusal } from "../core/dax.js";
import { loadOrder, type ModuleIndex } from "../core/modules.js";
import { IMAGE_NAME_RULE, isImageName } from "../core/names.js";
import type { BootFiles } from "../core/render/boot.js";
import { ShoalError, UserError } from "../errors.js";
import { ifExists } from "../host/paths.js";
import { isProcessAlive } from "../host/processes.js";
import type { Runner } from "../host/runner.js";
import { writeFileAtomic } from "../state/atomic.js";
import { parseJsonOrUndefined } from "../state/json.js";
import { IMAGE_ID, type StateLayout } from "../state/layout.js";
import { withLock } from "../state/lock.js";
import { checkNoLinksIn, checkOwnDirectory } from "../state/trust.js";
import { Ext4Image } from "./ext4.js";
import { buildInitramfs } from "./initramfs.js";
import { findImageKernel } from "./kernel.js";
import { sealImage } from "./seal.js";

/**
 * The image store: sealed, immutable images named by the sha256 of their content, read-only on
 * disk. An image is made in a staging directory and appears under its id and name only when it is
 * complete; a failed or killed build leaves nothing that looks like an image.
 */

const imageMeta = z.object({
  name: z.string(),
  id: z.string().regex(IMAGE_ID),
  size: z.int(),
  kernelVersion: z.string(),
  source: z.string(),
  created: z.string(),
  boot: z.enum(["shoal-initramfs", "image-initramfs"]),
  sealed: z.object({ removed: z.array(z.string()), emptied: z.array(z.string()) }),
  /** Whether the base can be mapped into the guest for DAX; absent in records made before. */
  dax: z.object({ capable: z.boolean(), refusal: z.string().optional() }).optional(),
  /** Its init prints a `shoal-identity:` line once it is booted (see guest/boot-wait.ts). */
  reportsBoot: z.boolean().optional(),
});

export type ImageMeta = z.infer<typeof imageMeta>;

/** What a VM of `image` boots from. */
export function imageBoot(
  layout: StateLayout,
  image: Pick<ImageMeta, "id" | "boot" | "size" | "dax" | "reportsBoot">,
): BootFiles {
  const paths = layout.image(image.id);
  return {
    kernel: paths.kernel,
    initrd: paths.initrd,
    base: paths.base,
    baseId: image.id,
    ...(image.boot === "image-initramfs" ? { ownInitramfs: true } : {}),
    ...(image.dax?.capable ? { dax: { bytes: image.size } } : {}),
    ...(image.reportsBoot ? { reportsBoot: true } : {}),
  };
}

export interface ImageRequest {
  readonly name: string;
  readonly source: string;
  /** Boot with the image's own initramfs (which the initramfs-tools hook made) instead of shoal's. */
  readonly ownInitramfs?: boolean;
  /** The image's init prints a `shoal-identity:` line once booted: shoal's images, and those made from them. */
  readonly reportsBoot?: boolean;
}

/** How an image made from `from` (derived, committed) boots: as `from` does. */
export function bootInheritedFrom(
  from: Pick<ImageMeta, "boot" | "reportsBoot"> | undefined,
): Pick<ImageRequest, "ownInitramfs" | "reportsBoot"> {
  return {
    ...(from?.boot === "image-initramfs" ? { ownInitramfs: true } : {}),
    ...(from?.reportsBoot ? { reportsBoot: true } : {}),
  };
}

const STAGING_PREFIX = ".staging-";

export function checkImageName(name: string): void {
  if (!isImageName(name))
    throw new UserError(`"${name}" is not an image name`, `use ${IMAGE_NAME_RULE}`);
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

async function daxSupport(image: Ext4Image, modules: ModuleIndex): Promise<ImageMeta["dax"]> {
  const order = loadOrder(modules, allGuestModules().dax);
  const refusal = daxRefusal({
    blockSize: await image.blockSize(),
    bytes: (await stat(image.path)).size,
    missingModules: order.ok ? [] : order.missing,
  });
  return refusal === undefined ? { capable: true } : { capable: false, refusal };
}

export class ImageStore {
  constructor(
    private readonly runner: Runner,
    private readonly layout: StateLayout,
  ) {}

  private locked<T>(command: string, work: () => Promise<T>): Promise<T> {
    return withLock(
      this.runner,
      this.layout.imageLock,
      { subject: "the image store", command, waitSeconds: 600 },
      work,
    );
  }

  async list(): Promise<ImageMeta[]> {
    const names = (await ifExists(readdir(this.layout.imageNames))) ?? [];
    const images = await Promise.all(names.sort().map((name) => this.find(name)));
    return images.filter((image): image is ImageMeta => image !== undefined);
  }

  /**
   * The id a name points to; undefined for an unknown name. shoal links a name to `../ID` and
   * nowhere else: a link elsewhere was planted, and is never followed (nor its target removed).
   */
  private async idOf(name: string): Promise<string | undefined> {
    for (const dir of [this.layout.images, this.layout.imageNames]) await checkOwnDirectory(dir);
    const link = join(this.layout.imageNames, name);
    const target = await readlink(link).catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return undefined;
      // EINVAL is readlink's "not a link"; any other failure is not about what is there.
      if (error.code !== "EINVAL") throw error;
      throw new ShoalError(`the image name ${link} is not a link shoal made`, {
        hint: "someone changed the image store: look at it, and remove what is not shoal's",
      });
    });
    if (target === undefined) return undefined;
    const id = /^\.\.\/([0-9a-f]{64})$/.exec(target)?.[1];
    if (id === undefined) {
      throw new ShoalError(
        `the image name ${link} points to ${JSON.stringify(target.slice(0, 80))}, not to an image of this store`,
        { hint: "someone changed the image store: remove the link; nothing it points to is used" },
      );
    }
    return id;
  }

  /** An image's record (image.json); undefined when it has none that parses and names this id. */
  private async meta(id: string): Promise<ImageMeta | undefined> {
    await checkNoLinksIn(this.layout.image(id).dir);
    const meta = imageMeta.safeParse(
      parseJsonOrUndefined((await ifExists(readFile(this.layout.image(id).meta, "utf8"))) ?? ""),
    );
    return meta.success && meta.data.id === id ? meta.data : undefined;
  }

  /** The image a name points to; undefined for an unknown name. */
  async find(name: string): Promise<ImageMeta | undefined> {
    const id = await this.idOf(name);
    if (id === undefined) return undefined;
    const meta = await this.meta(id);
    if (!meta) {
      throw new ShoalError(
        `the record of image ${name} (${this.layout.image(id).meta}) is missing or unreadable`,
        { hint: `remove the image with \`shoal image rm ${name}\` and make it again` },
      );
    }
    return { ...meta, name };
  }

  /**
   * What a VM boots from, as its record says: the base it was defined over (records older than
   * upgrades name only the image).
   */
  async recordedBoot(
    vm: string,
    recorded: { readonly baseId?: string | undefined; readonly spec: { readonly image: string } },
  ): Promise<BootFiles> {
    const { baseId } = recorded;
    if (baseId === undefined) return imageBoot(this.layout, await this.get(recorded.spec.image));
    const meta = await this.meta(baseId);
    if (!meta) {
      throw new ShoalError(
        `VM ${vm} boots from image ${baseId.slice(0, 12)}, which is no longer in the image store`,
        {
          hint: "`shoal image ls` lists the images; `shoal upgrade --image NAME` moves the fleet to one",
        },
      );
    }
    return imageBoot(this.layout, meta);
  }

  /**
   * The boot files of every image the VMs name, all looked up before anything changes; a missing
   * image is bad input.
   */
  async bootsFor(
    vms: readonly { readonly name: string; readonly image: string }[],
  ): Promise<(vm: { readonly name: string; readonly image: string }) => BootFiles> {
    const boots = new Map<string, BootFiles>();
    for (const name of new Set(vms.map((vm) => vm.image))) {
      boots.set(name, imageBoot(this.layout, await this.get(name)));
    }
    return (vm) => {
      const boot = boots.get(vm.image);
      if (!boot) throw new Error(`internal: image ${vm.image} of ${vm.name} was not looked up`);
      return boot;
    };
  }

  async get(name: string): Promise<ImageMeta> {
    checkImageName(name);
    const image = await this.find(name);
    if (!image)
      throw new UserError(
        `no image named ${name}`,
        "`shoal image ls` lists the images; `shoal image build` makes one",
      );
    return image;
  }

  /** Removes staging directories of builds whose process is gone. */
  private async removeStaleStaging(): Promise<void> {
    for (const entry of (await ifExists(readdir(this.layout.images))) ?? []) {
      const pid = Number(
        entry.startsWith(STAGING_PREFIX)
          ? entry.slice(STAGING_PREFIX.length).split("-")[0]
          : Number.NaN,
      );
      if (Number.isInteger(pid) && !isProcessAlive(pid))
        await rm(join(this.layout.images, entry), { recursive: true, force: true });
    }
  }

  /**
   * Removes image directories that no name points to: a shoal killed between storing an image and
   * naming it leaves one. Only under the store's lock, where no other shoal is between those steps.
   */
  private async removeUnnamedImages(): Promise<void> {
    const named = new Set(
      await Promise.all((await readdir(this.layout.imageNames)).map((name) => this.idOf(name))),
    );
    for (const entry of await readdir(this.layout.images)) {
      if (IMAGE_ID.test(entry) && !named.has(entry)) {
        await rm(this.layout.image(entry).dir, { recursive: true, force: true });
      }
    }
  }

  /**
   * Makes an image: `produce` writes a raw ext4 image into the staging directory it is given;
   * shoal then checks it has a usable kernel, seals it, adds the boot files and stores it.
   */
  async add(
    request: ImageRequest,
    produce: (staging: string) => Promise<string>,
    step: <T>(title: string, work: () => Promise<T>) => Promise<T> = (_title, work) => work(),
  ): Promise<ImageMeta> {
    checkImageName(request.name);
    if (await this.find(request.name)) {
      throw new UserError(
        `an image named ${request.name} exists already`,
        `remove it with \`shoal image rm ${request.name}\` or choose another name`,
      );
    }
    await mkdir(this.layout.imageNames, { recursive: true });
    await this.removeStaleStaging();
    const staging = join(this.layout.images, `${STAGING_PREFIX}${process.pid}-${Date.now()}`);
    // Root's only while it is made: an image's tree may hold setuid programs and device nodes
    // (a tarball's /dev/sda, mode 0666), which must never be within reach of another user.
    await mkdir(staging, { mode: 0o700 });
    try {
      const raw = await step(`making ${request.name} from ${request.source}`, () =>
        produce(staging),
      );
      const image = new Ext4Image(this.runner, raw);
      const kernel = await findImageKernel(image, `image ${request.name}`);
      const sealed = await step("sealing: removing per-machine identity", () => sealImage(image));
      const files = {
        base: join(staging, "base.img"),
        kernel: join(staging, "vmlinuz"),
        initrd: join(staging, "initrd.img"),
      };
      await image.dump([[kernel.kernel, files.kernel]], 0o444);
      if (request.ownInitramfs) {
        if (!kernel.initrd)
          throw new UserError(
            `image ${request.name} has no initramfs for its kernel ${kernel.version}`,
            `shoal takes it from the regular file /boot/initrd.img-${kernel.version}`,
          );
        await image.dump([[kernel.initrd, files.initrd]], 0o444);
      } else {
        await step(`building shoal's initramfs for kernel ${kernel.version}`, () =>
          buildInitramfs(this.runner, image, kernel, staging, files.initrd),
        );
      }
      const dax = await daxSupport(image, kernel.modules);
      await rename(raw, files.base);
      const id = await step("computing the image id (sha256)", () => sha256File(files.base));
      const meta: ImageMeta = {
        name: request.name,
        id,
        size: (await stat(files.base)).size,
        kernelVersion: kernel.version,
        source: request.source,
        created: new Date().toISOString(),
        boot: request.ownInitramfs ? "image-initramfs" : "shoal-initramfs",
        sealed: { removed: [...sealed.removed], emptied: [...sealed.emptied] },
        dax,
        ...(request.reportsBoot ? { reportsBoot: true } : {}),
      };
      for (const file of Object.values(files)) await chmod(file, 0o444);
      await writeFileAtomic(
        join(staging, "image.json"),
        `${JSON.stringify(meta, null, 2)}\n`,
        0o444,
      );
      // Only the image's own files are left in it, read-only: the store shows them as before.
      await chmod(staging, 0o755);
      return await this.locked("image add", async () => {
        // Another shoal may have taken the name while this one was building.
        if (await this.find(request.name))
          throw new UserError(`an image named ${request.name} exists already`);
        await this.removeUnnamedImages();
        const target = this.layout.image(id).dir;
        const known = await ifExists(stat(target));
        if (known) await rm(staging, { recursive: true, force: true });
        else await rename(staging, target);
        await this.link(request.name, id);
        return meta;
      });
    } catch (error) {
      await rm(staging, { recursive: true, force: true });
      throw error;
    }
  }

  private async link(name: string, id: string): Promise<void> {
    const link = join(this.layout.imageNames, name);
    const temp = `${link}.${process.pid}.new`;
    await rm(temp, { force: true });
    await symlink(`../${id}`, temp);
    await rename(temp, link);
  }

  /** Removes an image; refused while `usersOf` (the fleets whose VMs use it) names any. */
  async remove(name: string, usersOf: (image: string) => Promise<string[]>): Promise<void> {
    checkImageName(name);
    const id = await this.idOf(name);
    if (id === undefined)
      throw new UserError(`no image named ${name}`, "`shoal image ls` lists the images");
    await this.locked("image rm", async () => {
      const users = await usersOf(name);
      if (users.length > 0) {
        throw new UserError(
          `image ${name} is used by fleet ${users.join(", ")}`,
          "destroy those fleets, or move them to another image, first",
        );
      }
      await rm(join(this.layout.imageNames, name));
      const others = await Promise.all(
        (await readdir(this.layout.imageNames)).map((other) => this.idOf(other)),
      );
      if (!others.includes(id)) {
        const dir = this.layout.image(id).dir;
        // The files are read-only; the directory is not, so they can be removed.
        await rm(dir, { recursive: true, force: true });
      }
    });
  }
}

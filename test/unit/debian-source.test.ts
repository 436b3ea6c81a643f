import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { debianSource } from "../../src/image/sources.js";
import { RecordingRunner } from "../helpers/recording-runner.js";
import { useTempDirs } from "../helpers/tmp.js";

const tempDir = useTempDirs();

async function build(hook: boolean) {
  const runner = new RecordingRunner();
  const staging = await tempDir();
  await debianSource(runner, staging, { suite: "bookworm", include: ["curl"], hook });
  const mmdebstrap = runner.commands.find((command) => command.argv[0] === "mmdebstrap");
  if (!mmdebstrap) throw new Error("no mmdebstrap");
  return { mmdebstrap, staging };
}

describe("a Debian image build", () => {
  it("runs mmdebstrap with shoal's packages and files, and no initramfs made at kernel install", async () => {
    const { mmdebstrap, staging } = await build(false);
    const files = join(staging, "files");
    expect(mmdebstrap.env).toEqual({ INITRD: "No" });
    expect(mmdebstrap.argv).toEqual([
      "mmdebstrap",
      "--quiet",
      "--variant=minbase",
      "--include=systemd-sysv,systemd-resolved,udev,openssh-server,openssh-client,iproute2,iputils-ping,e2fsprogs,linux-image-amd64,curl",
      `--customize-hook=sync-in ${files} /`,
      '--customize-hook=chroot "$1" systemctl enable systemd-networkd systemd-resolved shoal-identity',
      '--customize-hook=chroot "$1" systemctl mask e2scrub_reap.service e2scrub_all.timer',
      '--customize-hook=ln -sf /run/systemd/resolve/stub-resolv.conf "$1/etc/resolv.conf"',
      "bookworm",
      join(staging, "tree"),
    ]);
    expect(await readFile(join(files, "etc/systemd/network/80-shoal.network"), "utf8")).toContain(
      "Type=ether",
    );
    expect(await readFile(join(files, "etc/systemd/system.conf.d/shoal.conf"), "utf8")).toContain(
      "ShowStatus=error",
    );
  });

  it("with the hook, makes the image's own initramfs once, after the hook is in", async () => {
    const { mmdebstrap, staging } = await build(true);
    expect(mmdebstrap.env).toEqual({ INITRD: "No" });
    expect(mmdebstrap.argv.at(-3)).toBe('--customize-hook=chroot "$1" update-initramfs -c -k all');
    expect(mmdebstrap.argv[3]).toContain(",busybox,");
    expect(
      await readFile(join(staging, "files/etc/initramfs-tools/scripts/init-bottom/shoal"), "utf8"),
    ).toContain("shoal");
  });
});

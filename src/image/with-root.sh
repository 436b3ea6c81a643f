#!/bin/sh
# Runs one command with an image's root filesystem put together at ROOT, without ever writing to
# the base: the base is mounted read-only, changes go to an overlayfs upper directory. shoal runs
# this as PID 1 of new mount and PID namespaces (`unshare --mount --pid --fork`): every mount here
# ends with the mount namespace however this script ends (loop devices mounted with -o loop detach
# themselves then), and every process the command leaves behind (a daemon a package's install
# started) is killed with it.
#
#   with-root.sh ROOT BASE LAYER UPPER SYSTEM SHARE -- COMMAND...
#     BASE    a raw ext4 base image
#     LAYER   what goes above the base, read-only: a VM's layer image (its upper/) or an overlayfs
#             upper directory; or -
#     UPPER   a directory that takes the command's writes (UPPER/upper, UPPER/work); or - for a
#             read-only root (LAYER must be given then)
#     SYSTEM  "system": also /proc, /sys, /dev, an empty /run and /tmp and the host's DNS servers,
#             for running the image's own programs in a chroot; or -
#     SHARE   a host directory shown at ROOT/run/shoal (with SYSTEM), or -
set -eu
root=$1
base=$2
layer=$3
upper=$4
system=$5
share=$6
shift 6
[ "$1" = -- ] && shift

scratch=$root.mounts
mkdir -p "$root" "$scratch/base" "$scratch/layer"
mount -o loop,ro "$base" "$scratch/base"
lower=$scratch/base
if [ "$layer" != - ]; then
  if [ -d "$layer" ]; then
    lower=$layer:$lower
  else
    mount -o loop,ro "$layer" "$scratch/layer"
    lower=$scratch/layer/upper:$lower
  fi
fi
if [ "$upper" = - ]; then
  mount -t overlay -o ro,lowerdir="$lower" shoal-root "$root"
else
  mkdir -p "$upper/upper" "$upper/work"
  mount -t overlay -o "lowerdir=$lower,upperdir=$upper/upper,workdir=$upper/work" shoal-root "$root"
fi

if [ "$system" = system ]; then
  mount -t proc proc "$root/proc"
  mount -t sysfs sysfs "$root/sys"
  mount --rbind /dev "$root/dev"
  for dir in run tmp; do
    if [ -d "$root/$dir" ]; then mount -t tmpfs tmpfs "$root/$dir"; fi
  done
  # The host's resolver where the image looks for it, without writing it into the image: over
  # its own file, or in the empty /run where its link (systemd-resolved's stub) points.
  if [ -L "$root/etc/resolv.conf" ]; then
    target=$(readlink "$root/etc/resolv.conf")
    # Relative links are relative to /etc.
    case $target in
    ../run/*) target=/${target#../} ;;
    esac
    case $target in
    /run/*) mkdir -p "$root${target%/*}" && cp /etc/resolv.conf "$root$target" ;;
    esac
  elif [ -f "$root/etc/resolv.conf" ] && [ -f /etc/resolv.conf ]; then
    # A copy: a package script that rewrites the image's resolv.conf must not reach the host's.
    cp /etc/resolv.conf "$scratch/resolv.conf"
    mount --bind "$scratch/resolv.conf" "$root/etc/resolv.conf"
  fi
  if [ "$share" != - ]; then
    mkdir -p "$root/run/shoal"
    mount --bind -o ro "$share" "$root/run/shoal"
  fi
fi

status=0
"$@" || status=$?
# Whatever the command left running holds files under ROOT open: as PID 1 here, this ends them all.
kill -KILL -1 2>/dev/null || true
# Unmounted here, not left to the namespace's end: the upper directory and the images must be
# complete when shoal reads them next.
umount -R "$root"
if mountpoint -q "$scratch/layer"; then umount "$scratch/layer"; fi
umount "$scratch/base"
rm -f "$scratch/resolv.conf"
rmdir "$scratch/base" "$scratch/layer" "$scratch" "$root"
exit "$status"

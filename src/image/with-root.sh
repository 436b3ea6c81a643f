#!/bin/sh
# Puts an image's root filesystem together at ROOT and runs one command with it, without ever
# writing to the base: the base is mounted read-only, changes go to an overlayfs upper directory.
# shoal runs this as PID 1 of new mount and PID namespaces (`unshare --mount --pid --fork`): every
# mount here ends with the mount namespace however this script ends (loop devices mounted with -o
# loop detach themselves then), and every process left behind is killed with it.
#
# Nothing in the image is trusted: no link in it is followed on the host. Mount points in it are
# used only when they are directories (checked while nothing runs in the tree), and its program
# runs only inside the sandbox below.
#
#   with-root.sh view ROOT BASE LAYER SHIFT -- COMMAND...
#     COMMAND (a host program: du, mkfs.ext4 -d) reads the tree at ROOT, read-only, without
#     device files, setuid bits or execution.
#     BASE    a raw ext4 base image
#     LAYER   what goes above the base: a VM's layer image (its upper/), the upper directory a
#             sandbox wrote, or -
#     SHIFT   UID:GID when LAYER is a sandbox's upper directory: its owners are host ids from UID
#             and GID on, shown shifted back to 0 on; or -
#
#   with-root.sh sandbox ROOT BASE CHANGES SHARE UID:GID -- COMMAND...
#     COMMAND, a program of the image, runs as the image's root in a sandbox: new user, mount,
#     PID, IPC, UTS and cgroup namespaces, the image's root made the root with pivot_root and the
#     host's detached, a /dev with only null, zero, full, random, urandom, tty, pts and shm, its
#     own /proc, an empty read-only /sys, empty /run and /tmp, the host's DNS servers, and the
#     host's network. Its root is host id UID (GID): ids 0..65535 inside are host ids from UID and
#     GID on, so a process that got out would be an unprivileged host user. The bounding set keeps
#     only what package installs need (no CAP_SYS_ADMIN: no mounts), no_new_privs is set, and it
#     cannot make user namespaces of its own.
#     CHANGES a directory that takes the command's writes (CHANGES/upper, CHANGES/work), readable by
#             root only: files in it belong to the sandbox's ids
#     SHARE   a host directory shown read-only at /run/shoal, or -
set -eu
here=$(dirname "$0")
mode=$1
root=$2
base=$3
scratch=$root.mounts

fail() {
  echo "$*" >&2
  exit 1
}

# A directory of the image that something may be mounted on: not a link to elsewhere.
image_dir() {
  [ -d "$1" ] && [ ! -L "$1" ]
}

# Sets $userns to a user namespace with the given uid and gid map lines, held open by a process
# that ends with this script.
new_userns() {
  unshare --user sleep infinity &
  holder=$!
  while [ "$(readlink "/proc/$holder/ns/user")" = "$(readlink "/proc/$$/ns/user")" ]; do
    kill -0 "$holder" 2>/dev/null || fail "cannot make a user namespace"
    sleep 0.01
  done
  echo "$1" >"/proc/$holder/uid_map"
  echo "$2" >"/proc/$holder/gid_map"
  userns=/proc/$holder/ns/user
}

# A path below /run made of plain names only (no "", ".", ".."): it stays inside /run.
plain_path() {
  rest=$1
  while :; do
    part=${rest%%/*}
    case $part in '' | . | ..) return 1 ;; esac
    [ "$part" = "$rest" ] && return 0
    rest=${rest#*/}
  done
}

# The host's resolver where the image looks for it, without writing it into the image: over its
# own file, or in the empty /run where its link (systemd-resolved's stub) points. The link is
# read, not followed.
resolver() {
  [ -f /etc/resolv.conf ] && image_dir etc || return 0
  if [ -L etc/resolv.conf ]; then
    target=$(readlink etc/resolv.conf)
    # Relative links are relative to /etc.
    case $target in ../run/*) target=/${target#../} ;; esac
    below=${target#/run/}
    if [ "$run_is_ours" = yes ] && [ "$below" != "$target" ] && plain_path "$below"; then
      case $below in */*) mkdir -p "run/${below%/*}" ;; esac
      cp /etc/resolv.conf "run/$below"
    else
      echo "shoal: the image's /etc/resolv.conf links to $target, not to a file in /run: the change runs without the host's DNS servers" >&2
    fi
  elif [ -f etc/resolv.conf ]; then
    # A copy, the sandbox's to change: a package script that rewrites the image's resolv.conf
    # must not reach the host's, nor the new image.
    cp /etc/resolv.conf "$scratch/resolv.conf"
    chown "$owner" "$scratch/resolv.conf"
    mount --bind "$scratch/resolv.conf" etc/resolv.conf
  fi
}

# /dev, /run, /tmp, /sys, DNS and the share, put in place by host root while nothing runs in the
# tree, with relative paths from ROOT. The sandbox's root owns what it may write.
system_dirs() {
  image_dir dev || fail "the image has no /dev directory: it cannot run programs"
  image_dir proc || fail "the image has no /proc directory: it cannot run programs"
  mount -t tmpfs -o "nosuid,nodev,noexec,mode=755,size=1m,$tmpfs_owner" shoal-dev dev
  for node in null zero full random urandom tty; do
    : >"dev/$node"
    mount --bind "/dev/$node" "dev/$node"
  done
  mkdir dev/pts dev/shm
  mount -t tmpfs -o "nosuid,nodev,mode=1777,$tmpfs_owner" shoal-shm dev/shm
  ln -s pts/ptmx dev/ptmx
  ln -s /proc/self/fd dev/fd
  ln -s /proc/self/fd/0 dev/stdin
  ln -s /proc/self/fd/1 dev/stdout
  ln -s /proc/self/fd/2 dev/stderr
  # Nothing else appears in /dev: a program that writes to /dev/sda writes nowhere.
  mount -o remount,ro,nosuid,nodev,noexec dev
  run_is_ours=no
  if image_dir run; then
    mount -t tmpfs -o "nosuid,nodev,mode=755,$tmpfs_owner" shoal-run run
    run_is_ours=yes
  fi
  if image_dir tmp; then mount -t tmpfs -o "nosuid,nodev,mode=1777,$tmpfs_owner" shoal-tmp tmp; fi
  if image_dir sys; then mount -t tmpfs -o "ro,nosuid,nodev,noexec,mode=555" shoal-sys sys; fi
  resolver
  if [ "$run_is_ours" = yes ]; then chown -R "$owner" run; fi
  if [ "$share" != - ]; then
    [ "$run_is_ours" = yes ] || fail "the image has no /run directory to show the script in"
    mkdir run/shoal
    mount --bind -o ro "$share" run/shoal
  fi
}

# What the sandbox's PID 1 does, as the root of the new user namespace: its own /proc and ptys, no
# user namespaces below it, then COMMAND through enter-root.pl; whatever the command left
# running (a daemon a package's install started) is killed when it ends.
sandbox_init='
mount -t proc -o nosuid,nodev,noexec proc proc
mount -t devpts -o newinstance,nosuid,noexec,gid=5,mode=620,ptmxmode=666 devpts dev/pts
echo 0 >proc/sys/user/max_user_namespaces
status=0
"$@" || status=$?
kill -KILL -1 2>/dev/null || true
exit "$status"
'

# The base, and what is shown above it: a layer, or in the sandbox the base as its ids see it.
mkdir -p "$root" "$scratch/base" "$scratch/shown"
case $mode in
view)
  layer=$4
  ids=$5
  shift 5
  [ "$1" = -- ] && shift
  mount -o loop,ro,nodev,nosuid,noexec "$base" "$scratch/base"
  lower=$scratch/base
  if [ "$layer" != - ]; then
    if [ -d "$layer" ] && [ "$ids" != - ]; then
      new_userns "${ids%:*} 0 65536" "${ids#*:} 0 65536"
      perl "$here/idmap-mount.pl" "$userns" "$layer" "$scratch/shown"
      lower=$scratch/shown:$lower
    elif [ -d "$layer" ]; then
      lower=$layer:$lower
    else
      mount -o loop,ro,nodev,nosuid,noexec "$layer" "$scratch/shown"
      image_dir "$scratch/shown/upper" || fail "the layer $layer has no upper directory"
      lower=$scratch/shown/upper:$lower
    fi
  fi
  # Redirects and metacopy would let a layer name other files of the union: never followed.
  mount -t overlay -o "ro,nodev,nosuid,noexec,redirect_dir=nofollow,metacopy=off,lowerdir=$lower" shoal-root "$root"
  status=0
  "$@" || status=$?
  ;;
sandbox)
  changes=$4
  share=$5
  ids=$6
  shift 6
  [ "$1" = -- ] && shift
  uid=${ids%:*}
  gid=${ids#*:}
  owner=$uid:$gid
  tmpfs_owner=uid=$uid,gid=$gid
  mkdir -p "$changes/upper" "$changes/work"
  chmod 700 "$changes"
  mount -o loop,ro,nodev,nosuid "$base" "$scratch/base"
  new_userns "0 $uid 65536" "0 $gid 65536"
  # The base as the sandbox sees it: owned by its ids. Its writes land in CHANGES with those ids.
  perl "$here/idmap-mount.pl" "$userns" "$scratch/base" "$scratch/shown"
  chown "$owner" "$changes/upper"
  chmod --reference="$scratch/base" "$changes/upper"
  mount -t overlay -o "nodev,nosuid,redirect_dir=nofollow,metacopy=off,lowerdir=$scratch/shown,upperdir=$changes/upper,workdir=$changes/work" shoal-root "$root"
  cd "$root"
  system_dirs
  # The sandbox starts in ROOT: it needs no path to it (the staging directory is root's only).
  status=0
  nsenter --user="$userns" -- unshare --mount --pid --ipc --uts --cgroup --fork --kill-child -- \
    sh -c "$sandbox_init" sandbox perl -e "$(cat "$here/enter-root.pl")" -- "$@" || status=$?
  cd /
  ;;
*) fail "with-root.sh: unknown mode $mode" ;;
esac

# Whatever the command left running holds files under ROOT open: as PID 1 here, this ends them all.
kill -KILL -1 2>/dev/null || true
# Unmounted here, not left to the namespace's end: the upper directory and the images must be
# complete when shoal reads them next.
umount -R "$root"
for mount in "$scratch/shown" "$scratch/base"; do
  if mountpoint -q "$mount"; then umount "$mount"; fi
done
rm -f "$scratch/resolv.conf"
rmdir "$scratch/base" "$scratch/shown" "$scratch" "$root"
exit "$status"

# shellcheck shell=sh
# shoal's union root, shared by shoal's own initramfs (init) and the initramfs-tools hook.
# It mounts the shared base read-only, the VM's private layer read-write, and joins them with
# overlayfs. It FAILS CLOSED: when the layer cannot be set up, the VM powers off with a message
# naming the cause instead of running the shared base read-write (unless the fleet opted into a
# tmpfs fallback, which it announces loudly).
#
# Kernel parameters (set by shoal):
#   shoal.base=DEV              the shared base image, read-only
#   shoal.layer=tmpfs|DEV       the private layer: memory (lost at shutdown) or a block device
#   shoal.layer_size=SIZE       tmpfs size
#   shoal.base_id=SHA256        the base image's id, recorded on the layer
#   shoal.on_base_change=keep|warn|reset   what to do with a layer made over another base
#   shoal.fallback=tmpfs        use a tmpfs layer when the disk layer cannot be used
#   shoal.seed=DEV              the VM's identity (a tar archive shoal made on the host)
#   rootdelay=SECONDS           how long to wait for each of these devices (default 30), as
#                               initramfs-tools reads it
#
# After boot: the base at /run/shoal/base, the layer at /run/shoal/layer (upper/ and work/ are
# overlayfs's; shoal/base-id names the base the layer was made over).

SHOAL_RUN=/run/shoal
SHOAL_BASE=$SHOAL_RUN/base
SHOAL_LAYER=$SHOAL_RUN/layer
SHOAL_LAYER_LABEL=shoal-layer
# util-linux blkid and e2fsprogs mke2fs, at a path of shoal's own: busybox has no blkid, and its
# mke2fs (which initramfs-tools links over /sbin/mke2fs) makes only ext2.
SHOAL_TOOLS=/lib/shoal/bin

shoal_param() {
  for shoal_word in $(cat /proc/cmdline); do
    case "$shoal_word" in
      "$1="*) echo "${shoal_word#*=}"; return 0 ;;
    esac
  done
  return 1
}

shoal_say() {
  echo "shoal: $*" >&2
}

shoal_warn() {
  shoal_say "**************************************************************"
  shoal_say "WARNING: $*"
  shoal_say "**************************************************************"
}

shoal_fail() {
  shoal_say "FATAL: $*"
  shoal_say "FATAL: refusing to run the shared base read-write; powering off"
  sync
  echo 1 > /proc/sys/kernel/sysrq 2>/dev/null
  echo o > /proc/sysrq-trigger 2>/dev/null
  while :; do sleep 60; done
}

shoal_wait_for_device() {
  shoal_delay=$(shoal_param rootdelay) || shoal_delay=30
  case "$shoal_delay" in
    '' | *[!0-9]*) shoal_delay=30 ;;
  esac
  shoal_tries=0
  while [ ! -b "$1" ]; do
    shoal_tries=$((shoal_tries + 1))
    [ "$shoal_tries" -gt $((shoal_delay * 10)) ] && return 1
    sleep 0.1
  done
  return 0
}

# Prints "blank" when the first MiB is all zeros, "layer" for a shoal layer, else what blkid saw.
shoal_signature() {
  shoal_nonzero=$(dd if="$1" bs=65536 count=16 2>/dev/null | tr -d '\000' | wc -c)
  if [ "$shoal_nonzero" -eq 0 ]; then
    echo blank
    return
  fi
  # -p probes the device itself, not a cache.
  shoal_probe=$("$SHOAL_TOOLS/blkid" -p -o export "$1" 2>/dev/null)
  shoal_type=$(echo "$shoal_probe" | sed -n 's/^\(PT\)\{0,1\}TYPE=//p' | head -n 1)
  shoal_label=$(echo "$shoal_probe" | sed -n 's/^LABEL=//p')
  if [ "$shoal_type" = ext4 ] && [ "$shoal_label" = "$SHOAL_LAYER_LABEL" ]; then
    echo layer
  elif [ -n "$shoal_type" ]; then
    echo "a $shoal_type signature${shoal_label:+ labelled $shoal_label}"
  else
    echo "data shoal does not recognise"
  fi
}

shoal_mount_tmpfs_layer() {
  shoal_size=$(shoal_param shoal.layer_size) || shoal_size=64M
  mount -t tmpfs -o "size=$shoal_size,mode=0755" shoal-layer "$SHOAL_LAYER" ||
    shoal_fail "cannot mount a tmpfs layer of $shoal_size"
}

# A disk layer that cannot be used: fail closed, or fall back to tmpfs when the fleet chose that.
shoal_layer_unusable() {
  if [ "$(shoal_param shoal.fallback)" = tmpfs ]; then
    shoal_warn "$*; FALLING BACK TO A TMPFS LAYER: this VM's changes will be LOST at shutdown"
    shoal_mount_tmpfs_layer
    return
  fi
  shoal_fail "$*"
}

shoal_mount_disk_layer() {
  shoal_dev=$1
  if ! shoal_wait_for_device "$shoal_dev"; then
    shoal_layer_unusable "layer device $shoal_dev not found (waited ${shoal_delay}s; rootdelay= sets it)"
    return
  fi
  case "$(shoal_signature "$shoal_dev")" in
    blank)
      shoal_say "formatting blank layer $shoal_dev"
      # The device is all zeros, so journal and inode tables need no zeroing: writing them would
      # allocate about 33 MiB of a sparse 1 GiB layer on the host; this way it stays under 1 MiB.
      "$SHOAL_TOOLS/mke2fs" -q -F -t ext4 -E lazy_itable_init=1,lazy_journal_init=1 -L "$SHOAL_LAYER_LABEL" "$shoal_dev" ||
        { shoal_layer_unusable "cannot format layer device $shoal_dev"; return; }
      ;;
    layer) ;;
    *)
      shoal_layer_unusable "layer device $shoal_dev holds $(shoal_signature "$shoal_dev"), not a shoal layer; refusing to format it"
      return
      ;;
  esac
  mount -t ext4 -o rw,noatime "$shoal_dev" "$SHOAL_LAYER" ||
    shoal_layer_unusable "cannot mount layer device $shoal_dev"
}

# The layer remembers the base it was made over; a different base triggers the fleet's policy.
shoal_check_base() {
  shoal_want=$(shoal_param shoal.base_id) || return 0
  shoal_marker=$SHOAL_LAYER/shoal/base-id
  shoal_have=$(cat "$shoal_marker" 2>/dev/null)
  if [ -n "$shoal_have" ] && [ "$shoal_have" != "$shoal_want" ]; then
    shoal_policy=$(shoal_param shoal.on_base_change) || shoal_policy=warn
    case "$shoal_policy" in
      keep)
        shoal_say "layer made over base $shoal_have, now over $shoal_want: kept"
        ;;
      reset)
        shoal_say "layer made over base $shoal_have, now over $shoal_want: resetting the layer"
        rm -rf "$SHOAL_LAYER/upper" "$SHOAL_LAYER/work"
        mkdir -p "$SHOAL_LAYER/upper" "$SHOAL_LAYER/work"
        ;;
      *)
        shoal_warn "this layer was made over base $shoal_have and now boots over $shoal_want; files this VM changed hide the new base's versions of them"
        ;;
    esac
  fi
  echo "$shoal_want" > "$shoal_marker.new" && mv "$shoal_marker.new" "$shoal_marker"
}

# Drops the lines that would make the system mount or swap what shoal manages.
shoal_fix_fstab() {
  shoal_fstab=$1/etc/fstab
  [ -f "$shoal_fstab" ] || return 0
  if awk '!/^[ \t]*#/ && NF >= 3 && ($2 == "/" || $3 == "swap") { found = 1 } END { exit !found }' "$shoal_fstab"; then
    awk '/^[ \t]*#/ || NF < 3 || ($2 != "/" && $3 != "swap")' "$shoal_fstab" > "$shoal_fstab.shoal" &&
      mv "$shoal_fstab.shoal" "$shoal_fstab"
  fi
}

# Unpacks the VM's identity (hostname, machine-id, SSH host key, root's authorized_keys) into the
# root at every boot: shoal is its authority, and a tmpfs layer needs it again at each boot.
shoal_apply_seed() {
  shoal_seed=$(shoal_param shoal.seed) || return 0
  shoal_wait_for_device "$shoal_seed" || shoal_fail "identity seed device $shoal_seed not found"
  mkdir -p "$1/etc/ssh/sshd_config.d" "$1/root"
  [ -d "$1/root/.ssh" ] || mkdir -m 0700 "$1/root/.ssh"
  tar -x -f "$shoal_seed" -C "$1" || shoal_fail "cannot unpack the identity seed $shoal_seed"
  shoal_say "identity: hostname $(cat "$1/etc/hostname"), machine-id $(cat "$1/etc/machine-id")"
}

# Lets the balloon hand free memory back to the host in chunks of 128 KiB. Linux 6.1 sets the
# chunk to 2 MiB when the balloon registers, and reports only while 32 chunks (64 MiB) are free
# above the low watermark: never, in a VM of 128M.
shoal_report_free_pages() {
  shoal_order=/sys/module/page_reporting/parameters/page_reporting_order
  if [ -w "$shoal_order" ]; then echo 5 > "$shoal_order"; fi
}

# The base, read-only, with the options shoal gave (rootflags=dax=always where the base is mapped
# for DAX); a base that refuses them still boots, reading its files through the page cache.
shoal_mount_base() {
  shoal_flags=$(shoal_param rootflags) || shoal_flags=
  mount -t ext4 -o "ro${shoal_flags:+,$shoal_flags}" "$1" "$SHOAL_BASE" && return 0
  [ -n "$shoal_flags" ] || shoal_fail "cannot mount the base $1 read-only"
  mount -t ext4 -o ro "$1" "$SHOAL_BASE" || shoal_fail "cannot mount the base $1 read-only"
  shoal_warn "the base $1 took no $shoal_flags: this VM keeps its own copy of the base's files in memory"
}

# Mounts the base (unless the caller did) and the layer, and the union at $1.
shoal_union_root() {
  shoal_root=$1
  shoal_report_free_pages
  mkdir -p "$SHOAL_BASE" "$SHOAL_LAYER"
  shoal_base_dev=$(shoal_param shoal.base) || shoal_fail "no shoal.base= on the kernel command line"
  if ! grep -q " $SHOAL_BASE " /proc/mounts; then
    shoal_wait_for_device "$shoal_base_dev" || shoal_fail "base device $shoal_base_dev not found"
    shoal_mount_base "$shoal_base_dev"
  fi
  blockdev --setro "$shoal_base_dev" 2>/dev/null
  shoal_layer=$(shoal_param shoal.layer) || shoal_fail "no shoal.layer= on the kernel command line"
  case "$shoal_layer" in
    tmpfs) shoal_mount_tmpfs_layer ;;
    /dev/*) shoal_mount_disk_layer "$shoal_layer" ;;
    *) shoal_fail "shoal.layer=$shoal_layer is neither tmpfs nor a /dev path" ;;
  esac
  mkdir -p "$SHOAL_LAYER/upper" "$SHOAL_LAYER/work" "$SHOAL_LAYER/shoal" || shoal_fail "cannot write to the layer"
  shoal_check_base
  # Without redirect_dir, index, metacopy and xino the base may be replaced while the VM is off.
  mount -t overlay shoal-root \
    -o "lowerdir=$SHOAL_BASE,upperdir=$SHOAL_LAYER/upper,workdir=$SHOAL_LAYER/work,redirect_dir=off,index=off,metacopy=off,xino=off" \
    "$shoal_root" || shoal_fail "cannot mount the union of base and layer"
  shoal_fix_fstab "$shoal_root"
  shoal_apply_seed "$shoal_root"
  shoal_say "root is the union of base $shoal_base_dev (read-only) and layer $shoal_layer"
}

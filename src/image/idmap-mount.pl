#!/usr/bin/perl
# Idmapped bind mounts (mount_setattr(2) with MOUNT_ATTR_IDMAP), which util-linux learns only in
# 2.39 (X-mount.idmap): each SOURCE is mounted again at TARGET with the file owners it shows
# translated through the id mapping of the user namespace USERNS (a /proc/PID/ns/user file), and
# with nosuid and nodev.
#
#   idmap-mount.pl USERNS SOURCE TARGET [SOURCE TARGET]...
use strict;
use warnings;
require "syscall.ph";

use constant {
  AT_FDCWD => -100,
  AT_EMPTY_PATH => 0x1000,
  OPEN_TREE_CLONE => 1,
  OPEN_TREE_CLOEXEC => 0x80000,
  MOUNT_ATTR_NOSUID => 0x2,
  MOUNT_ATTR_NODEV => 0x4,
  MOUNT_ATTR_IDMAP => 0x100000,
  MOVE_MOUNT_F_EMPTY_PATH => 0x4,
};

my ($userns, @mounts) = @ARGV;
die "usage: idmap-mount.pl USERNS SOURCE TARGET...\n" if !defined $userns || !@mounts || @mounts % 2;
open(my $ns, "<", $userns) or die "idmap-mount: $userns: $!\n";
while (my ($source, $target) = splice(@mounts, 0, 2)) {
  # syscall() hands strings over as writable buffers: no literals.
  my ($from, $to, $empty) = ($source, $target, "");
  my $tree = syscall(&SYS_open_tree, AT_FDCWD, $from, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
  die "idmap-mount: open_tree $source: $!\n" if $tree < 0;
  my $attr = pack("QQQQ", MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, fileno($ns));
  syscall(&SYS_mount_setattr, $tree, $empty, AT_EMPTY_PATH, $attr, length $attr) == 0
    or die "idmap-mount: idmapping $source: $!\n";
  syscall(&SYS_move_mount, $tree, $empty, AT_FDCWD, $to, MOVE_MOUNT_F_EMPTY_PATH) == 0
    or die "idmap-mount: mounting at $target: $!\n";
}

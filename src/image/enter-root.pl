#!/usr/bin/perl
# The last step into a derive's sandbox (see with-root.sh), run from the image's root directory:
# makes it the root with pivot_root(2), detaches the old root (the host's files) so nothing leads
# back there, keeps only the capabilities package installs need in the bounding set, sets
# no_new_privs, and runs COMMAND with an environment of its own. One process does it all: after
# the detach no host program can be started, and what is left to do is system calls.
#
#   enter-root.pl COMMAND...
use strict;
use warnings;
require "syscall.ph";

use constant {
  AT_FDCWD => -100,
  AT_EMPTY_PATH => 0x1000,
  AT_RECURSIVE => 0x8000,
  OPEN_TREE_CLONE => 1,
  MOVE_MOUNT_F_EMPTY_PATH => 0x4,
  MNT_DETACH => 2,
  PR_CAPBSET_DROP => 24,
  PR_SET_NO_NEW_PRIVS => 38,
  LAST_CAP => 63,
};

# Docker's default set without mknod (useless here), net_raw (raw sockets) and audit_write: owners,
# modes, setuid for dropping to a service user, file capabilities, chroot, signals, low ports.
my %keep = map { $_ => 1 } (
  0,     # chown
  1,     # dac_override
  3,     # fowner
  4,     # fsetid
  5,     # kill
  6,     # setgid
  7,     # setuid
  8,     # setpcap
  10,    # net_bind_service
  18,    # sys_chroot
  31,    # setfcap
);

die "usage: enter-root.pl COMMAND...\n" if !@ARGV;
my ($here, $empty) = (".", "");
# The root and the mounts in it came from host root's mount namespace: locked here, and
# pivot_root refuses a locked mount. A copy made here, mounted over it, is not.
my $copy = syscall(&SYS_open_tree, AT_FDCWD, $here, OPEN_TREE_CLONE | AT_RECURSIVE);
die "enter-root: copying the root's mounts: $!\n" if $copy < 0;
syscall(&SYS_move_mount, $copy, $empty, AT_FDCWD, $here, MOVE_MOUNT_F_EMPTY_PATH) == 0
  or die "enter-root: mounting the copy: $!\n";
open(my $top, "<&=", $copy) or die "enter-root: $!\n";
chdir $top or die "enter-root: entering the copy: $!\n";
close $top;
syscall(&SYS_pivot_root, $here, $here) == 0 or die "enter-root: pivot_root: $!\n";
# The old root now sits on top of the new one: detaching it leaves the image's root alone.
syscall(&SYS_umount2, $here, MNT_DETACH) == 0 or die "enter-root: detaching the host's root: $!\n";
chdir "/" or die "enter-root: chdir /: $!\n";
for my $cap (0 .. LAST_CAP) {
  next if $keep{$cap};
  # Numbers past the kernel's last capability fail with EINVAL: there is nothing to drop.
  syscall(&SYS_prctl, PR_CAPBSET_DROP, $cap, 0, 0, 0) == 0 or $!{EINVAL}
    or die "enter-root: dropping capability $cap: $!\n";
}
syscall(&SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 or die "enter-root: no_new_privs: $!\n";
# Nothing of shoal's environment (its user's tokens, say) reaches the image's code. It runs
# unattended: package installs ask nothing.
%ENV = (
  PATH => "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
  HOME => "/root",
  LANG => "C",
  DEBIAN_FRONTEND => "noninteractive",
);
exec { $ARGV[0] } @ARGV or die "enter-root: $ARGV[0]: $!\n";

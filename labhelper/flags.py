"""Kernel flag values as ``enum.IntFlag``, so that they print by name.

The values are the kernel's ABI (include/uapi/linux/sched.h, mount.h, prctl.h); they are the
same on x86_64 and aarch64. ``str(flags)`` and ``repr(flags)`` are identical on Python 3.11 and
3.12, e.g. ``CLONE_NEWNS|CLONE_NEWUTS``, so notebooks can print them and nbval can compare.
"""
from __future__ import annotations

import enum

__all__ = ["CloneFlags", "MountFlags", "UmountFlags", "Prctl"]


class _KernelFlags(enum.IntFlag):
    """An IntFlag that prints as the kernel's C names joined by '|' (lowest bit first)."""

    def flag_names(self) -> str:
        value = int(self)
        if value == 0:
            return "0"
        parts = []
        for member in sorted(type(self).__members__.values(), key=int):
            bit = int(member)
            # Only single-bit members, so that aliases and combinations are not printed twice.
            if bit and bit & (bit - 1) == 0 and value & bit:
                parts.append(member.name)
                value &= ~bit
        if value:
            parts.append(hex(value))
        return "|".join(parts)

    def __str__(self) -> str:
        return self.flag_names()

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


class CloneFlags(_KernelFlags):
    """clone(2)/unshare(2) flags. Each NEW* flag creates one namespace type."""
    CLONE_NEWTIME = 0x00000080
    CLONE_VM = 0x00000100
    CLONE_FS = 0x00000200
    CLONE_FILES = 0x00000400
    CLONE_SIGHAND = 0x00000800
    CLONE_PIDFD = 0x00001000
    CLONE_PARENT = 0x00008000
    CLONE_NEWNS = 0x00020000
    CLONE_SYSVSEM = 0x00040000
    CLONE_NEWCGROUP = 0x02000000
    CLONE_NEWUTS = 0x04000000
    CLONE_NEWIPC = 0x08000000
    CLONE_NEWUSER = 0x10000000
    CLONE_NEWPID = 0x20000000
    CLONE_NEWNET = 0x40000000


class MountFlags(_KernelFlags):
    """mount(2) flags (MS_*)."""
    MS_RDONLY = 1
    MS_NOSUID = 2
    MS_NODEV = 4
    MS_NOEXEC = 8
    MS_SYNCHRONOUS = 16
    MS_REMOUNT = 32
    MS_MANDLOCK = 64
    MS_DIRSYNC = 128
    MS_NOSYMFOLLOW = 256
    MS_NOATIME = 1024
    MS_NODIRATIME = 2048
    MS_BIND = 4096
    MS_MOVE = 8192
    MS_REC = 16384
    MS_SILENT = 32768
    MS_UNBINDABLE = 1 << 17
    MS_PRIVATE = 1 << 18
    MS_SLAVE = 1 << 19
    MS_SHARED = 1 << 20
    MS_RELATIME = 1 << 21
    MS_STRICTATIME = 1 << 24


class UmountFlags(_KernelFlags):
    """umount2(2) flags."""
    MNT_FORCE = 1
    MNT_DETACH = 2
    MNT_EXPIRE = 4
    UMOUNT_NOFOLLOW = 8


class OpenTreeFlags(_KernelFlags):
    OPEN_TREE_CLONE = 1
    AT_RECURSIVE = 0x8000


class FsconfigCmd(enum.IntEnum):
    """fsconfig(2) commands (include/uapi/linux/mount.h): set one parameter of a filesystem
    context, then create the superblock."""
    FSCONFIG_SET_FLAG = 0
    FSCONFIG_SET_STRING = 1
    FSCONFIG_SET_BINARY = 2
    FSCONFIG_SET_PATH = 3
    FSCONFIG_SET_PATH_EMPTY = 4
    FSCONFIG_SET_FD = 5
    FSCONFIG_CMD_CREATE = 6
    FSCONFIG_CMD_RECONFIGURE = 7
    FSCONFIG_CMD_CREATE_EXCL = 8


class MountAttr(_KernelFlags):
    """fsmount(2) and mount_setattr(2) attributes (MOUNT_ATTR_*)."""
    MOUNT_ATTR_RDONLY = 0x1
    MOUNT_ATTR_NOSUID = 0x2
    MOUNT_ATTR_NODEV = 0x4
    MOUNT_ATTR_NOEXEC = 0x8


class Prctl(enum.IntEnum):
    """prctl(2) options used by labhelper."""
    PR_SET_PDEATHSIG = 1
    PR_GET_PDEATHSIG = 2
    PR_GET_DUMPABLE = 3
    PR_SET_DUMPABLE = 4
    PR_SET_NAME = 15
    PR_GET_NAME = 16
    PR_GET_SECCOMP = 21
    PR_SET_SECCOMP = 22
    PR_CAPBSET_READ = 23
    PR_CAPBSET_DROP = 24
    PR_SET_CHILD_SUBREAPER = 36
    PR_SET_NO_NEW_PRIVS = 38
    PR_GET_NO_NEW_PRIVS = 39

    def __str__(self) -> str:
        return self.name

    __repr__ = __str__


# The C names at module level too: ``from labhelper.flags import CLONE_NEWNS``.
globals().update({m.name: m for cls in (CloneFlags, MountFlags, UmountFlags, Prctl) for m in cls})

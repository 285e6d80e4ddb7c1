"""Mounts: a /proc/self/mountinfo parser and small mount helpers.

mountinfo (proc(5)) has one line per mount in this process's mount namespace::

    36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    (1)(2)(3)   (4)   (5)      (6)     (7)   (8) (9)   (10)         (11)

(1) mount id, (2) parent id, (3) major:minor, (4) root of the mount within its filesystem,
(5) mount point, (6) per-mount options, (7) optional fields such as ``shared:N`` (zero or more),
(8) a separator ``-``, (9) filesystem type, (10) source, (11) per-superblock options.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import host, syscalls
from .flags import MountFlags, UmountFlags
from .registry import fault_point, ledger

__all__ = ["Mount", "parse_mountinfo", "mounts", "mounts_under", "mount_tmpfs", "unmount", "LAB_DIRS"]

# Everything we mount lives under these folders (our mark on mounts).
LAB_DIRS = ("/var/lib/labhelper", "/run/labhelper")


def _unescape(text: str) -> str:
    # Space, tab, newline and backslash in paths are written as \040, \011, \012, \134.
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 4 <= len(text) and text[i + 1:i + 4].isdigit():
            out.append(chr(int(text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class Mount:
    mount_id: int
    parent_id: int
    device: str
    root: str
    mountpoint: str
    options: str
    propagation: tuple[str, ...]
    fstype: str
    source: str
    super_options: str

    @property
    def upperdir(self) -> str | None:
        """For an overlay mount, its upper directory (where writes land)."""
        for opt in self.super_options.split(","):
            if opt.startswith("upperdir="):
                return opt[len("upperdir="):]
        return None

    def __repr__(self) -> str:
        return f"Mount({self.fstype} on {self.mountpoint})"


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse mountinfo text; lines that do not fit the format are skipped."""
    result = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        f, r = left.split(" "), right.split(" ")
        if len(f) < 6 or len(r) < 3:
            continue
        try:
            mount_id, parent_id = int(f[0]), int(f[1])
        except ValueError:
            continue
        result.append(Mount(mount_id, parent_id, f[2], _unescape(f[3]), _unescape(f[4]), f[5],
                            tuple(f[6:]), r[0], _unescape(r[1]), " ".join(r[2:])))
    return result


def mounts(proc: Path | str = "/proc", pid: str = "self") -> list[Mount]:
    return parse_mountinfo(Path(proc, str(pid), "mountinfo").read_text())


def is_under(path: str, folder: str) -> bool:
    path, folder = os.path.normpath(path), os.path.normpath(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def mounts_under(folder: str, table: list[Mount] | None = None) -> list[Mount]:
    """Mounts at or below ``folder``, deepest first: the order in which to unmount them."""
    table = mounts() if table is None else table
    found = [m for m in table if is_under(m.mountpoint, folder)]
    return sorted(found, key=lambda m: (m.mountpoint.count("/"), m.mount_id), reverse=True)


def mount_tmpfs(target: str, size: str = "1m", owner: str | None = None) -> Mount:
    """Mount a small tmpfs at ``target`` (under a lab folder), and record it in the ledger."""
    if not any(is_under(target, d) for d in LAB_DIRS):
        raise ValueError(f"{target!r} is not under {' or '.join(LAB_DIRS)}: labhelper mounts only there")
    host.guard(f"mount a tmpfs on {target}")
    os.makedirs(target, exist_ok=True)
    syscalls.mount("labhelper", target, "tmpfs", MountFlags.MS_NOSUID | MountFlags.MS_NODEV, f"size={size}")
    ledger().add("mount", target, owner)
    fault_point("mount")
    return next(m for m in reversed(mounts()) if m.mountpoint == os.path.normpath(target))


def unmount(target: str, record: bool = True) -> bool:
    """Unmount ``target`` and every mount below it, deepest first (idempotent).

    MNT_DETACH: the mount disappears from the tree now even if a process still uses it; the
    kernel frees it when the last user is gone. UMOUNT_NOFOLLOW: never unmount through a symlink.
    Returns True if something was unmounted.
    """
    done = False
    for m in mounts_under(target):
        try:
            syscalls.umount2(m.mountpoint, UmountFlags.MNT_DETACH | UmountFlags.UMOUNT_NOFOLLOW)
            done = True
        except OSError as exc:
            if exc.errno not in (22, 2):  # EINVAL: not mounted (any more); ENOENT: gone
                raise
    if record:
        ledger().remove("mount", os.path.normpath(target))
    return done

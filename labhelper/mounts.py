"""Mounts: a /proc/self/mountinfo parser and small mount helpers.

mountinfo (proc(5)) has one line per mount in this process's mount namespace::

    36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    (1)(2)(3)   (4)   (5)      (6)     (7)   (8) (9)   (10)         (11)

(1) mount id, (2) parent id, (3) major:minor, (4) root of the mount within its filesystem,
(5) mount point, (6) per-mount options, (7) optional fields such as ``shared:N`` (zero or more),
(8) a separator ``-``, (9) filesystem type, (10) source, (11) per-superblock options.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from . import host, syscalls
from .errors import LabError, SyscallError
from .flags import MountFlags, UmountFlags
from .registry import fault_point, ledger

__all__ = ["Mount", "parse_mountinfo", "mounts", "mounts_under", "mount_tmpfs", "unmount", "LAB_DIRS",
           "read_mountinfo", "open_lab_dir", "mnt_id", "is_under"]

# Everything we mount lives under these folders (our mark on mounts).
LAB_DIRS = ("/var/lib/labhelper", "/run/labhelper")


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
        result.append(Mount(mount_id, parent_id, f[2], host.unescape_mountinfo(f[3]), host.unescape_mountinfo(f[4]), f[5],
                            tuple(f[6:]), r[0], host.unescape_mountinfo(r[1]), " ".join(r[2:])))
    return result


def read_mountinfo(proc: Path | str = "/proc", pid: str = "self") -> str:
    """The mountinfo text. Read as bytes: a mount point is any byte string the kernel accepts,
    not necessarily UTF-8; os.fsdecode keeps such bytes as lone surrogates (surrogateescape),
    so the path still names the same file when it goes back to a system call."""
    return os.fsdecode(Path(proc, str(pid), "mountinfo").read_bytes())


def mounts(proc: Path | str = "/proc", pid: str = "self") -> list[Mount]:
    return parse_mountinfo(read_mountinfo(proc, pid))


def is_under(path: str, folder: str) -> bool:
    path, folder = os.path.normpath(path), os.path.normpath(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def mounts_under(folder: str, table: list[Mount] | None = None) -> list[Mount]:
    """Mounts at or below ``folder``, deepest first: the order in which to unmount them."""
    table = mounts() if table is None else table
    found = [m for m in table if is_under(m.mountpoint, folder)]
    return sorted(found, key=lambda m: (m.mountpoint.count("/"), m.mount_id), reverse=True)


def mnt_id(fd: int) -> int:
    """The id of the mount ``fd`` lies on (the ``mnt_id:`` line of /proc/self/fdinfo/FD), or -1.

    Two folders of one filesystem can be on different mounts (a bind mount shows the same files
    twice), so st_dev cannot tell them apart; the mount id can. It is field (1) of mountinfo.
    """
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as fh:
            for line in fh:
                if line.startswith(b"mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return -1


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _lab_root(path: str, allowed: tuple[str, ...]) -> str | None:
    path = os.path.normpath(path)
    return next((os.path.normpath(d) for d in allowed if is_under(path, d)), None)


def open_lab_dir(path: str, allowed: tuple[str, ...] | None = None, create: bool = False,
                 mode: int = 0o755) -> int:
    """Open the folder ``path`` (under one of ``allowed``) without following any symlink in it.

    O_NOFOLLOW only guards the *last* component of a path: in /run/labhelper/link/sub, a symlink
    ``link`` would still be followed. So walk down from the lab folder one component at a time,
    each opened with O_NOFOLLOW relative to its parent's fd (openat(2)); a symlink anywhere is
    refused. ``create`` makes missing folders on the way (mkdirat). Returns an fd to close;
    raises FileNotFoundError if a component is missing, LabError if one is a symlink or a file.
    """
    allowed = LAB_DIRS if allowed is None else allowed
    root = _lab_root(path, allowed)
    if root is None:
        raise LabError(f"refusing to open {path!r}: labhelper works only below {' or '.join(allowed)}")
    parts = [p for p in os.path.relpath(os.path.normpath(path), root).split("/") if p not in ("", ".")]
    if create:
        os.makedirs(root, mode=0o755, exist_ok=True)
    fd = _open_step(None, root, root)
    where = root
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                except FileExistsError:
                    pass
            sub = _open_step(fd, part, os.path.join(where, part))
            os.close(fd)
            fd, where = sub, os.path.join(where, part)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_step(dir_fd: int | None, name: str, shown: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
    # Say what is in the way: a symlink (and where it points) or a file.
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        raise LabError(f"refusing to go through {shown!r}: it is a symlink (to "
                       f"{os.readlink(name, dir_fd=dir_fd)!r}); labhelper never follows a symlink in a lab path",
                       hint="a symlink there could lead a mount or a removal to a host folder; remove it "
                            "(rm, not rm -r) and try again") from None
    raise LabError(f"refusing to go through {shown!r}: it is not a folder") from None


def mount_tmpfs(target: str, size: str = "1m", owner: str | None = None) -> Mount:
    """Mount a small tmpfs at ``target`` (under a lab folder), and record it in the ledger."""
    if not any(is_under(target, d) and os.path.normpath(target) != os.path.normpath(d) for d in LAB_DIRS):
        raise ValueError(f"{target!r} is not under {' or '.join(LAB_DIRS)}: labhelper mounts only there")
    target = os.path.normpath(target)
    host.guard(f"mount a tmpfs on {target}")
    parent = open_lab_dir(os.path.dirname(target), LAB_DIRS, create=True)
    try:
        name = os.path.basename(target)
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
        except FileExistsError:
            pass
        fd = _open_step(parent, name, target)
        try:
            # Mount on the folder we opened (without following symlinks), not on the path again:
            # /proc/self/fd/N names exactly that folder, so a symlink swapped in since cannot
            # redirect the mount elsewhere.
            try:
                syscalls.mount("labhelper", f"/proc/self/fd/{fd}", "tmpfs",
                               MountFlags.MS_NOSUID | MountFlags.MS_NODEV, f"size={size}")
            except SyscallError as exc:
                raise SyscallError("mount", {**exc.arguments, "target": target}, exc.errno, exc.hint) from None
        finally:
            os.close(fd)
        ledger().add("mount", target, owner)
        fault_point("mount")
        # Find the new mount by its id: open the path again (now the tmpfs's root) and ask.
        top = _open_step(parent, name, target)
        try:
            mid = mnt_id(top)
        finally:
            os.close(top)
    finally:
        os.close(parent)
    found = next((m for m in mounts() if m.mount_id == mid), None)
    if found is None:
        raise LabError(f"mounted a tmpfs on {target}, but cannot find it in /proc/self/mountinfo",
                       hint="`labhelper census` shows it; `labhelper cleanup` removes it")
    return found


def unmount(target: str, record: bool = True) -> bool:
    """Unmount ``target`` and every mount below it, deepest first (idempotent).

    MNT_DETACH: the mount disappears from the tree now even if a process still uses it; the
    kernel frees it when the last user is gone. UMOUNT_NOFOLLOW: never unmount through a symlink.
    Returns True if something was unmounted.
    """
    if not any(is_under(target, d) for d in LAB_DIRS):
        # unmount("/") would detach every mount of this machine, deepest first.
        raise ValueError(f"{target!r} is not under {' or '.join(LAB_DIRS)}: labhelper unmounts only there")
    target = os.path.normpath(target)
    host.guard(f"unmount {target}")
    done = False
    for m in mounts_under(target):
        try:
            syscalls.umount2(m.mountpoint, UmountFlags.MNT_DETACH | UmountFlags.UMOUNT_NOFOLLOW)
            done = True
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT):  # not mounted (any more); gone
                raise
    if record:
        ledger().remove("mount", target)
    return done

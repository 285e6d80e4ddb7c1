"""Reading the kernel's own files: /proc (mountinfo, a process's stat and cgroups) and small
files of /sys.

The kernel describes much of its state as text files in pseudo-filesystems: procfs (/proc) and
sysfs (/sys). Reading them needs no system call beyond open and read, and no privilege for most.
Every reader here takes the root of the tree it reads (``proc``), so unit tests point it at a
fake tree in a temporary folder (tests/unit/fake.py).

Paths in these files are bytes, not necessarily UTF-8: a mount point is any byte string the
kernel accepts. They are decoded as the OS does (``os.fsdecode``, surrogateescape), so a path
with odd bytes still names the same file when it goes back to a system call.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import syscalls
from .marks import is_under

__all__ = ["read_text", "status", "unescape", "Mount", "parse_mountinfo", "mountinfo", "mount_id",
           "start_time", "parent_of", "ancestors", "children", "is_zombie", "CgroupEntry", "cgroups_of", "cgroup_host_paths"]

#: The most a reader takes from one file unless told otherwise: kernel files read here are a
#: few kilobytes, and a bound keeps a broken or hostile file from filling the memory.
READ_LIMIT = 1 << 20


def read_text(path: Path | str, default: str = "", limit: int | None = READ_LIMIT) -> str:
    """The text of a small kernel file, or ``default`` if it cannot be read. At most ``limit``
    bytes are read (None: all)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read() if limit is None else fh.read(limit)
    except OSError:
        return default
    return os.fsdecode(data)


def unescape(field: str) -> str:
    """Undo mountinfo's octal escapes: space, tab, newline and backslash in a path are written
    as \\040, \\011, \\012 and \\134 (the kernel's seq_file mangling)."""
    if "\\" not in field:
        return field
    raw = os.fsencode(field)
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i:i + 1] == b"\\" and raw[i + 1:i + 4].isdigit() and len(raw[i + 1:i + 4]) == 3:
            out.append(int(raw[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


@dataclass(frozen=True)
class Mount:
    """One line of /proc/PID/mountinfo (proc(5))::

        36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
        (1)(2)(3)   (4)   (5)      (6)     (7)   (8) (9)   (10)         (11)

    (1) mount id, (2) parent id, (3) major:minor, (4) root of the mount within its filesystem,
    (5) mount point, (6) per-mount options, (7) optional fields such as ``shared:N`` (zero or
    more), (8) a separator ``-``, (9) filesystem type, (10) source, (11) per-superblock options.
    """
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
        return self._super_option("upperdir")

    @property
    def workdir(self) -> str | None:
        """For an overlay mount, its work directory (the kernel's scratch space)."""
        return self._super_option("workdir")

    def _super_option(self, key: str) -> str | None:
        for opt in self.super_options.split(","):
            if opt.startswith(key + "="):
                return opt[len(key) + 1:]
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
        result.append(Mount(mount_id, parent_id, f[2], unescape(f[3]), unescape(f[4]), f[5],
                            tuple(f[6:]), r[0], unescape(r[1]), " ".join(r[2:])))
    return result


def mountinfo(proc: Path | str = "/proc", pid: int | str = "self") -> list[Mount]:
    """Every mount that process ``pid`` sees (its mount namespace), in mountinfo's order."""
    return parse_mountinfo(read_text(Path(proc, str(pid), "mountinfo"), limit=None))


def mount_id(fd: int, proc: Path | str = "/proc") -> int:
    """The id of the mount ``fd`` lies on (the ``mnt_id:`` line of /proc/self/fdinfo/FD), or -1.

    Two folders of one filesystem can be on different mounts (a bind mount shows the same files
    twice), so st_dev cannot tell them apart; the mount id can. It is field (1) of mountinfo.
    On this machine's own /proc, statx(2) answers the same in one call.
    """
    if str(proc) == "/proc":
        found = syscalls.statx_mount_id(fd)
        if found is not None:
            return found
    for line in read_text(Path(proc, "self", "fdinfo", str(fd))).splitlines():
        if line.startswith("mnt_id:"):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return -1
    return -1


def status(pid: int | str = "self", proc: Path | str = "/proc") -> dict[str, str]:
    """/proc/PID/status as {field: value} ("Uid": "0\t0\t0\t0", "Seccomp": "2", "CapBnd": hex...);
    {} when the process is gone."""
    out = {}
    for line in read_text(Path(proc, str(pid), "status"), "").splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _stat_fields(pid: int | str, proc: Path | str) -> list[str] | None:
    # /proc/PID/stat: "pid (comm) state ppid ...". The command name may contain spaces and ')':
    # split after the *last* ')'. Field 3 (state) is then index 0.
    text = read_text(Path(proc, str(pid), "stat"), default="")
    if not text:
        return None
    return text[text.rfind(")") + 2:].split()


def start_time(pid: int, proc: Path | str = "/proc") -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None.

    A pid alone does not name a process for long: the kernel reuses pids. (pid, start time) does.
    """
    fields = _stat_fields(pid, proc)
    try:
        return int(fields[19])  # fields 3.. start at index 0, so field 22 is index 19
    except (TypeError, IndexError, ValueError):
        return None


def parent_of(pid: int | str, proc: Path | str = "/proc") -> int | None:
    """The pid of ``pid``'s parent (field 4 of /proc/PID/stat), or None if it is gone."""
    fields = _stat_fields(pid, proc)
    try:
        return int(fields[1])
    except (TypeError, IndexError, ValueError):
        return None


def ancestors(pid: int | None = None, proc: Path | str = "/proc") -> list[int]:
    """``pid`` (default: this process) and every process above it, up to PID 1."""
    chain = []
    here = os.getpid() if pid is None else pid
    while here and here not in chain:
        chain.append(here)
        here = parent_of(here, proc)
    return chain


def children(pid: int | str = "self", proc: Path | str = "/proc") -> list[int]:
    """The pids of ``pid``'s children, from /proc/PID/task/TID/children (one file per thread:
    a child belongs to the thread that forked it). Plain os calls: every forked child of
    process.spawn asks this once at its end, so it must cost next to nothing."""
    base = f"{proc}/{pid}/task"
    try:
        tasks = os.listdir(base)
    except OSError:
        return []
    found = []
    for tid in tasks:
        try:
            fd = os.open(f"{base}/{tid}/children", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            found += [int(c) for c in os.read(fd, 1 << 16).split()]
        finally:
            os.close(fd)
    return found


def is_zombie(pid: int | str, proc: Path | str = "/proc") -> bool:
    """Has ``pid`` exited and is waiting for its parent to reap it (state "Z")? A zombie holds
    no memory, cgroup or mount any more; only its parent can remove it, by waiting."""
    fields = _stat_fields(pid, proc)
    return bool(fields) and fields[0] == "Z"


@dataclass(frozen=True)
class CgroupEntry:
    """One line of /proc/PID/cgroup: ``hierarchy-id:controllers:path``. On cgroup v2 the line is
    ``0::/path``; on v1 each hierarchy has its own line, e.g. ``4:memory:/path``."""
    hierarchy: str
    controllers: tuple[str, ...]
    path: str


def meminfo_bytes(key: str, default: int, proc: Path | str = "/proc") -> int:
    """One line of /proc/meminfo ("MemTotal", "SwapTotal"...), in bytes; ``default`` if absent."""
    for line in read_text(Path(proc, "meminfo")).splitlines():
        name, _, rest = line.partition(":")
        if name == key and rest.split():
            return int(rest.split()[0]) << 10
    return default


def cgroups_of(pid: int | str, proc: Path | str = "/proc") -> list[CgroupEntry]:
    """The cgroups ``pid`` is in, one per mounted hierarchy (empty if it is gone)."""
    found = []
    for line in read_text(Path(proc, str(pid), "cgroup")).splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        found.append(CgroupEntry(hid, tuple(c for c in controllers.split(",") if c), path))
    return found


def cgroup_host_paths(entry: CgroupEntry, table: list[Mount]) -> list[str]:
    """Where the cgroup of ``entry`` is, as folders on this host.

    The entry gives a path inside one hierarchy; the hierarchy is mounted somewhere: cgroup2
    (hierarchy "0", no controllers) or the cgroup v1 mount whose options name the same
    controllers ("4:memory:/x" is in the hierarchy mounted with option "memory").
    """
    found = []
    for m in table:
        if entry.hierarchy == "0" and not entry.controllers:
            match = m.fstype == "cgroup2"
        else:
            match = m.fstype == "cgroup" and set(entry.controllers) <= set(m.super_options.split(","))
        if match and is_under(entry.path, m.root):
            found.append(os.path.normpath(m.mountpoint + "/" + os.path.relpath(entry.path, m.root)))
    return found


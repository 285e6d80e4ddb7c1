"""A lab group: the processes one limit applies to, on whichever cgroup version limits here.

``group("demo")`` makes the group's cgroups (on v2 one folder, on v1 one per controller's
hierarchy, plus the one where the lab keeps track of its processes), each recorded in the
ledger; then ``limit``, ``spawn`` or ``add``, ``stats``, ``freeze``/``thaw``, ``kill`` and
``remove`` work alike on both versions (v1.py and v2.py say how each does it).

Which version limits is decided by what this machine mounts (:func:`version`): v2 when the
cgroup2 hierarchy gives the lab the memory, cpu and pids controllers (the lab VM, and any
systemd distribution of recent years), else v1 (older servers, and hybrid machines whose cgroup2
hierarchy has no controllers, such as this course's CI).
"""
from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass

from .. import host, marks, procfs
from ..errors import Refused, RequirementError
from ..process import Child, spawn
from . import delegation, files, tree, v1, v2
from .limits import Limits, Stats, check

__all__ = ["Group", "group", "version", "lab_root", "place"]


def version(table: list[procfs.Mount] | None = None) -> int:
    """2 if the cgroup2 hierarchy gives the lab memory, cpu and pids; else 1 (v1 controllers)."""
    table = procfs.mountinfo() if table is None else table
    mount = delegation.v2_mount(table)
    if mount is not None:
        base = delegation.base(mount)
        # What the lab's parent below ``base`` can have: what ``base`` enables for its children
        # (its own subtree_control), or, at the hierarchy's root, what the root has.
        given = set((files.read(base, "cgroup.subtree_control" if base != mount else "cgroup.controllers")
                     or "").split())
        if {"memory", "cpu", "pids"} <= given:
            return 2
    if any(m.fstype == "cgroup" and "memory" in m.super_options.split(",") for m in table):
        return 1
    raise RequirementError("no cgroup hierarchy here gives the memory, cpu and pids controllers",
                           hint="boot with cgroups mounted (every systemd distribution does)", missing=("cgroups",))


def place() -> str:
    """The folder the lab's parent cgroup ``labhelper`` is made in: on v2 the hierarchy's root
    or the subtree delegated to the lab (the lab VM's service); on v1 the root of the hierarchy
    where the lab keeps track of its processes (limits then go in each controller's own)."""
    table = procfs.mountinfo()
    return delegation.base(delegation.v2_mount(table)) if version(table) == 2 else tree.hierarchy(table)


def lab_root(mount: str) -> str:
    """The lab's parent cgroup in the hierarchy mounted at ``mount``."""
    return os.path.join(mount, marks.CGROUP_PARENT)


@dataclass
class Group:
    """One group of processes with limits. ``folders`` maps a controller (and "track", where the
    lab keeps track of its processes) to its cgroup folder; on v2 all are one folder."""
    name: str
    version: int
    folders: dict[str, str]

    @property
    def path(self) -> str:
        """The folder where the group's processes are tracked (and, on v2, limited)."""
        return self.folders["track"]

    def _all(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.folders.values()))     # distinct, in order

    def limit(self, **limits) -> dict[str, str]:
        """Set limits (memory=, memory_high=, swap=, cpu=, cpu_weight=, pids=, io_read=, io_write=,
        io_device=); every value is checked before any file is written. Returns {file: value}."""
        checked = check(**limits)
        return v2.apply(self.path, checked) if self.version == 2 else v1.apply(self.folders, checked)

    def add(self, pid: int) -> None:
        """Move a running process into the group (in every hierarchy on v1)."""
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            raise Refused(f"a process is named by its pid, not {pid!r}")
        for folder in self._all():
            try:
                tree.add(folder, pid)
            except ProcessLookupError:
                raise Refused(f"process {pid} does not exist (it exited?)") from None
            except OSError as exc:
                if exc.errno == errno.ESRCH:             # the kernel's word for "no such process"
                    raise Refused(f"process {pid} does not exist (it exited?)") from None
                raise

    def spawn(self, fn, *args, **kwargs) -> Child:
        """Run ``fn(*args)`` in a forked child born inside the group (process.spawn)."""
        return spawn(fn, *args, cgroup=self._all(), **kwargs)

    def run(self, fn, *args, timeout: float | None = 60.0, **kwargs):
        """Run ``fn(*args)`` inside the group and return its value."""
        return self.spawn(fn, *args, **kwargs).wait(timeout)

    def procs(self) -> list[int]:
        return tree.procs(self.path)

    def count(self) -> int:
        """How many processes the group holds now, from cgroup.procs (pids.current counts
        threads, and shows the limit + 1 for an instant while the kernel refuses a fork)."""
        return len(tree.procs(self.folders.get("pids", self.path)))

    def stats(self) -> Stats:
        return v2.stats(self.path) if self.version == 2 else v1.stats(self.folders)

    def freeze(self) -> None:
        v2.freeze(self.path, True) if self.version == 2 else v1.freeze(self.folders, True)

    def thaw(self) -> None:
        v2.freeze(self.path, False) if self.version == 2 else v1.freeze(self.folders, False)

    def frozen(self) -> bool:
        return v2.frozen(self.path) if self.version == 2 else v1.frozen(self.folders)

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL every process of the group. v2: one write to cgroup.kill. v1: freeze first (no
        process can fork while frozen, so the list cannot grow), kill each, thaw, wait."""
        if self.version == 1 and "freezer" in self.folders and os.path.isdir(self.folders["freezer"]):
            try:
                v1.freeze(self.folders, True)
                for pid in tree.procs(self.folders["freezer"]):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            finally:
                # Thawed whatever happened (a freeze that timed out included): on v1 a frozen
                # task acts on SIGKILL only once thawed, and a frozen group could never go.
                v1.freeze(self.folders, False)
        tree.kill(self.path, timeout)

    def remove(self) -> None:
        """Kill what is inside, then remove the group's cgroups and their records (idempotent).
        Most often its processes have ended already: then one rmdir(2) per folder does it, and
        there is nothing to freeze or kill."""
        try:
            for folder in self._all():
                tree.remove(folder, if_empty=True)
            return
        except tree.Busy:
            pass
        self.kill()
        for folder in self._all():
            tree.remove(folder)

    def watch(self, child: Child, every: float = 0.02, limit: float = 60.0) -> list[tuple[float, int, int]]:
        """Sample the group while ``child`` runs: [(seconds since start, memory charged now, OOM
        kills so far)], until the child ends (it is then waited for: its value is not needed)."""
        samples, start = [], time.monotonic()
        while time.monotonic() - start < limit:
            s = self.stats()
            samples.append((time.monotonic() - start, s.memory_current or 0, s.oom_kills or 0))
            if not os.path.exists(f"/proc/{child.pid}") or procfs.is_zombie(child.pid):
                break
            time.sleep(every)
        try:
            child.wait(5)
        except Exception:        # noqa: BLE001 - an OOM-killed child is what is being watched
            pass
        s = self.stats()
        samples.append((time.monotonic() - start, s.memory_current or 0, s.oom_kills or 0))
        return samples

    def __enter__(self) -> "Group":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"Group({self.name!r}, v{self.version}, {self.path})"


def _v1_hierarchies(table: list[procfs.Mount] | None = None) -> list[tuple[str, list[str]]]:
    """The mounted v1 hierarchies the lab uses: (mount point, its controllers the lab uses)."""
    out = []
    for h in host.cgroup_info(table=table).hierarchies:
        wanted = [c for c in h.controllers if c in v1.CONTROLLERS]
        if h.version == 1 and wanted:
            out.append((h.mountpoint, wanted))
    return out


def _v2_folders(path: str) -> dict[str, str]:
    return {"track": path, **{c: path for c in v2.WANTED}}      # v2: one folder for everything


def group(name: str, owner: str | None = None) -> Group:
    """Make the lab group ``name``; each of its cgroups is recorded in the ledger (a name in use
    is refused, the existing group left as it is). On failure, what was made is removed again."""
    marks.plain_name(name, "group name")
    table = procfs.mountinfo()
    ver = version(table)
    made: list[str] = []
    try:
        if ver == 2:
            place = delegation.base(delegation.v2_mount(table))      # the hierarchy's root, or a delegated subtree
            path = tree.create(name, owner, root=place)
            made.append(path)
            v2.enable(lab_root(place))
            folders = _v2_folders(path)
        else:
            folders = {"track": None}
            track = tree.hierarchy(table)
            by_mount: dict[str, str] = {}
            for mountpoint, wanted in _v1_hierarchies(table):
                if mountpoint not in by_mount:
                    by_mount[mountpoint] = tree.create(name, owner, root=mountpoint)
                    made.append(by_mount[mountpoint])
                for c in wanted:
                    folders[c] = by_mount[mountpoint]
            if track in by_mount:
                folders["track"] = by_mount[track]
            else:
                folders["track"] = tree.create(name, owner, root=track)
                made.append(folders["track"])
        return Group(name, ver, folders)
    except BaseException:
        for folder in reversed(made):
            tree.remove(folder)
        raise


def existing(name: str) -> Group | None:
    """The lab group ``name`` that another process made (a detached container's supervisor), as
    a Group to look at, join or remove; None if it is not there."""
    marks.plain_name(name, "group name")
    table = procfs.mountinfo()
    ver = version(table)
    if ver == 2:
        path = os.path.join(lab_root(delegation.base(delegation.v2_mount(table))), name)
        if not os.path.isdir(path):
            return None
        return Group(name, 2, _v2_folders(path))
    folders: dict[str, str] = {}
    for mountpoint, wanted in _v1_hierarchies():
        path = os.path.join(lab_root(mountpoint), name)
        if os.path.isdir(path):
            for c in wanted:
                folders[c] = path
    track = os.path.join(lab_root(tree.hierarchy(table)), name)
    if os.path.isdir(track):
        folders["track"] = track
    elif folders:
        folders["track"] = next(iter(folders.values()))
    else:
        return None
    return Group(name, 1, folders)


def tree_of(mount: str | None = None) -> dict[str, list[int]]:
    """The lab's cgroups in one hierarchy (the tracking one by default): {folder: its pids}."""
    mount = mount or (delegation.base(delegation.v2_mount(procfs.mountinfo())) if version() == 2 else tree.hierarchy())
    top = lab_root(mount)
    found = {}
    for dirpath, dirnames, _ in os.walk(top):
        dirnames.sort()
        try:
            found[dirpath] = tree.procs(dirpath)
        except OSError:
            found[dirpath] = []
    return found


def limits_of(g: Group) -> Limits:
    """The limits the kernel holds for ``g`` now, read back from its files."""
    def num(folder, name):
        return files.read_int(folder, name) if folder else None
    if g.version == 2:
        f = g.path
        cpu_max = (files.read(f, "cpu.max") or "max").split()
        cpu = None if cpu_max[0] == "max" else int(cpu_max[0]) / int(cpu_max[1])
        return Limits(memory=num(f, "memory.max"), memory_high=num(f, "memory.high"), swap=num(f, "memory.swap.max"),
                      cpu=cpu, cpu_weight=num(f, "cpu.weight"), pids=num(f, "pids.max"))
    mem, cpu_f, pids = g.folders.get("memory"), g.folders.get("cpu"), g.folders.get("pids")
    limit = num(mem, "memory.limit_in_bytes")
    quota, period = num(cpu_f, "cpu.cfs_quota_us"), num(cpu_f, "cpu.cfs_period_us")
    return Limits(memory=None if limit is None or limit >= 1 << 62 else limit,
                  cpu=None if quota is None or quota < 0 or not period else quota / period,
                  cpu_weight=None if num(cpu_f, "cpu.shares") is None else max(1, num(cpu_f, "cpu.shares") * 100 // 1024),
                  pids=num(pids, "pids.max"))

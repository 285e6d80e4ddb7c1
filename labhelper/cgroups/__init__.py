"""cgroups: the kernel's control groups, which limit and count what a group of processes uses.

Every cgroup of the course lives at or below a cgroup named ``labhelper`` (marks.CGROUP_PARENT)
in each mounted hierarchy: under cgroup v1 there is one hierarchy per controller (memory, pids,
cpu...), under cgroup v2 a single one for all. (Chapter 05 adds the verbs: create, limit, add a
process, read stats, freeze, kill, remove, for v1 and v2 alike.)

Here: the census of lab cgroups and their removal, as lab objects of kind "cgroup"
(marks.KINDS). A cgroup is removed with rmdir(2), children first; the kernel refuses (EBUSY)
while a process is still inside, which is why cleanup kills processes first.
"""
from __future__ import annotations

import os

from .. import marks
from ..errors import Refused

__all__ = ["find_cgroups", "remove_cgroup"]


def find_cgroups(scan: marks.Scan) -> list[marks.Obj]:
    """Every folder at or below <hierarchy>/labhelper, in every mounted cgroup hierarchy."""
    found = []
    for m in scan.mounts:
        if m.fstype not in ("cgroup", "cgroup2"):
            continue
        top = scan.host_path(m.mountpoint) / marks.CGROUP_PARENT
        if not top.is_dir() or top.is_symlink():
            continue
        for dirpath, dirnames, _ in os.walk(top, followlinks=False):
            path = "/" + os.path.relpath(dirpath, scan.fs_root)
            found.append(marks.Obj("cgroup", path, m.fstype, where=(path,)))
            dirnames.sort()
    return found


def remove_cgroup(obj: marks.Obj, ledger) -> None:
    """rmdir one lab cgroup (idempotent). Its children go first: cleanup orders them so."""
    if marks.CGROUP_PARENT not in obj.name.split("/"):
        raise Refused(f"refusing to remove {obj.name!r}: not below a {marks.CGROUP_PARENT} cgroup")
    with ledger.removing("cgroup", obj.name):
        try:
            os.rmdir(obj.name)
        except FileNotFoundError:
            pass

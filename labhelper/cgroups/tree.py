"""The lab's cgroups as a tree of folders: make one, put processes in, kill them, remove it.

Here: the verbs every chapter needs to keep track of processes (:func:`create`, :func:`add`,
:func:`procs`, :func:`kill`, :func:`remove`) in the hierarchy :func:`hierarchy` chooses, and the
census and removal of lab cgroups as objects of kind "cgroup" (marks.KINDS). A cgroup is
removed with rmdir(2), children first; the kernel refuses (EBUSY) while a process is inside,
which is why cleanup kills processes first.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import signal
import time

from .. import marks, procfs, registry
from . import delegation, files
from ..errors import Refused, RequirementError

__all__ = ["hierarchy", "create", "add", "procs", "kill", "remove", "find_cgroups", "remove_cgroup",
           "remove_empty_parents"]


def hierarchy(table: list[procfs.Mount] | None = None) -> str:
    """The mounted hierarchy where the lab keeps track of its processes.

    cgroup2 when it is mounted: there, membership works without any controller (it is the
    hybrid layout's empty /sys/fs/cgroup/unified, or the whole of a pure v2 machine), and a
    whole group can be killed with one write (cgroup.kill, Linux 5.14). Else a v1 hierarchy
    whose root has cgroup.procs (systemd's named hierarchy, or pids).
    """
    table = procfs.mountinfo() if table is None else table
    for m in table:
        if m.fstype == "cgroup2" and os.path.exists(os.path.join(m.mountpoint, "cgroup.procs")):
            return m.mountpoint
    v1 = [m for m in table if m.fstype == "cgroup" and os.path.exists(os.path.join(m.mountpoint, "cgroup.procs"))]
    for want in ("name=systemd", "pids"):
        for m in v1:
            if want in m.super_options.split(","):
                return m.mountpoint
    if v1:
        return v1[0].mountpoint
    raise RequirementError("no cgroup hierarchy is mounted here, so lab processes cannot be kept track of",
                           hint="boot with cgroups mounted (every systemd distribution does)",
                           missing=("cgroups",))


def create(name: str, owner: str | None = None, root: str | None = None) -> str:
    """Make the lab cgroup ``name`` (``labhelper/NAME`` in :func:`hierarchy`, or in ``root``),
    with its record, and return its folder. A name in use is an error (the cgroup that has it
    is left as it is).

    The record is kept on the cgroup folder itself (registry.put_on), not in a file of the
    ledger: a cgroup below the lab's parent is marked by where it is, the census finds it by
    walking the hierarchy, and rmdir(2) takes the record along with the cgroup. That keeps a
    cgroup's life as cheap as the kernel makes it (mkdir, writes, rmdir). The one thing given up
    is write-ahead: a SIGKILL between the mkdir and the record leaves a lab cgroup without an
    owner, which the census lists (owner "-") and `labhelper cleanup` removes.
    """
    if not isinstance(name, str) or "/" in name:
        raise Refused(f"a lab cgroup's name is one plain name, not {name!r}")
    if root is None:
        root = hierarchy()
        if os.path.exists(os.path.join(root, "cgroup.controllers")):    # cgroup v2
            root = delegation.base(root)        # a delegated subtree, where one was given
    top = os.path.join(root, marks.CGROUP_PARENT)
    path = marks.cgroup_path(os.path.join(top, name))
    record = registry.new_record("cgroup", path, owner)     # the guard: nothing is made without it
    for attempt in range(3):
        try:
            os.mkdir(path, 0o755)
            break
        except FileExistsError:
            raise Refused(f"the cgroup {path} exists already: choose another name (or remove it: "
                          "labhelper cleanup)") from None
        except FileNotFoundError:
            if attempt == 2:
                raise
        # No lab parent cgroup (the first lab cgroup, or the last one was removed with its
        # parent just now): make it, shared by every lab cgroup, then try again.
        try:
            os.mkdir(top, 0o755)
        except FileExistsError:
            pass
    try:
        if not registry.put_on(path, record):
            registry.ledger().add("cgroup", path, record.owner)      # a hierarchy without extended attributes
    except BaseException:
        _rmdir_quietly(path)
        raise
    return path


def _rmdir_quietly(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass
    _remove_empty_parent(path)


def add(path: str, pid: int) -> None:
    """Move process ``pid`` into the cgroup at ``path`` (its children made from then on are born
    in it too)."""
    files.write(marks.cgroup_path(path), "cgroup.procs", int(pid))


def procs(path: str) -> list[int]:
    """The processes in the cgroup at ``path`` (not those of its children)."""
    text = procfs.read_text(os.path.join(marks.cgroup_path(path), "cgroup.procs"), limit=None)
    return [int(line) for line in text.split()]


def kill(path: str, timeout: float = 5.0) -> None:
    """SIGKILL every process in the cgroup at ``path``, and wait until none is left.

    cgroup v2 has cgroup.kill: one write, and the kernel kills every process in the subtree,
    those being forked at that very moment included. Elsewhere, read cgroup.procs and kill what
    it lists, again, until it is empty: every child a process forks is born inside, so the list
    shrinks to nothing (unless a process moves itself out, which only root may: the lab's
    programs do not).
    """
    path = marks.cgroup_path(path)
    deadline = time.monotonic() + timeout
    killer = os.path.join(path, "cgroup.kill")
    if os.path.exists(killer):
        try:
            with open(killer, "w") as fh:
                fh.write("1\n")
        except FileNotFoundError:
            return
    while True:
        try:
            left = [p for p in procs(path) if not procfs.is_zombie(p)]
        except FileNotFoundError:
            return
        if not left:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{len(left)} process(es) still in {path} after {timeout:g} s: {left[:10]}")
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)    # in our cgroup, so ours: a pid in cgroup.procs is alive
            except ProcessLookupError:
                pass
        time.sleep(0.01)


class Busy(Exception):
    """remove(..., if_empty=True) met a cgroup that still has processes or children."""


def remove(path: str, timeout: float = 5.0, if_empty: bool = False) -> None:
    """Kill what is inside the cgroup at ``path``, then remove it, its children first, and its
    record (idempotent). ``if_empty``: only if nothing is inside (one rmdir); else Busy, and
    nothing changed."""
    path = marks.cgroup_path(path)

    def empty_it() -> None:
        if if_empty:
            raise Busy(path)
        for sub in _children(path):
            remove(sub, timeout)
        kill(path, timeout)
    _remove(path, None, empty_it)


def _children(path: str) -> list[str]:
    try:
        with os.scandir(path) as entries:
            return [e.path for e in entries if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


# --- lab cgroups as objects (marks.KINDS) -------------------------------------------------------------

NOBODYS_AFTER = 60.0       # seconds: a create takes microseconds between mkdir and the record


def find_cgroups(scan: marks.Scan) -> list[marks.Obj]:
    """Every folder at or below a cgroup named ``labhelper``, in every mounted cgroup hierarchy:
    at the root of a hierarchy, or below a delegated cgroup (the lab VM's service, for one)."""
    found = []
    seen = set()
    holders = marks.kind("cgroup").within       # kinds whose record covers what is inside
    for m in scan.mounts:
        if m.fstype not in ("cgroup", "cgroup2") or m.mountpoint in seen:
            continue
        seen.add(m.mountpoint)
        root = scan.host_path(m.mountpoint)
        if not root.is_dir():
            continue
        for dirpath, dirnames, _ in os.walk(root, followlinks=False):
            dirnames.sort()
            if os.path.basename(dirpath) != marks.CGROUP_PARENT:
                continue
            dirnames[:] = []                    # everything below is ours: listed by the walk below
            for inner, innernames, _ in os.walk(dirpath, followlinks=False):
                innernames.sort()
                path = "/" + os.path.relpath(inner, scan.fs_root)
                found.append(marks.Obj("cgroup", path, m.fstype, where=(path,)))
                # Its record, where it keeps it on itself (create): the census reads it with
                # the ledger's.
                record = registry.read_from(inner)
                if record is not None and record.kind == "cgroup" and record.name == path:
                    if all(r.key != record.key for r in scan.records):
                        scan.records.append(record)
                elif not any(marks.is_under(path, r.name) for r in scan.records if r.kind in holders):
                    # No record of its own, none of a cgroup or folder it is in (its ancestors'
                    # were read above): a creator killed between mkdir and the record left it.
                    # Once no creator can still be at work on it, it is nobody's.
                    try:
                        age = time.time() - os.stat(inner).st_ctime
                    except OSError:
                        continue
                    if age > NOBODYS_AFTER:
                        found[-1] = dataclasses.replace(found[-1], nobodys=True, detail=f"{m.fstype}, no record")
    return found


def remove_cgroup(obj: marks.Obj, ledger) -> None:
    """rmdir one lab cgroup, and so its record (idempotent). Its children and processes go
    first: cleanup orders them so."""
    _remove(marks.cgroup_path(obj.name), ledger, lambda: None)


def _remove(path: str, ledger, empty_it) -> None:      # ledger: None for the standard one
    registry.guard(f"remove cgroup {path!r}")
    # A record kept on the folder goes with it; one in the ledger (a hierarchy without extended
    # attributes) is forgotten once the cgroup is gone.
    try:
        os.getxattr(path, registry.ON_OBJECT, follow_symlinks=False)
        in_ledger = False
    except OSError:
        in_ledger = True
    # Most often the cgroup is empty and has no children: rmdir(2) alone does it. The kernel
    # refuses one with processes or children (EBUSY), changing nothing: empty it, then again.
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        empty_it()
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                # EBUSY for a moment after the last process died: the kernel frees a cgroup of
                # its exited (zombie) members a little later.
                if exc.errno != errno.EBUSY:
                    raise
            time.sleep(0.02)
        else:
            os.rmdir(path)
    _remove_empty_parent(path)
    if in_ledger:
        (ledger or registry.ledger()).remove("cgroup", path)


def remove_empty_parents() -> list[str]:
    """rmdir the lab's parent cgroup in every hierarchy where it is empty; the ones removed. An
    OCI runtime given a cgroup below it (container.oci) removes its own cgroup when it ends, not
    the parent it made on the way, in hierarchies the lab itself never uses (cpuset, systemd)."""
    removed = []
    for m in procfs.mountinfo():
        if m.fstype in ("cgroup", "cgroup2"):
            top = os.path.join(m.mountpoint, marks.CGROUP_PARENT)
            try:
                os.rmdir(top)                   # the kernel refuses while a child is left: fine
                removed.append(top)
            except OSError:
                pass
    return removed


def _remove_empty_parent(path: str) -> None:
    # The lab's parent cgroup has no record of its own (every lab cgroup shares it): it goes with
    # its last child, whoever removes that child (a chapter's reset included). The kernel
    # refuses while another child is left, and that is fine.
    top = os.path.dirname(path)
    if os.path.basename(top) == marks.CGROUP_PARENT:
        try:
            os.rmdir(top)
        except OSError:
            pass

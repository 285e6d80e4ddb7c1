"""The lab's cgroups as a tree of folders: make one, put processes in, kill them, remove it.

Here: the verbs every chapter needs to keep track of processes (:func:`create`, :func:`add`,
:func:`procs`, :func:`kill`, :func:`remove`) in the hierarchy :func:`hierarchy` chooses, and the
census and removal of lab cgroups as objects of kind "cgroup" (marks.KINDS). A cgroup is
removed with rmdir(2), children first; the kernel refuses (EBUSY) while a process is inside,
which is why cleanup kills processes first.
"""
from __future__ import annotations

import errno
import os
import signal
import time

from .. import marks, procfs
from . import delegation
from ..errors import Refused, RequirementError
from ..registry import ledger

__all__ = ["hierarchy", "create", "add", "procs", "kill", "remove", "find_cgroups", "remove_cgroup"]


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
    recorded in the ledger, and return its folder. A name in use is an error (the cgroup that
    has it is left as it is)."""
    if not isinstance(name, str) or "/" in name:
        raise Refused(f"a lab cgroup's name is one plain name, not {name!r}")
    if root is None:
        root = hierarchy()
        if os.path.exists(os.path.join(root, "cgroup.controllers")):    # cgroup v2
            root = delegation.base(root)        # a delegated subtree, where one was given
    top = os.path.join(root, marks.CGROUP_PARENT)
    path = marks.cgroup_path(os.path.join(top, name))
    with ledger().creating("cgroup", path, owner):
        for attempt in range(3):
            try:
                os.mkdir(path, 0o755)
                return path
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


def add(path: str, pid: int) -> None:
    """Move process ``pid`` into the cgroup at ``path`` (its children made from then on are born
    in it too)."""
    path = marks.cgroup_path(path)
    with open(os.path.join(path, "cgroup.procs"), "w") as fh:
        fh.write(f"{int(pid)}\n")


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


def remove(path: str, timeout: float = 5.0) -> None:
    """Kill what is inside the cgroup at ``path``, then remove it and its record (idempotent)."""
    path = marks.cgroup_path(path)
    for sub in sorted((d for d, _, _ in os.walk(path)), key=lambda d: d.count("/"), reverse=True):
        kill(sub, timeout)
        remove_cgroup(marks.Obj("cgroup", sub), ledger())


# --- lab cgroups as objects (marks.KINDS) -------------------------------------------------------------

def find_cgroups(scan: marks.Scan) -> list[marks.Obj]:
    """Every folder at or below a cgroup named ``labhelper``, in every mounted cgroup hierarchy:
    at the root of a hierarchy, or below a delegated cgroup (the lab VM's service, for one)."""
    found = []
    seen = set()
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
    return found


def remove_cgroup(obj: marks.Obj, ledger) -> None:
    """rmdir one lab cgroup (idempotent). Its children go first: cleanup orders them so."""
    path = marks.cgroup_path(obj.name)
    with ledger.removing("cgroup", path):
        for _ in range(50):
            try:
                os.rmdir(path)
                _remove_empty_parent(path)
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                # EBUSY for a moment after the last process died: the kernel frees a cgroup of
                # its exited (zombie) members a little later.
                if exc.errno != errno.EBUSY:
                    raise
            time.sleep(0.02)
        os.rmdir(path)
        _remove_empty_parent(path)


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

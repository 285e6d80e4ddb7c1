"""What "ours" means, in one place: the marks by which labhelper knows its kernel objects, and
the table of the kinds of object it makes.

labhelper changes kernel state as root, and ``labhelper cleanup`` must remove exactly what the
course made, never anything else on the machine. An object is ours when it carries a mark:

* a path below one of :data:`LAB_DIRS` (mounts, folders, the ledger itself);
* a name that starts with :data:`PREFIX`, ``lh-`` (network namespaces under :data:`NETNS_DIR`,
  links, bridges); interface names are at most 15 bytes, so long names are hashed
  (:func:`ifname`), never cut;
* a cgroup at or below :data:`CGROUP_PARENT`, ``labhelper``, in any cgroup hierarchy, and a
  process inside such a cgroup.

The ledger (:mod:`labhelper.registry`) says who made an object and whether its maker still
runs; the mark decides whether cleanup may touch it at all.

:data:`KINDS` lists every kind of object, in the order cleanup removes them (an object goes
only once what depends on it is gone: processes, then mounts, links, network namespaces,
cgroups, folders). Each kind names the function of its own concept module that finds its
objects for the census and the one that removes an object. Adding a kind of object is one row
here, the two functions in the concept module, and one line in the test that every
state-changing call refuses without the safety guard (tests/unit/test_guard.py).

This module also holds the census's vocabulary, :class:`Obj` and :class:`Scan`, because every
concept module speaks it when it reports its objects.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Refused

__all__ = ["LAB_DIRS", "PREFIX", "CGROUP_PARENT", "NETNS_DIR", "IFNAME_MAX", "is_under", "lab_dir_of",
           "lab_path", "is_lab_cgroup", "ifname", "Kind", "KINDS", "ORDER", "kind", "Obj", "Scan",
           "printable"]

LAB_DIRS = ("/var/lib/labhelper", "/run/labhelper")
PREFIX = "lh-"
CGROUP_PARENT = "labhelper"
NETNS_DIR = "/run/netns"      # where `ip netns` and pyroute2 keep named network namespaces
IFNAME_MAX = 15               # IFNAMSIZ (16) minus the terminating NUL (include/uapi/linux/if.h)


# --- paths ----------------------------------------------------------------------------------------

def is_under(path: str, folder: str) -> bool:
    """Is ``path`` ``folder`` itself or inside it? (By the names: ``..`` is resolved first, links
    are not.)"""
    path, folder = os.path.normpath(path), os.path.normpath(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def lab_dir_of(path: str) -> str | None:
    """The lab folder that ``path`` is at or below, or None."""
    return next((d for d in LAB_DIRS if is_under(path, d)), None)


def lab_path(path: str | os.PathLike, action: str, within: tuple[str, ...] | None = None) -> str:
    """``path`` normalized, if it lies strictly below a lab folder (or one of ``within``, for
    tests that use a temporary folder instead); else Refused, saying that labhelper does not
    ``action`` (e.g. "mount") anywhere else.

    Strictly: a lab folder itself is never a target (mounting on /run/labhelper would hide the
    ledger; removing it would remove every lab object's files).
    """
    text = os.fspath(path)
    folders = LAB_DIRS if within is None else within
    if not isinstance(text, str) or not text or "\0" in text:
        raise Refused(f"refusing to {action} {text!r}: not a path")
    normal = os.path.normpath(text)
    root = next((d for d in folders if is_under(normal, d)), None)
    if root is None or normal == os.path.normpath(root):
        raise Refused(f"refusing to {action} {text!r}: labhelper does that only below "
                      f"{' or '.join(folders)}")
    return normal


def is_lab_cgroup(path: str) -> bool:
    """Is the cgroup ``path`` (as /proc/PID/cgroup shows it, relative to its hierarchy's root)
    the lab's parent cgroup or below it?"""
    return path == f"/{CGROUP_PARENT}" or path.startswith(f"/{CGROUP_PARENT}/")


def ifname(name: str) -> str:
    """The interface name for ``name``: ``lh-NAME`` if that fits in 15 bytes, else ``lh-`` and
    12 hex digits of NAME's sha256. Never cut: two long names that share a beginning must still
    give two interfaces, and the same name always gives the same interface."""
    if not isinstance(name, str) or not name:
        raise Refused(f"an interface needs a non-empty name, not {name!r}")
    if not all(c.isascii() and (c.isalnum() or c in "-_.") for c in name):
        raise Refused(f"interface name {name!r}: use letters, digits, '-', '_' and '.' only")
    full = PREFIX + name
    if len(full.encode()) <= IFNAME_MAX:
        return full
    return PREFIX + hashlib.sha256(name.encode()).hexdigest()[:IFNAME_MAX - len(PREFIX)]


def printable(text: str) -> str:
    """``text`` printable anywhere: bytes that were not UTF-8 (kept by os.fsdecode as lone
    surrogates) are shown as \\xNN, as in a Python bytes literal."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


# --- the kinds of object ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Kind:
    """One kind of kernel object the course makes.

    ``find`` and ``remove`` name functions as ``"module.function"`` inside labhelper:
    ``find(scan) -> list[Obj]`` lists what exists now (by the mark, and by the records for
    kinds the kernel cannot list); ``remove(obj, ledger)`` removes one object, idempotently,
    through ``ledger.removing`` (which applies the safety guard and forgets the record).
    Only cleanup calls them by these names: it sits above every concept module.
    """
    name: str
    verb: str                          # what cleanup does to one, as its plan shows it
    mark: str                          # how the census knows it is ours, in words
    find: str
    remove: str
    within: tuple[str, ...] = ()       # kinds of record that own an unrecorded object by containing it
    deepest_first: bool = False        # names are paths: children are removed before parents
    not_after_failed: tuple[str, ...] = ()  # skip in a round where removing one of these failed


_PATHS = ("cgroup", "dir", "mount")

KINDS: tuple[Kind, ...] = (
    Kind("process", "kill", "inside a lab cgroup, or recorded with its start time",
         "process.find_processes", "process.remove_process", within=("cgroup",)),
    Kind("mount", "unmount", "its mount point below a lab folder, or an overlay writing there",
         "mounts.find_mounts", "mounts.remove_mount", within=_PATHS, deepest_first=True),
    Kind("link", "delete-link", f"a network interface named {PREFIX}*",
         "network.find_links", "network.remove_link"),
    Kind("netns", "delete-netns", f"a named network namespace {NETNS_DIR}/{PREFIX}*",
         "network.find_netns", "network.remove_netns"),
    Kind("cgroup", "rmdir", f"a cgroup at or below {CGROUP_PARENT} in any hierarchy",
         "cgroups.find_cgroups", "cgroups.remove_cgroup", within=_PATHS, deepest_first=True),
    Kind("dir", "remove-tree", "a recorded folder below a lab folder",
         "mounts.find_dirs", "mounts.remove_dir", within=_PATHS, deepest_first=True,
         not_after_failed=("mount",)),
)

#: The removal order, ending with "ledger": records whose object is gone are forgotten last.
ORDER: tuple[str, ...] = tuple(k.name for k in KINDS) + ("ledger",)


def kind(name: str) -> Kind:
    for k in KINDS:
        if k.name == name:
            return k
    raise Refused(f"unknown kind of object {name!r}; known kinds: {', '.join(k.name for k in KINDS)}")


# --- the census's vocabulary ------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Obj:
    """One kernel object of ours, as the census sees it. Two Obj are the same object when kind
    and name are equal.

    ``where``: the paths that locate it, for finding the record that owns it when it has none
    of its own (see Kind.within): a cgroup's or folder's own path; for a process, the lab
    cgroups it is in. ``ident``: what tells this object from an earlier one of the same name,
    where names are reused (a process's start time: pids are reused); a record of the same
    name describes it only if the record's ``data["ident"]`` is the same.
    """
    kind: str
    name: str
    detail: str = field(default="", compare=False)
    owner: str | None = field(default=None, compare=False)
    where: tuple[str, ...] = field(default=(), compare=False)
    ident: int | None = field(default=None, compare=False)

    def described_by(self, record) -> bool:
        """Is ``record`` (a registry.Record) this object's own record?"""
        return (record.kind == self.kind and record.name == self.name
                and (self.ident is None or record.data.get("ident") == self.ident))

    def __repr__(self) -> str:
        extra = f" ({printable(self.detail)})" if self.detail else ""
        who = f" owner={self.owner}" if self.owner else ""
        return f"{self.kind} {printable(self.name)}{extra}{who}"


@dataclass
class Scan:
    """What the census looks at, handed to each kind's ``find``: the roots of the trees to read
    (a fake tree in unit tests), the mount table read once, and the ledger's records."""
    proc: Path
    sys: Path
    netns_dir: Path
    fs_root: Path
    mounts: list = field(default_factory=list)      # procfs.Mount, parsed once for every kind
    records: list = field(default_factory=list)     # registry.Record

    def host_path(self, path: str) -> Path:
        """Where the host path ``path`` is in the tree being read (``fs_root`` + path)."""
        return self.fs_root / path.lstrip("/")

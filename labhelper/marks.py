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
only once what depends on it is gone: processes, then mounts, loop devices, links, network
namespaces, the firewall tables that guarded the links, cgroups, folders). Each kind names the function of its own concept module that finds its
objects for the census and the one that removes an object. Adding a kind of object is one row
here, the two functions in the concept module, and one line in the test that every
state-changing call refuses without the safety guard (tests/unit/test_guard.py).

This module also holds the census's vocabulary, :class:`Obj` and :class:`Scan`, because every
concept module speaks it when it reports its objects.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import LabError, Refused

__all__ = ["LAB_DIRS", "PREFIX", "CGROUP_PARENT", "NETNS_DIR", "IFNAME_MAX", "is_under", "lab_dir_of",
           "lab_path", "host_path", "is_lab_cgroup", "cgroup_path", "ifname", "link_name", "netns_name",
           "pid_name", "loop_name", "open_lab_dir", "open_step", "DIR_FLAGS", "Kind", "KINDS", "ORDER", "kind", "Obj", "Scan", "printable"]

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


# Names that go into paths, records and terminal output: letters, digits and a few marks, not
# starting with a dot or a dash. No space, newline, control character, quote or shell syntax
# (a newline would break the census table; escape codes would reach the learner's terminal).
_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+,@=:-]*")
NAME_MAX = 255      # bytes in one path component (NAME_MAX, include/uapi/linux/limits.h)
PATH_MAX = 4095     # bytes in a path, without the terminating NUL (PATH_MAX - 1)
# A whole path of such components (ASCII: a character is a byte), for the quick check: it has
# no empty, "." or ".." component and no trailing "/", so it is normal too.
_PLAIN_PATH = re.compile(r"(?:/[A-Za-z0-9_][A-Za-z0-9._+,@=:-]{0,%d})+" % (NAME_MAX - 1))


def host_path(path, what: str = "path") -> str:
    """``path`` if it is an absolute, normal path whose every component is a plain name; else
    Refused, saying what is wrong. Normal: ``/a/b``, never ``/a/b/``, ``/a/./b``, ``/a//b`` or
    ``/a/../b`` (each of those names another folder than it seems to)."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else path
    if isinstance(text, str) and len(text) <= PATH_MAX and _PLAIN_PATH.fullmatch(text):
        return text         # the common case, checked at once (the same rules as below)
    if not isinstance(text, str) or not text:
        raise Refused(f"the {what} must be a non-empty path, not {text!r}")
    if len(os.fsencode(text)) > PATH_MAX:
        raise Refused(f"the {what} is {len(os.fsencode(text))} bytes long; the kernel takes at most {PATH_MAX}")
    if not text.startswith("/") or text != os.path.normpath(text) or text.startswith("//"):
        raise Refused(f"the {what} {text!r} must be absolute and normal (no trailing '/', no '.', '..' "
                      f"or '//'): {os.path.normpath(text)!r}?" if text.startswith("/") else
                      f"the {what} {text!r} must be an absolute path")
    for part in text.split("/")[1:]:
        if len(os.fsencode(part)) > NAME_MAX:
            raise Refused(f"{part[:40]!r}... in the {what} is {len(os.fsencode(part))} bytes long; a name "
                          f"may have at most {NAME_MAX}")
        if not _COMPONENT.fullmatch(part):
            raise Refused(f"{printable(part)!r} in the {what} {printable(text)!r}: use letters, digits and "
                          "'._+,@=:-' (not first), no spaces, control characters or shell syntax")
    return text


def lab_path(path: str | os.PathLike, action: str, within: tuple[str, ...] | None = None) -> str:
    """``path``, if it is a plain absolute path (:func:`host_path`) strictly below a lab folder
    (or one of ``within``, for tests that use a temporary folder instead); else Refused, saying
    that labhelper does not ``action`` (e.g. "mount") anywhere else.

    Strictly: a lab folder itself is never a target (mounting on /run/labhelper would hide the
    ledger; removing it would remove every lab object's files).
    """
    folders = LAB_DIRS if within is None else within
    text = os.fspath(path) if isinstance(path, os.PathLike) else path
    if isinstance(text, str) and len(text) <= PATH_MAX and _PLAIN_PATH.fullmatch(text) \
            and any(text.startswith(d + "/") for d in folders):
        return text         # the common case, at once: plain, normal, strictly below a lab folder
    if isinstance(text, str) and text and "\0" not in text:
        normal = os.path.normpath(text)
        root = next((d for d in folders if is_under(normal, d)), None)
        if root is None or normal == os.path.normpath(root):
            raise Refused(f"refusing to {action} {printable(text)!r}: labhelper does that only below "
                          f"{' or '.join(folders)}")
    try:
        return host_path(text, "path")
    except Refused as exc:
        raise Refused(f"refusing to {action} {printable(str(text))!r}: {exc.message}") from None


def is_lab_cgroup(path: str) -> bool:
    """Is the cgroup ``path`` (as /proc/PID/cgroup shows it, relative to its hierarchy's root)
    a lab parent cgroup or below one? At the hierarchy's root (``/labhelper/...``) or below a
    subtree delegated to the lab (``/system.slice/labhelper-jupyter.service/labhelper/...``)."""
    return CGROUP_PARENT in path.split("/")


def cgroup_path(path) -> str:
    """A lab cgroup's folder: a plain absolute path with a ``labhelper`` component (the lab's
    parent cgroup, in whichever hierarchy it is mounted)."""
    text = host_path(path, "cgroup")
    if CGROUP_PARENT not in text.split("/"):
        raise Refused(f"{text!r} is not a lab cgroup: it is not at or below a {CGROUP_PARENT!r} cgroup")
    return text


def ifname(name: str) -> str:
    """The interface name for ``name``: ``lh-NAME`` if that fits in 15 bytes, else ``lh-`` and
    12 hex digits of NAME's sha256. Never cut: two long names that share a beginning must still
    give two interfaces, and the same name always gives the same interface."""
    if not isinstance(name, str) or not name:
        raise Refused(f"an interface needs a non-empty name, not {name!r}")
    if not all(c.isascii() and (c.isalnum() or c in "-_.") for c in name) or not (name[0].isalnum() or name[0] == "_"):
        raise Refused(f"interface name {printable(name)!r}: use letters, digits, '-', '_' and '.' only, "
                      "starting with a letter, a digit or '_'")
    if len(name.encode()) > NAME_MAX:
        raise Refused(f"interface name of {len(name.encode())} bytes: at most {NAME_MAX} (longer than "
                      f"{IFNAME_MAX - len(PREFIX)} is hashed to fit)")
    full = PREFIX + name
    if len(full.encode()) <= IFNAME_MAX:
        return full
    return PREFIX + hashlib.sha256(name.encode()).hexdigest()[:IFNAME_MAX - len(PREFIX)]


def link_name(name) -> str:
    """A link of ours: ``lh-`` and at most 15 bytes of letters, digits, '-', '_', '.'."""
    if not isinstance(name, str) or not name.startswith(PREFIX) or len(name.encode()) > IFNAME_MAX \
            or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in name):
        raise Refused(f"{printable(str(name))!r} is not a link of ours: {PREFIX}NAME, at most {IFNAME_MAX} "
                      "bytes of letters, digits, '-', '_' and '.' (marks.ifname makes one)")
    return name


def netns_name(name) -> str:
    """A named network namespace of ours: ``lh-`` and a plain file name under /run/netns."""
    if not isinstance(name, str) or not name.startswith(PREFIX) or not _COMPONENT.fullmatch(name) \
            or len(name.encode()) > NAME_MAX:
        raise Refused(f"{printable(str(name))!r} is not a network namespace of ours: {PREFIX}NAME, a plain name")
    return name


def plain_name(name, what: str) -> str:
    """A name that becomes one path component below a lab folder (a pinned namespace's, say):
    letters, digits and ``_.+,@=:-``, not starting with a dot, at most NAME_MAX bytes. So never
    empty, ``.``, ``..``, nor holding ``/``, NUL, a newline or anything a shell would read."""
    if not isinstance(name, str) or not _COMPONENT.fullmatch(name) or len(name.encode()) > NAME_MAX:
        raise Refused(f"{printable(str(name))!r} is not a {what}: one plain name of letters, digits and "
                      "'_.+,@=:-', not starting with '.', at most 255 bytes")
    return name


def loop_name(name) -> str:
    """A loop device is named by its device file, /dev/loopN."""
    if not isinstance(name, str) or not re.fullmatch(r"/dev/loop[0-9]+", name):
        raise Refused(f"{printable(str(name))!r} is not a loop device: /dev/loopN")
    return name


def pid_name(name) -> str:
    """A process is named by its pid, in decimal."""
    if not isinstance(name, str) or not name.isascii() or not name.isdigit() or name.startswith("0"):
        raise Refused(f"a process is named by its pid, not {printable(str(name))!r}")
    return name


def printable(text: str) -> str:
    """``text`` printable anywhere: bytes that were not UTF-8 (kept by os.fsdecode as lone
    surrogates) are shown as \\xNN, as in a Python bytes literal."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


# --- opening lab folders without following symlinks ------------------------------------------------

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_lab_dir(path: str, allowed: tuple[str, ...] | None = None, create: bool = False,
                 mode: int = 0o755, made: list[str] | None = None) -> int:
    """Open the folder ``path`` (under one of ``allowed``) without following any symlink in it.

    O_NOFOLLOW only guards the *last* component of a path: in /run/labhelper/link/sub, a symlink
    ``link`` would still be followed. So walk down from the lab folder one component at a time,
    each opened with O_NOFOLLOW relative to its parent's fd (openat(2)); a symlink anywhere is
    refused. ``create`` makes missing folders on the way (mkdirat), and appends each one it made
    to ``made`` (so that a failed step can remove them again). Returns an fd to close; raises
    FileNotFoundError if a component is missing, LabError if one is a symlink or a file.
    """
    allowed = LAB_DIRS if allowed is None else allowed
    root = next((os.path.normpath(d) for d in allowed if is_under(path, d)), None)
    if root is None:
        raise Refused(f"refusing to open {path!r}: labhelper works only below {' or '.join(allowed)}")
    parts = [p for p in os.path.relpath(os.path.normpath(path), root).split("/") if p not in ("", ".")]
    try:
        fd = open_step(None, root, root)
    except FileNotFoundError:
        if not create:
            raise
        os.makedirs(root, mode=0o755, exist_ok=True)
        fd = open_step(None, root, root)
    where = root
    try:
        for part in parts:
            # Open first, make only what is missing: a folder that exists costs one call.
            try:
                sub = open_step(fd, part, os.path.join(where, part))
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                    if made is not None:
                        made.append(os.path.join(where, part))
                except FileExistsError:
                    pass                       # made meanwhile by another process
                sub = open_step(fd, part, os.path.join(where, part))
            os.close(fd)
            fd, where = sub, os.path.join(where, part)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_step(dir_fd: int | None, name: str, shown: str) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
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


# --- the kinds of object ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Kind:
    """One kind of kernel object the course makes.

    ``valid`` checks a name of this kind before any kernel call and before it is recorded.
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
    valid: Callable[[str], str]        # an object's name, checked (Refused if it is not one of ours)
    within: tuple[str, ...] = ()       # kinds of record that own an unrecorded object by containing it
    deepest_first: bool = False        # names are paths: children are removed before parents
    not_after_failed: tuple[str, ...] = ()  # skip in a round where removing one of these failed


_PATHS = ("cgroup", "dir", "mount")


def _dir_name(path) -> str:
    return lab_path(path, "record a folder")


def _mount_point(path) -> str:
    # A mount of ours is usually below a lab folder; an overlay elsewhere is ours by its upper
    # directory (mounts.is_ours), so only the form of the path is checked here.
    return host_path(path, "mount point")


KINDS: tuple[Kind, ...] = (
    Kind("process", "kill", "inside a lab cgroup", "process.find_processes", "process.remove_process",
         pid_name, within=("cgroup",)),
    Kind("mount", "unmount", "its mount point below a lab folder, or an overlay writing there",
         "mounts.find_mounts", "mounts.remove_mount", _mount_point, within=_PATHS, deepest_first=True),
    Kind("loop", "detach-loop", "a loop device whose backing file is below a lab folder",
         "loop.find_loops", "loop.remove_loop", loop_name, within=("dir",)),
    Kind("link", "delete-link", f"a network interface named {PREFIX}*",
         "network.find_links", "network.remove_link", link_name),
    Kind("netns", "delete-netns", f"a named network namespace {NETNS_DIR}/{PREFIX}*",
         "network.find_netns", "network.remove_netns", netns_name),
    # After the links it guards: a lab interface is never without its table (R16).
    Kind("firewall", "delete-table", f"an nftables table inet {PREFIX}*, guarding a host interface of ours",
         "network.find_firewalls", "network.remove_firewall", link_name),
    Kind("cgroup", "rmdir", f"a cgroup at or below {CGROUP_PARENT} in any hierarchy",
         "cgroups.find_cgroups", "cgroups.remove_cgroup", cgroup_path, within=_PATHS, deepest_first=True),
    Kind("dir", "remove-tree", "a recorded folder below a lab folder",
         "mounts.find_dirs", "mounts.remove_dir", _dir_name, within=_PATHS, deepest_first=True,
         not_after_failed=("mount",)),
)

#: The removal order. After the kernel objects come the ledger's own files: "ledger-file", a file
#: in the ledger that is not a record (set aside, not deleted), and "ledger", a record whose
#: object is gone (forgotten).
ORDER: tuple[str, ...] = tuple(k.name for k in KINDS) + ("ledger-file", "ledger")


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
    name describes it only if the record's ``data["ident"]`` is the same. ``nobodys``: an object
    with our mark and no record, old enough that no creator is still busy with it (a lab cgroup
    whose creator was killed before it wrote the record): every cleanup removes it.
    """
    kind: str
    name: str
    detail: str = field(default="", compare=False)
    owner: str | None = field(default=None, compare=False)
    where: tuple[str, ...] = field(default=(), compare=False)
    ident: int | None = field(default=None, compare=False)
    nobodys: bool = field(default=False, compare=False)     # left half-made by a killed creator

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
    problems: list = field(default_factory=list)    # what a finder saw and must report (str)

    @property
    def live(self) -> bool:
        """Is this a census of this machine itself? (Kinds the kernel lists in no file, such as
        nftables tables, can only be asked of the live kernel.)"""
        return str(self.proc) == "/proc" and str(self.sys) == "/sys" and str(self.fs_root) == "/"

    def host_path(self, path: str) -> Path:
        """Where the host path ``path`` is in the tree being read (``fs_root`` + path)."""
        return self.fs_root / path.lstrip("/")

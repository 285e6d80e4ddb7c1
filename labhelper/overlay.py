"""Overlayfs: one folder made of several, the way a container's root filesystem is.

An overlay mount shows, at its mount point (the *merged* folder), the union of read-only
*lower* folders, the top-most one winning, with one writable *upper* folder above them all:

    merged   /etc/motd (upper)   /etc/hosts (lower 1)   /bin/sh (lower 2)
    upper    etc/motd                                    <- every write lands here
    lower 1  etc/hosts  etc/motd                         <- read-only
    lower 2  bin/sh                                      <- read-only
    work     (overlayfs' own scratch space, on the same filesystem as upper)

What the kernel does, and what the chapter shows with ls and stat:

* **copy-up**: the first write to a file from a lower folder copies it, whole, into upper, then
  writes there. The lower file never changes, so many containers can share one lower folder.
* **whiteouts**: deleting a file that a lower folder has cannot touch the lower folder, so the
  kernel puts a *whiteout* in upper instead: a character device with device number 0/0, which
  hides the name below it.
* **opaque directories**: a directory removed and made again (``rm -r d; mkdir d``) must not
  show the lower ``d``'s files: the new upper ``d`` carries the extended attribute
  ``trusted.overlay.opaque="y"``, and the kernel stops looking below it.
* **renaming a directory** from a lower folder: with ``redirect_dir=off`` (which image layers
  need: a layer is a plain tar of upper, and a redirect is an overlay-only xattr no other tool
  understands) the kernel refuses with EXDEV, and ``mv`` falls back to copy and delete.

So an upper folder *is* an image layer once its overlay is unmounted: its files are the changes,
its whiteouts the deletions (labhelper.images turns them into the OCI format's ``.wh.`` files).
That is what ``layer=True`` (the default) is for: ``redirect_dir=off,metacopy=off,index=off``,
so that nothing in upper depends on overlay-only metadata.

Many layers: the classic mount(2) takes every option in one string of at most a page (4096
bytes), so about 60 layers with long paths. The new mount API (fsopen/fsconfig/fsmount/
move_mount, Linux 5.2) sets one parameter per call, and overlayfs takes ``lowerdir+`` once per
layer since Linux 6.8: no limit but the kernel's 500 layers. :func:`mount` uses it where the
kernel has it, and says so in the returned :class:`Overlay` (``api``).

Every overlay is a lab mount (kind "mount" in marks.KINDS): recorded in the ledger before it is
made, found by the census, removed by :func:`unmount` or by ``labhelper cleanup``.
"""
from __future__ import annotations

import contextlib
import functools
import os
import stat
from dataclasses import dataclass, field

from . import marks, mounts, procfs, registry, syscalls
from .errors import Refused, RequirementError, SyscallError
from .flags import FsconfigCmd, MountAttr, MountFlags
from .registry import fault_point, ledger

__all__ = ["OPAQUE_XATTR", "LAYER_OPTIONS", "MAX_LAYERS", "Overlay", "Change", "mount", "unmount", "is_whiteout",
           "make_whiteout", "is_opaque", "make_opaque", "changes", "new_api", "listing", "origins"]

OPAQUE_XATTR = "trusted.overlay.opaque"     # "y": do not look into the lower folders below this one
LAYER_OPTIONS = ("redirect_dir=off", "metacopy=off", "index=off")   # an upper folder that is a plain layer
MAX_LAYERS = 500                            # OVL_MAX_STACK in fs/overlayfs/params.h
_PAGE = 4096                                # mount(2) copies at most one page of options


@dataclass(frozen=True)
class Overlay:
    """One overlay mount of the lab. ``lowers`` top-most first (overlayfs' own order); ``api``:
    how it was mounted, "fsconfig" (the new mount API) or "mount(2)" (one string of options)."""
    target: str
    lowers: tuple[str, ...]
    upper: str | None
    work: str | None
    api: str
    options: tuple[str, ...]
    record: dict = field(default_factory=dict, repr=False, compare=False)   # what unmount removes
    in_ledger: bool = field(default=True, repr=False, compare=False)   # else on the mount: its source

    def __enter__(self) -> "Overlay":
        return self

    def __exit__(self, *exc) -> None:
        self.unmount()

    def unmount(self) -> bool:
        """Unmount this overlay (:func:`unmount`), with what its record says kept here."""
        return mounts.unmount(self.target, data=self.record, in_ledger=self.in_ledger)

    def __repr__(self) -> str:
        layers = f"{len(self.lowers)} lower folder{'s' if len(self.lowers) != 1 else ''}"
        upper = f", upper {self.upper}" if self.upper else ", read-only"
        return f"Overlay({self.target}: {layers}{upper}; {self.api}, {','.join(self.options) or 'defaults'})"


@dataclass(frozen=True, order=True)
class Change:
    """One line of ``docker diff``: A (added), C (changed) or D (deleted), and the path."""
    path: str
    kind: str

    def __repr__(self) -> str:
        return f"{self.kind} {self.path}"


# --- mounting ------------------------------------------------------------------------------------

@functools.cache
def new_api() -> bool:
    """Does this kernel take overlay layers one by one through the new mount API (``lowerdir+``,
    Linux 6.8)? Asked of the kernel itself: a context is opened and the parameter tried."""
    try:
        fd = syscalls.fsopen("overlay")
    except SyscallError:
        return False            # no fsopen (before 5.2) or no overlayfs
    try:
        try:
            syscalls.fsconfig(fd, FsconfigCmd.FSCONFIG_SET_STRING, "lowerdir+", "/")
        except SyscallError:
            return False        # EINVAL: "lowerdir+" is unknown to this overlayfs
        # Before Linux 6.5 overlayfs parsed its options only at mount time: the kernel's legacy
        # glue accepts any key here and fails at FSCONFIG_CMD_CREATE. A key no filesystem has
        # tells the two apart: refused now only by an overlayfs that parses each parameter.
        try:
            syscalls.fsconfig(fd, FsconfigCmd.FSCONFIG_SET_STRING, "labhelper-probe", "1")
            return False
        except SyscallError:
            return True
    finally:
        os.close(fd)


def mount(target: str, lowers, upper: str | None = None, work: str | None = None, *, layer: bool = True,
          owner: str | None = None, api: str | None = None) -> Overlay:
    """Mount an overlay of ``lowers`` (top-most first) with ``upper`` and ``work`` at ``target``.

    All folders are lab paths (below /var/lib/labhelper or /run/labhelper): a host folder such as
    / or /etc is refused as a layer (R19), since a write through the overlay must never reach
    the host, and neither may the learner's experiments read it by accident. ``lowers`` must
    exist; ``target``, ``upper`` and ``work`` are made if missing (and removed again, when
    empty, by :func:`unmount`). Give neither upper nor work for a read-only overlay (then the
    kernel wants at least two lower folders). ``layer``: mount so that upper can become an
    image layer (LAYER_OPTIONS). ``api``: "fsconfig" or "mount(2)" to choose; by default the
    new API where the kernel has ``lowerdir+``.

    Everything is checked before the first change; a failure after it undoes what was done.
    """
    target = marks.lab_path(target, "mount an overlay on")
    lowers = tuple(marks.lab_path(p, "use as a lower folder") for p in _as_list(lowers))
    if not lowers:
        raise Refused("an overlay needs at least one lower folder")
    if len(lowers) > MAX_LAYERS:
        raise Refused(f"{len(lowers)} lower folders: overlayfs stacks at most {MAX_LAYERS}")
    if (upper is None) != (work is None):
        raise Refused("give both an upper and a work folder (a writable overlay), or neither (a read-only one)")
    if upper is None and len(lowers) < 2:
        raise Refused("a read-only overlay (no upper folder) needs at least two lower folders: with one, it would "
                      "only show that folder (the kernel refuses it too)")
    if upper is not None:
        upper = marks.lab_path(upper, "use as an upper folder")
        work = marks.lab_path(work, "use as a work folder")
        if upper == work:
            raise Refused(f"the work folder and the upper folder must be two folders, not both {upper}")
    if len(set(lowers)) != len(lowers):
        raise Refused("a lower folder is given twice")
    # No folder inside another: a layer that changes while it is a layer (upper below a lower),
    # or the mount point inside its own layer, would show the overlay to itself.
    named = [("the mount point", target), ("the upper folder", upper), ("the work folder", work)] + \
        [("a lower folder", low) for low in lowers]
    # Sorted by path + "/", a folder's subfolders come right after it: comparing neighbours is
    # enough (hundreds of layers make n^2 pairs).
    named = sorted(((path + "/", what) for what, path in named if path is not None))
    for (path, what), (other, other_what) in zip(named, named[1:]):
        if other.startswith(path):
            raise Refused(f"{what} {path[:-1]} and {other_what} {other[:-1]} overlap: each folder of an overlay "
                          "must be outside the others")
    if api is None:
        api = "fsconfig" if new_api() else "mount(2)"
    if api not in ("fsconfig", "mount(2)"):
        raise Refused(f"api {api!r}: 'fsconfig' (the new mount API) or 'mount(2)'")
    if api == "fsconfig" and not new_api():
        raise RequirementError("this kernel's overlayfs does not take layers one by one through the new mount API "
                               "(the lowerdir+ parameter came with Linux 6.8)",
                               hint="use api='mount(2)' (one page of options: a few dozen layers), or a newer kernel",
                               missing=("overlay-lowerdir+",))
    options = LAYER_OPTIONS if layer else ()
    if api == "mount(2)":
        data = _option_string(lowers, upper, work, options)       # refuses what does not fit, first
    registry.guard(f"mount an overlay on {target}")
    if api == "mount(2)":
        for lower in lowers:            # (the new API opens each one anyway: _mount_fsconfig)
            os.close(_open_lower(lower))
    # The folders this mount makes, to remove again when empty; and the kernel's own scratch
    # folders in work ("work", and "index" where it is on), removed whole after the unmount.
    made = list(dict.fromkeys(p for path in (target, upper, work) if path is not None
                              for p in mounts.missing_folders(path)))
    scratch = [os.path.join(work, "work"), os.path.join(work, "index")] if work is not None else []
    record = {"made": made, "scratch": scratch, "fstype": "overlay"}
    # Whose the mount is goes on the mount itself, as its source (registry.as_mount_source: no
    # write, and never apart from the mount); the ledger keeps the record only of a mount that
    # makes folders first (they must be found again if the mount never happens).
    source = None if made else registry.as_mount_source(registry.new_record("mount", target, owner, record))
    with (contextlib.nullcontext() if source else ledger().creating("mount", target, owner, data=record)):
        fault_point("overlay-recorded")
        created: list[str] = []
        opened: list[int] = []          # upper and work, open: the new API takes them as they are
        try:
            try:
                for folder in (upper, work):
                    if folder is not None:
                        opened.append(_open_or_make(folder, created))
                fd = _open_or_make(target, created)
                opened.append(fd)
                if _is_mount_point(fd):
                    raise Refused(f"something is mounted on {target} already: a second mount would hide it",
                                  hint="unmount it first (overlay.unmount), or choose another folder")
                if api == "fsconfig":
                    _mount_fsconfig(fd, source or "overlay", lowers, upper, work, options, *opened[:-1])
                else:
                    mounts.mount_on(fd, target, source or "overlay", "overlay", MountFlags.MS_NOSUID | MountFlags.MS_NODEV,
                                    data)
            finally:
                for each in opened:
                    os.close(each)
            try:
                fault_point("overlay")
            except BaseException:
                mounts.detach(target)
                for folder in scratch:
                    with contextlib.suppress(FileNotFoundError):
                        mounts.remove_tree(folder)
                raise
        except BaseException:
            mounts.rmdir_empty(created)
            raise
    return Overlay(target, lowers, upper, work, api, options, record, in_ledger=source is None)


def _open_or_make(path: str, created: list[str]) -> int:
    """Open the lab folder ``path`` (one call, where it exists), else make it and what is
    missing above it (listed in ``created``), never through a symlink."""
    try:
        return mounts.open_folder(path)
    except FileNotFoundError:
        return marks.open_lab_dir(path, create=True, made=created)


def _is_mount_point(fd: int) -> bool:
    """Is the open folder ``fd`` the root of a mount? statx says so in one call (Linux 5.8);
    else its mount id differs from its parent's."""
    root = syscalls.statx_mount_root(fd)
    if root is not None:
        return root
    parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
    try:
        return procfs.mount_id(fd) != procfs.mount_id(parent)
    finally:
        os.close(parent)


_layer_fds: bool | None = None     # does this kernel take a layer as an open folder? (asked once)


def _set_folder(fs: int, key: str, path: str, fd: int) -> None:
    """Hand one folder of the overlay to the context: as the folder ``fd``, opened without
    following a symlink (FSCONFIG_SET_FD, Linux 6.13: nothing is looked up again), or by its
    path where the kernel takes only paths (then asked once, and remembered)."""
    global _layer_fds
    if _layer_fds is not False:
        try:
            syscalls.fsconfig(fs, FsconfigCmd.FSCONFIG_SET_FD, key, None, fd)
            _layer_fds = True
            return
        except SyscallError:
            if _layer_fds:
                raise
            _layer_fds = False      # EINVAL: this overlayfs takes folders by path only
    syscalls.fsconfig(fs, FsconfigCmd.FSCONFIG_SET_STRING, key, path)


def _add_lower(fs: int, lower: str) -> None:
    fd = _open_lower(lower)
    try:
        _set_folder(fs, "lowerdir+", lower, fd)
    finally:
        os.close(fd)


def _mount_fsconfig(target_fd: int, source: str, lowers, upper, work, options, upper_fd: int = -1,
                    work_fd: int = -1) -> None:
    fs = syscalls.fsopen("overlay")
    try:
        syscalls.fsconfig(fs, FsconfigCmd.FSCONFIG_SET_STRING, "source", source)
        for lower in lowers:            # one call per layer: no page limit
            _add_lower(fs, lower)
        if upper is not None:
            _set_folder(fs, "upperdir", upper, upper_fd)
            _set_folder(fs, "workdir", work, work_fd)
        for option in options:
            key, _, value = option.partition("=")
            syscalls.fsconfig(fs, FsconfigCmd.FSCONFIG_SET_STRING, key, value)
        syscalls.fsconfig(fs, FsconfigCmd.FSCONFIG_CMD_CREATE)
        mnt = syscalls.fsmount(fs, MountAttr.MOUNT_ATTR_NOSUID | MountAttr.MOUNT_ATTR_NODEV)
        try:
            # Attach the new mount on the folder we opened: no path is looked up again.
            syscalls.move_mount(mnt, target_fd, "", syscalls.MOVE_MOUNT_F_EMPTY_PATH | syscalls.MOVE_MOUNT_T_EMPTY_PATH)
        finally:
            os.close(mnt)
    finally:
        os.close(fs)


def _option_string(lowers, upper, work, options) -> str:
    """The one string mount(2) takes. ':' separates lower folders and ',' options, so a path
    with either cannot be given this way (the new API takes each path whole)."""
    for path in (*lowers, upper, work):
        if path is not None and any(ch in path for ch in ":,\\"):
            raise Refused(f"{path}: a folder whose name has ':', ',' or '\\' cannot be given to mount(2) "
                          "(they separate its options); rename it, or use the new mount API (api='fsconfig')")
    parts = ["lowerdir=" + ":".join(lowers)]
    if upper is not None:
        parts += [f"upperdir={upper}", f"workdir={work}"]
    data = ",".join(parts + list(options))
    if len(data.encode()) >= _PAGE:
        raise RequirementError(
            f"the options for {len(lowers)} layers are {len(data.encode())} bytes; mount(2) takes at most one page "
            f"({_PAGE - 1})", hint="use the new mount API (api='fsconfig'), which takes one layer per call "
                                   "(overlayfs' lowerdir+, Linux 6.8)" if new_api() else
            "this kernel has no lowerdir+ (Linux 6.8) to take layers one by one: use fewer layers or shorter paths",
            missing=("overlay-lowerdir+",))
    return data


def _as_list(lowers) -> list:
    if isinstance(lowers, (str, os.PathLike)):
        return [lowers]
    return list(lowers)


def _open_lower(path: str) -> int:
    """Open the lower folder ``path``, reached without a symlink (mounts.open_folder: one
    openat2 call where the kernel has it). Refused if it does not exist."""
    try:
        return mounts.open_folder(path)
    except FileNotFoundError:
        raise Refused(f"the lower folder {path} does not exist") from None


def unmount(target: str) -> bool:
    """Unmount the overlay at ``target`` and forget its record (idempotent); the folders
    :func:`mount` made go too, when empty (upper keeps what was written: it is a layer now)."""
    return mounts.unmount(marks.lab_path(target, "unmount"))


# --- whiteouts and opaque directories ------------------------------------------------------------

def is_whiteout(st: os.stat_result) -> bool:
    """Is this (an lstat of a file in an upper folder) a whiteout: a character device 0/0?"""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


def make_whiteout(dir_fd: int, name: str) -> None:
    """Make a whiteout named ``name`` in the open folder ``dir_fd``: what the kernel itself puts
    in upper when a lower file is deleted (mknod needs CAP_MKNOD: root)."""
    if not name or "/" in name or name in (".", ".."):
        raise Refused(f"a whiteout is made for one plain name, not {name!r}")
    try:
        os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=dir_fd)
    except OSError as exc:
        raise syscalls.error("mknodat", {"dirfd": dir_fd, "pathname": name, "mode": "S_IFCHR", "dev": "0:0"},
                             exc.errno) from None


def is_opaque(fd_or_path) -> bool:
    """Does this folder hide everything below it in the lower folders (``trusted.overlay.opaque=y``)?"""
    try:
        if isinstance(fd_or_path, int):
            value = os.getxattr(fd_or_path, OPAQUE_XATTR)
        else:
            value = os.getxattr(fd_or_path, OPAQUE_XATTR, follow_symlinks=False)
    except OSError:
        return False
    return value == b"y"


def make_opaque(fd_or_path) -> None:
    """Mark a folder of an upper (or layer) folder opaque, as the kernel does for ``rm -r d;
    mkdir d`` (trusted.* attributes need CAP_SYS_ADMIN: root)."""
    try:
        if isinstance(fd_or_path, int):
            os.setxattr(fd_or_path, OPAQUE_XATTR, b"y")
        else:
            os.setxattr(fd_or_path, OPAQUE_XATTR, b"y", follow_symlinks=False)
    except OSError as exc:
        raise syscalls.error("setxattr", {"path": str(fd_or_path), "name": OPAQUE_XATTR, "value": "y"},
                             exc.errno) from None


# --- what each layer holds, and where each merged file comes from --------------------------------------

def listing(folder: str) -> dict[str, str]:
    """Every entry below the layer folder ``folder``, by relative path: "file", "dir",
    "symlink", "whiteout", "opaque" (a folder marked opaque) or "other". Walked by file
    descriptor, never following a symlink; read-only."""
    top = mounts.open_folder(marks.lab_path(folder, "list"))
    out: dict[str, str] = {}
    try:
        _walk_listing(top, "", out)
    finally:
        os.close(top)
    return dict(sorted(out.items()))


def _walk_listing(dfd: int, rel: str, out: dict[str, str]) -> None:
    with os.scandir(dfd) as entries:
        names = sorted(e.name for e in entries)
    for name in names:
        path = f"{rel}/{name}" if rel else name
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(name, marks.DIR_FLAGS, dir_fd=dfd)
            try:
                out[path] = "opaque" if is_opaque(sub) else "dir"
                _walk_listing(sub, path, out)
            finally:
                os.close(sub)
        elif is_whiteout(st):
            out[path] = "whiteout"
        else:
            out[path] = "file" if stat.S_ISREG(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else "other"


def origins(layers) -> dict[str, tuple[int, str]]:
    """Where each name of an overlay of ``layers`` (top-most first: upper, then the lower
    folders) comes from, worked out the way overlayfs looks a name up: the first layer, from the
    top, that has it wins; a whiteout there hides it; a folder marked opaque hides what the
    layers below have inside it, and a file (or a whiteout) hides everything below its name.
    ``{path: (index of the layer, kind there)}``; a hidden name has kind "whiteout". Folders
    are left out: they merge."""
    views = [listing(layer) for layer in _as_list(layers)]
    found: dict[str, tuple[int, str]] = {}
    for path in sorted({p for v in views for p in v}):
        where = _lookup(views, path)
        if where is not None and where[1] not in ("dir", "opaque"):
            found[path] = where
    return found


def _lookup(views: list[dict[str, str]], path: str) -> tuple[int, str] | None:
    """Which layer (index, kind) answers for ``path`` in a stack of listings, top first, or None
    when no layer shows it (absent, or hidden by a folder above it that ends the lookup)."""
    parents = [path[:k] for k in range(len(path)) if path[k] == "/"]
    for i, view in enumerate(views):
        above = [view.get(parent) for parent in parents]
        if any(kind not in (None, "dir", "opaque") for kind in above):
            return None                 # a file, symlink or whiteout in this layer covers the folder
        kind = view.get(path)
        if kind is not None:
            return i, kind
        if "opaque" in above:
            return None                 # an opaque folder: the layers below do not count here
    return None


# --- docker diff -----------------------------------------------------------------------------------

def changes(upper: str, lowers) -> list[Change]:
    """What an upper folder changed over its lower folders, like ``docker diff``: A for a name
    the lower folders do not show, C for one they show (a folder appears as C when something inside it
    changed: copy-up made it in upper), D for a whiteout. An opaque folder is C, and what the
    lower folders had in it is not listed one by one (Docker does the same).

    Walked by file descriptor, never following a symlink; read-only."""
    views = [listing(marks.lab_path(p, "compare with")) for p in _as_list(lowers)]
    top = marks.open_lab_dir(marks.lab_path(upper, "read as an upper folder"))
    out: list[Change] = []
    try:
        _walk_changes(top, "", views, out)
    finally:
        os.close(top)
    return sorted(out)


def _in_lowers(views, rel: str) -> bool:
    """Does the stack of lower folders show ``rel`` (looked up as overlayfs does, by listings
    walked without following a symlink)?"""
    where = _lookup(views, rel)
    return where is not None and where[1] != "whiteout"


def _walk_changes(dfd: int, rel: str, lowers, out: list[Change]) -> None:
    with os.scandir(dfd) as entries:
        names = sorted(e.name for e in entries)
    for name in names:
        path = f"{rel}/{name}" if rel else name
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if is_whiteout(st):
            out.append(Change("/" + path, "D"))
            continue
        out.append(Change("/" + path, "C" if _in_lowers(lowers, path) else "A"))
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(name, marks.DIR_FLAGS, dir_fd=dfd)
            try:
                _walk_changes(sub, path, lowers, out)
            finally:
                os.close(sub)

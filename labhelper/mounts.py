"""Mounts and lab folders: mount, unmount, and remove, never through a symlink or across a mount.

Every mount and folder labhelper makes lies below a lab folder (marks.LAB_DIRS). Three rules
keep the host safe while doing that as root:

* never follow a symlink below a lab folder: a path is walked one component at a time, each
  opened with O_NOFOLLOW relative to its parent (:func:`open_lab_dir`), and a mount is made on
  the opened folder (``/proc/self/fd/N``), not on the path again;
* never unmount through a symlink (UMOUNT_NOFOLLOW), and unmount lazily (MNT_DETACH): the mount
  disappears from the tree at once, the kernel frees it when its last user is gone
  (:func:`detach`, the one place that unmounts);
* never delete across a mount: a folder is emptied by file descriptor, and a directory on
  another mount than its parent (a bind mount of a host folder, say) stops the removal
  (:func:`remove_tree`).

The mount table is read from /proc/self/mountinfo (:func:`labhelper.procfs.mountinfo`).
Mounts and folders are lab objects of kinds "mount" and "dir" (marks.KINDS): their census and
removal are here too (:func:`find_mounts`, :func:`remove_mount`, :func:`find_dirs`,
:func:`remove_dir`).
"""
from __future__ import annotations

import errno
import os
import re
import stat

from . import marks, procfs, registry, syscalls
from .errors import LabError, Refused, SyscallError
from .flags import MountFlags, UmountFlags
from .procfs import Mount
from .registry import fault_point, ledger

__all__ = ["mounts_under", "tmpfs_size", "mount_tmpfs", "mount_on", "bind_file", "make_dir", "missing_folders",
           "rmdir_empty", "open_folder", "unmount", "record_on_mount", "detach", "is_ours", "remove_tree",
           "find_mounts", "remove_mount", "find_dirs", "remove_dir"]


def mounts_under(folder: str, table: list[Mount] | None = None) -> list[Mount]:
    """Mounts at or below ``folder``, deepest first: the order in which to unmount them."""
    table = procfs.mountinfo() if table is None else table
    found = [m for m in table if marks.is_under(m.mountpoint, folder)]
    return sorted(found, key=lambda m: (m.mountpoint.count("/"), m.mount_id), reverse=True)


# --- mounting and unmounting ------------------------------------------------------------------------

def tmpfs_size(size) -> str:
    """A tmpfs size, checked: a positive number of bytes with an optional k, m or g, at most a
    quarter of this machine's memory (and 1 GiB). tmpfs itself takes "0" as "unlimited", "100%"
    as all of the memory, and "1m,mode=0777" would smuggle in another mount option."""
    text = str(size).strip().lower() if isinstance(size, (str, int)) and not isinstance(size, bool) else ""
    match = re.fullmatch(r"([1-9][0-9]{0,12})([kmg]?)", text)
    if not match:
        raise Refused(f"tmpfs size {size!r}: give a positive number of bytes, with k, m or g if you like "
                      "('64k', '1m', '16m')")
    nbytes = int(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2)]
    total = procfs.meminfo_bytes("MemTotal", 1 << 32)
    cap = min(1 << 30, total // 4)
    if nbytes > cap:
        raise Refused(f"tmpfs size {size!r} is {nbytes >> 20} MiB; a lab tmpfs may have at most {cap >> 20} MiB "
                      "(a quarter of this machine's memory, and 1 GiB)")
    return text


def mount_tmpfs(target: str, size: str = "1m", owner: str | None = None) -> Mount:
    """Mount a small tmpfs at ``target`` (below a lab folder), recorded in the ledger.

    Everything is checked before the first change: the path, the size, and that nothing is
    mounted or recorded there already (a second mount would silently hide the first one's
    files). The record is written first, with the folders this mount will have to make
    (registry.Ledger.creating); if any later step fails, what was done is undone, those folders
    included, and the record forgotten. Removing the mount removes them too, when empty.
    """
    target = marks.lab_path(target, "mount a tmpfs on")
    size = tmpfs_size(size)
    if any(m.mountpoint == target for m in procfs.mountinfo()):
        raise Refused(f"something is mounted on {target} already: a second mount would hide it",
                      hint="unmount it first (mounts.unmount), or choose another folder")
    name = os.path.basename(target)
    made = missing_folders(target)
    with ledger().creating("mount", target, owner, data={"made": made}):
        fault_point("mount-recorded")
        try:
            parent = marks.open_lab_dir(os.path.dirname(target), create=True)
            try:
                try:
                    os.mkdir(name, 0o755, dir_fd=parent)
                except FileExistsError:
                    pass
                fd = marks.open_step(parent, name, target)
                try:
                    mount_on(fd, target, "labhelper", "tmpfs", MountFlags.MS_NOSUID | MountFlags.MS_NODEV,
                             f"size={size}")
                finally:
                    os.close(fd)
                try:
                    fault_point("mount")
                    # Find the new mount by its id: open the path again (now the tmpfs's root) and ask.
                    top = marks.open_step(parent, name, target)
                    try:
                        mid = procfs.mount_id(top)
                    finally:
                        os.close(top)
                    found = next((m for m in procfs.mountinfo() if m.mount_id == mid), None)
                    if found is None:
                        raise LabError(f"mounted a tmpfs on {target}, but cannot find it in /proc/self/mountinfo")
                except BaseException:
                    detach(target)              # a failed create leaves no mount behind...
                    raise
            finally:
                os.close(parent)
        except BaseException:
            rmdir_empty(made)                  # ...and none of the folders it made
            raise
    return found


def mount_on(fd: int, target: str, source: str, fstype: str, flags, data: str | None) -> None:
    """mount(2) on the open folder ``fd`` (``target`` names it in errors).

    On the folder we opened (without following symlinks), not on the path again:
    /proc/self/fd/N names exactly that folder, so a symlink swapped in since cannot redirect the
    mount elsewhere."""
    try:
        syscalls.mount(source, f"/proc/self/fd/{fd}", fstype, flags, data)
    except SyscallError as exc:
        raise exc.with_arguments(target=target) from None


def bind_file(dir_fd: int, name: str, source: str, mode: int = 0o444) -> None:
    """Bind-mount the file ``source`` (a path, or /proc/self/fd/N of an open file) on a new
    empty file ``name`` in the open folder ``dir_fd``. The mount is made on /proc/self/fd of the
    file just made, so no symlink swapped in at ``name`` can redirect it."""
    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd))
    target = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        syscalls.mount(source, f"/proc/self/fd/{target}", None, MountFlags.MS_BIND)
    finally:
        os.close(target)


def make_dir(path: str, owner: str | None = None) -> str:
    """Make the lab folder ``path`` (and what is missing above it), recorded in the ledger as a
    "dir": cleanup removes it, and everything in it, never through a symlink or a mount."""
    path = marks.lab_path(path, "make a folder")
    above = [p for p in missing_folders(path) if p != path]     # recorded first: removed with it, when empty
    with registry.ledger().creating("dir", path, owner, data={"made": above}):
        made: list[str] = []
        try:
            os.close(marks.open_lab_dir(path, create=True, made=made))
        except BaseException:
            rmdir_empty(made)
            raise
    return path


def open_folder(path: str) -> int:
    """Open the lab folder ``path`` without following a symlink anywhere in it: in one call
    where the kernel has openat2 (RESOLVE_NO_SYMLINKS: any symlink on the way is ELOOP), else by
    marks.open_lab_dir's walk, one component at a time. A symlink on the way is refused by the
    walk either way, which says which component it is."""
    path = marks.host_path(path, "folder")
    # host_path made sure the path is normal (no "..", no "//"): a prefix test is enough, and it
    # is what an overlay of many layers pays once per layer.
    if not any(path.startswith(d + "/") or path == d for d in marks.LAB_DIRS):
        raise Refused(f"refusing to open {path!r}: labhelper works only below {' or '.join(marks.LAB_DIRS)}")
    try:
        return syscalls.openat2(-100, path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                syscalls.RESOLVE_NO_SYMLINKS | syscalls.RESOLVE_NO_MAGICLINKS)
    except SyscallError as exc:
        if exc.errno == errno.ENOENT:
            raise FileNotFoundError(errno.ENOENT, "no such folder", path) from None
    return marks.open_lab_dir(path)          # ELOOP, ENOTDIR, ENOSYS...: the walk says what is wrong


def missing_folders(path: str) -> list[str]:
    """The folders from ``path`` up to its lab folder that do not exist yet, deepest last."""
    missing = []
    here = path
    while marks.lab_dir_of(here) and here not in marks.LAB_DIRS and not os.path.lexists(here):
        missing.append(here)
        here = os.path.dirname(here)
    return missing[::-1]


def rmdir_empty(paths) -> None:
    """Remove each of ``paths`` that is an empty folder, or an empty plain file (the mount point
    of a bind-mounted file), strictly below a lab folder, deepest first; leave the others (not
    empty, a mount point still, gone, not ours)."""
    for path in sorted(paths, key=lambda p: p.count("/"), reverse=True):
        try:
            path = marks.lab_path(path, "remove")
            parent = open_folder(os.path.dirname(path))
        except (OSError, LabError):
            continue
        name = os.path.basename(path)
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(name, dir_fd=parent)
            elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                # Still a mount point? unlink(2) refuses (EBUSY): then it stays.
                os.unlink(name, dir_fd=parent)
        except OSError:
            pass
        finally:
            os.close(parent)


def detach(target: str) -> bool:
    """Unmount ``target`` lazily and never through a symlink (idempotent): the one unmount.

    MNT_DETACH: the mount disappears from the tree now even if a process still uses it; the
    kernel frees it when the last user is gone. UMOUNT_NOFOLLOW: if ``target`` is a symlink, the
    kernel refuses instead of unmounting what it points to. Returns False if nothing was
    mounted there.

    Only a mount with our mark is touched (:func:`is_ours`); anything else is Refused.
    """
    path = os.path.normpath(target)
    if not is_ours(path):
        # detach("/") would detach the root of this machine.
        raise Refused(f"refusing to unmount {target!r}: it carries no mark of ours (labhelper unmounts "
                      f"only below {' or '.join(marks.LAB_DIRS)}, named network namespaces "
                      f"{marks.NETNS_DIR}/{marks.PREFIX}*, and overlays that write into a lab folder)")
    registry.guard(f"unmount {path}")
    try:
        syscalls.umount2(path, UmountFlags.MNT_DETACH | UmountFlags.UMOUNT_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):   # not mounted (any more); gone
            return False
        raise
    return True


def is_ours(path: str, table: list[Mount] | None = None) -> bool:
    """Does the mount point ``path`` carry our mark? Strictly below a lab folder (never a lab
    folder itself); or a named network namespace lh-* under /run/netns; or a mount there now that
    is an overlay writing into a lab folder (its upper directory is ours, so its writes are:
    chapter 06 mounts such overlays)."""
    path = os.path.normpath(path)
    if path in marks.LAB_DIRS:
        return False
    if marks.lab_dir_of(path):
        return True
    if os.path.dirname(path) == marks.NETNS_DIR and os.path.basename(path).startswith(marks.PREFIX):
        return True
    table = procfs.mountinfo() if table is None else table
    return any(m.mountpoint == path and m.upperdir is not None and marks.lab_dir_of(m.upperdir) is not None
               for m in table)


def unmount(target: str, record: bool = True, data: dict | None = None, in_ledger: bool = True) -> bool:
    """Unmount ``target`` and every mount below it (idempotent), and forget its record
    (``record=False``: leave the ledger alone). ``data``: the record's data, where the caller
    kept it (then no record is read again); ``in_ledger=False`` with it: the record was the
    mount's own source, gone with the mount. Returns True if something was unmounted."""
    if marks.lab_dir_of(target) is None:
        # unmount("/") would detach every mount of this machine, deepest first.
        raise Refused(f"refusing to unmount {target!r}: labhelper unmounts only below "
                      f"{' or '.join(marks.LAB_DIRS)}")
    target = os.path.normpath(target)
    registry.guard(f"unmount {target}")
    found = None
    if record and data is None:
        # Its record: in the ledger, else on the mount itself (its source), read before it goes.
        found = ledger().find("mount", target)
        if found is None:
            found = record_on_mount(target)
            in_ledger = found is None
    # A lazy unmount of a mount point takes every mount below it along (the kernel detaches the
    # whole subtree); only a folder that is no mount point itself needs its mounts found one by
    # one, deepest first, in the mount table.
    done = detach(target)
    if not done:
        for m in mounts_under(target):
            done = detach(m.mountpoint) or done
    if record:
        _after_unmount(target, found, data)
        if in_ledger:
            ledger().remove("mount", target)
    return done


def record_on_mount(target: str, table: list[Mount] | None = None) -> registry.Record | None:
    """The record the mount on ``target`` carries as its source (registry.as_mount_source; an
    overlay keeps it there), with the scratch folders the kernel fills in an overlay's work
    folder (the record of a mount that made no folder of its own), or None."""
    table = procfs.mountinfo() if table is None else table
    on_it = [m for m in table if m.mountpoint == target]
    if not on_it:
        return None
    return _record_of_mount(on_it[-1])           # the top-most mount there


def _record_of_mount(m: Mount) -> registry.Record | None:
    if not m.source.startswith("labhelper:"):
        return None
    work = m.workdir
    scratch = [f"{work}/work", f"{work}/index"] if work else []
    return registry.from_mount_source(m.mountpoint, m.source, {"made": [], "scratch": scratch, "fstype": m.fstype})


def _after_unmount(target: str, record, data: dict | None = None) -> None:
    """Once a mount is gone: remove the scratch folders its filesystem filled (overlayfs' work
    folder keeps temporary entries such as ``#6d`` after a directory was removed), then the
    folders its creation made (the mount point among them, if it made it), when empty. Both
    lists come from its record (or ``data``)."""
    if data is None:
        data = record.data if record else {}
    parents: dict[str, int] = {}
    try:
        for scratch in data.get("scratch", []):
            try:
                above = os.path.dirname(marks.lab_path(scratch, "remove"))      # a record is data
                if above not in parents:
                    parents[above] = open_folder(above)
            except (OSError, LabError):
                continue
            try:
                os.rmdir(os.path.basename(scratch), dir_fd=parents[above])     # most often empty: one call
            except FileNotFoundError:
                pass
            except OSError:
                try:
                    remove_tree(scratch)
                except FileNotFoundError:
                    pass
    finally:
        for fd in parents.values():
            os.close(fd)
    # The mount point goes only if this mount's creation made it (its record lists it): a folder
    # that was there before (a container's root folder) stays. Without a record, it goes if empty.
    made = data.get("made")
    rmdir_empty(dict.fromkeys(made if made is not None else [target]))


# --- removing folders ---------------------------------------------------------------------------

def _mount_of(fd: int, where: str) -> int:
    m = procfs.mount_id(fd)
    if m < 0:
        # Fail closed: without the mount id, a bind mount cannot be told from a folder.
        raise LabError(f"refusing to remove {where!r}: cannot tell which mount it is on "
                       "(/proc/self/fdinfo is unreadable)", hint="is /proc mounted? run labhelper as root")
    return m


def remove_tree(path: str, allowed: tuple[str, ...] | None = None) -> None:
    """Remove ``path`` and everything below it without following a symlink or crossing a mount.

    The path is walked down from its lab folder one component at a time, each opened with
    O_NOFOLLOW relative to its parent (:func:`open_lab_dir`): a symlink anywhere in it is refused,
    not followed. A symlink at the path itself is removed as a link (its target is left alone).
    Directories are then walked by file descriptor, so a symlink swapped in mid-walk is not
    followed. Every directory must be on the same mount as the path's parent (mount ids from
    /proc/self/fdinfo): a bind mount at the top or anywhere inside stops the removal instead of
    emptying a host folder (R5 in docs/reliability.md).
    """
    allowed = marks.LAB_DIRS if allowed is None else allowed
    normal = marks.lab_path(path, "remove", within=allowed)
    registry.guard(f"remove {normal}")
    name = os.path.basename(normal)
    try:
        parent = marks.open_lab_dir(os.path.dirname(normal), allowed)
    except FileNotFoundError:
        return
    # Another cleanup may remove the same tree at the same moment (a workshop runs several): a
    # file or folder already gone is success, at every step.
    try:
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            _gone_ok(os.unlink, name, dir_fd=parent)
            return
        try:
            top = os.open(name, marks.DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            return
        try:
            mnt = _mount_of(top, normal)
            if mnt != _mount_of(parent, os.path.dirname(normal)):
                raise LabError(f"refusing to remove {normal!r}: it is a mount point (another filesystem, or a "
                               "bind mount of a folder, is mounted there)",
                               hint="unmount it first (labhelper cleanup unmounts ours)")
            _empty_dir(top, mnt, normal)
        finally:
            os.close(top)
        _gone_ok(os.rmdir, name, dir_fd=parent)
    finally:
        os.close(parent)


def _gone_ok(call, *args, **kwargs) -> None:
    try:
        call(*args, **kwargs)
    except FileNotFoundError:
        pass


def _empty_dir(dfd: int, mnt: int, where: str) -> None:
    for entry in list(os.scandir(dfd)):
        try:
            st = os.stat(entry.name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            _gone_ok(os.unlink, entry.name, dir_fd=dfd)
            continue
        try:
            sub = os.open(entry.name, marks.DIR_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            continue
        try:
            if _mount_of(sub, f"{where}/{entry.name}") != mnt:
                raise LabError(f"refusing to remove {where}/{entry.name}: another filesystem is mounted "
                               "there", hint="unmount it first (labhelper cleanup unmounts ours)")
            _empty_dir(sub, mnt, f"{where}/{entry.name}")
        finally:
            os.close(sub)
        _gone_ok(os.rmdir, entry.name, dir_fd=dfd)


# --- mounts and folders as lab objects (marks.KINDS) -------------------------------------------------

def find_mounts(scan: marks.Scan) -> list[marks.Obj]:
    """Mounts of ours: on a lab path, or an overlay whose upper directory is in a lab folder
    (it writes there). A named network namespace is a bind mount of nsfs: it is counted as a
    netns, not here."""
    found = []
    for m in scan.mounts:
        if m.mountpoint.startswith(str(scan.netns_dir) + "/"):
            continue
        if m.mountpoint in marks.LAB_DIRS:
            # On a lab folder itself: never ours to unmount (labhelper mounts only below them).
            # The lab VM or a test guest may provide a lab folder as a tmpfs named "labhelper";
            # anything else covers what the lab keeps there, so say so.
            if m.source != "labhelper":
                scan.problems.append(f"{m.fstype} from {m.source!r} is mounted on the lab folder {m.mountpoint}: "
                                     "labhelper did not mount it and leaves it alone; what the lab keeps "
                                     f"there is hidden below it (see `findmnt {m.mountpoint}`)")
            continue
        if marks.lab_dir_of(m.mountpoint) or (m.upperdir and marks.lab_dir_of(m.upperdir)):
            found.append(marks.Obj("mount", m.mountpoint, m.fstype, where=(m.mountpoint,)))
            # Its record, where it carries it as its source (an overlay): read with the ledger's.
            record = _record_of_mount(m)
            if record is not None and all(r.key != record.key for r in scan.records):
                scan.records.append(record)
    return found


def remove_mount(obj: marks.Obj, ledger: registry.Ledger) -> None:
    """Unmount one mount of ours, then remove the folder it was on, the scratch folders its
    filesystem filled, and the folders its creation made (its record lists them), when they are
    ours and empty."""
    record = ledger.find("mount", obj.name) or record_on_mount(obj.name)
    with ledger.removing("mount", obj.name):
        detach(obj.name)
        _after_unmount(obj.name, record)


def find_dirs(scan: marks.Scan) -> list[marks.Obj]:
    """Recorded folders that still exist. (A folder carries no mark of its own beyond its
    place: only the ledger says which folders below a lab folder are objects.)"""
    return [marks.Obj("dir", r.name, where=(r.name,)) for r in scan.records
            if r.kind == "dir" and _exists_here(scan, r.name)]


def _exists_here(scan: marks.Scan, path: str) -> bool:
    """Does ``path`` exist, reached without a symlink below its lab folder? (Its last component
    may be one: a symlink at a recorded path is removed as a link.) A path that goes through a
    symlink leads somewhere else: what was recorded there is gone, and only the record is left."""
    path = os.path.normpath(path)
    root = marks.lab_dir_of(path) or "/"
    here = scan.host_path(root)
    if not os.path.lexists(here):
        return False
    parts = [p for p in os.path.relpath(path, root).split("/") if p not in ("", ".")]
    for i, part in enumerate(parts):
        here = here / part
        try:
            st = os.lstat(here)
        except OSError:
            return False
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            return False
    return True


def remove_dir(obj: marks.Obj, ledger: registry.Ledger) -> None:
    """Remove a recorded folder and everything in it (:func:`remove_tree`), then the folders its
    creation made above it (its record lists them), when they are empty."""
    record = ledger.find("dir", obj.name)
    with ledger.removing("dir", obj.name):
        remove_tree(obj.name)
        rmdir_empty(record.data.get("made", []) if record else [])

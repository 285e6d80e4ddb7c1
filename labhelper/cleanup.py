"""Census and cleanup: find every kernel object of ours, and remove exactly those.

*Ours* means carrying the project's mark (DESIGN.md): a name starting with ``lh-`` (network
namespaces, links), a path under /var/lib/labhelper or /run/labhelper (mounts, folders), a
cgroup under a ``labhelper`` cgroup in any hierarchy, or a process inside such a cgroup. The
ledger (registry.py) adds who created each object and whether its creator still runs.

Removal goes in dependency order, and each step is idempotent (something already gone is fine):

1. processes: SIGKILL, through a pidfd after checking the process is still the one we found
   (a pid alone may have been reused by an unrelated process, RELIABILITY.md R7);
2. mounts: unmounted deepest first, lazily (MNT_DETACH), never through a symlink;
3. links, then network namespaces (the bind mount under /run/netns, then the file);
4. cgroups: rmdir, deepest first, in every hierarchy;
5. folders recorded in the ledger: removed without following symlinks or crossing a mount (R5);
6. ledger records whose object is gone.

Every reader takes its root (``proc``, ``sys_``, ``netns_dir``, ``fs_root``), so the census and
the plan are unit-tested against fake trees; only :func:`execute` touches the kernel.
"""
from __future__ import annotations

import errno
import os
import signal
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import host, syscalls
from .errors import LabError
from .flags import UmountFlags
from .mounts import LAB_DIRS, Mount, is_under, mnt_id, open_lab_dir, parse_mountinfo
from .process import start_time
from .registry import Ledger, Record, ledger

__all__ = ["Obj", "Census", "Action", "census", "plan", "execute", "cleanup", "remove_tree",
           "MARK", "CGROUP_PARENT"]

MARK = "lh-"                # prefix of every netns, link and bridge we create
CGROUP_PARENT = "labhelper"  # the cgroup under which all of ours live, in every hierarchy
NETNS_DIR = "/run/netns"    # where `ip netns` and pyroute2 keep named network namespaces

# Removal order: an object can only go once what depends on it is gone.
ORDER = ("process", "mount", "link", "netns", "cgroup", "dir", "ledger")


def _shown(text: str) -> str:
    """``text`` printable anywhere: bytes that were not UTF-8 (kept by os.fsdecode as lone
    surrogates) are shown as \\xNN, as in a Python bytes literal."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


@dataclass(frozen=True, order=True)
class Obj:
    """One kernel object of ours, as the census sees it.

    ``cgroups``: for a process, the lab cgroups it is in (host paths); a process without a
    record of its own belongs to the owner of the cgroup record that contains it.
    """
    kind: str
    name: str
    detail: str = field(default="", compare=False)
    owner: str | None = field(default=None, compare=False)
    cgroups: tuple[str, ...] = field(default=(), compare=False)

    def __repr__(self) -> str:
        extra = f" ({_shown(self.detail)})" if self.detail else ""
        who = f" owner={self.owner}" if self.owner else ""
        return f"{self.kind} {_shown(self.name)}{extra}{who}"


@dataclass
class Census:
    objects: list[Obj]
    records: list[Record]
    problems: list[str]

    def __bool__(self) -> bool:
        return bool(self.objects)

    def __iter__(self):
        return iter(self.objects)

    def __len__(self) -> int:
        return len(self.objects)

    def names(self) -> set[tuple[str, str]]:
        return {(o.kind, o.name) for o in self.objects}

    def table(self) -> str:
        if not self.objects:
            return "nothing of ours exists"
        rows = [(o.kind, _shown(o.name), o.owner or "-", _shown(o.detail)) for o in self.objects]
        widths = [max(len(r[i]) for r in rows + [("kind", "name", "owner", "detail")]) for i in range(3)]
        lines = [f"{'kind':{widths[0]}}  {'name':{widths[1]}}  {'owner':{widths[2]}}  detail"]
        lines += [f"{k:{widths[0]}}  {n:{widths[1]}}  {w:{widths[2]}}  {d}".rstrip() for k, n, w, d in rows]
        return "\n".join(lines)

    def __repr__(self) -> str:
        # In a notebook the problems (a corrupt ledger file, a ledger only root may read) show
        # under the table; the CLI prints the table alone and the problems on stderr.
        return self.table() + "".join(f"\n  ! {line}" for line in self.problems)


@dataclass(frozen=True)
class Action:
    verb: str    # kill, unmount, delete-link, delete-netns, rmdir, remove-tree, forget
    obj: Obj

    def __repr__(self) -> str:
        return f"{self.verb:13} {self.obj.kind} {_shown(self.obj.name)}"


# ---------------------------------------------------------------------------------------------
# The census

def _cgroup_dirs(fs_root: Path, mountpoint: str) -> list[str]:
    """Every directory at or below <mountpoint>/labhelper, as host paths, parents first."""
    top = fs_root / mountpoint.lstrip("/") / CGROUP_PARENT
    if not top.is_dir() or top.is_symlink():
        return []
    found = []
    for dirpath, dirnames, _ in os.walk(top, followlinks=False):
        found.append("/" + os.path.relpath(dirpath, fs_root))
        dirnames.sort()
    return found


def _is_lab_cgroup(cgroup_line: str) -> bool:
    # /proc/PID/cgroup: "hierarchy-id:controllers:/path" per hierarchy (v2: "0::/path").
    path = cgroup_line.split(":", 2)[-1]
    return path == f"/{CGROUP_PARENT}" or path.startswith(f"/{CGROUP_PARENT}/")


def _cgroup_host_paths(cgroup_line: str, table: list[Mount]) -> list[str]:
    """Where the cgroup named in a /proc/PID/cgroup line is, as a folder on this host.

    The line gives the path inside one hierarchy; the hierarchy is mounted somewhere: cgroup2
    (the line starts "0::") or the cgroup v1 mount whose options name the same controllers
    ("4:memory:/x" is in the hierarchy mounted with option "memory").
    """
    hid, _, rest = cgroup_line.partition(":")
    controllers, _, path = rest.partition(":")
    found = []
    for m in table:
        if hid == "0" and not controllers:
            match = m.fstype == "cgroup2"
        else:
            match = m.fstype == "cgroup" and set(controllers.split(",")) <= set(m.super_options.split(","))
        if match and is_under(path, m.root):
            found.append(os.path.normpath(m.mountpoint + "/" + os.path.relpath(path, m.root)))
    return found


def _is_zombie(stat_text: str) -> bool:
    # Field 3 of /proc/PID/stat, after the command name in parentheses: "Z" for a zombie. A
    # zombie has exited (it holds no cgroup, no mount); only its parent can remove it, by waiting.
    return stat_text[stat_text.rfind(")") + 2:][:1] == "Z"


def _exists_here(fs_root: Path, path: str) -> bool:
    """Does ``path`` exist, reached without a symlink below its lab folder? (Its last component
    may be one: a symlink at a recorded path is removed as a link.) A path that goes through a
    symlink leads somewhere else: what was recorded there is gone, and only the record is left."""
    path = os.path.normpath(path)
    root = next((os.path.normpath(d) for d in LAB_DIRS if is_under(path, d)), "/")
    here = fs_root / root.lstrip("/")
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


def _containing_record(kind: str, paths, records: list[Record]) -> Record | None:
    """The deepest record of a cgroup, folder or mount that contains one of ``paths``."""
    kinds = ("cgroup",) if kind == "process" else ("cgroup", "dir", "mount")
    best = None
    for r in records:
        if r.kind in kinds and any(is_under(p, r.name) for p in paths):
            if best is None or len(r.name) > len(best.name):
                best = r
    return best


def _record_of(obj: Obj, records: list[Record]) -> Record | None:
    """The record that says whose ``obj`` is: its own, else the cgroup, folder or mount record
    that contains it (a cgroup's children, a mount inside a recorded folder, a grandchild
    process left in a recorded cgroup)."""
    if obj.kind == "ledger":
        return next((r for r in records if r.key == obj.name), None)
    for r in records:
        if r.kind == obj.kind and r.name == obj.name:
            if obj.kind != "process" or f"start={r.data.get('start')}" == obj.detail.split(" ")[0]:
                return r
    if obj.kind == "process":
        return _containing_record("process", obj.cgroups, records)
    if obj.kind in ("cgroup", "mount", "dir"):
        return _containing_record(obj.kind, (obj.name,), records)
    return None


def census(proc: Path | str = "/proc", sys_: Path | str = "/sys", netns_dir: Path | str = NETNS_DIR,
           fs_root: Path | str = "/", the_ledger: Ledger | None = None) -> Census:
    """Every object of ours that exists now, joined with the ledger."""
    proc, sys_, netns_dir, fs_root = Path(proc), Path(sys_), Path(netns_dir), Path(fs_root)
    the_ledger = the_ledger or ledger()
    records = the_ledger.records()
    problems = list(the_ledger.problems)
    by_key = {(r.kind, r.name): r for r in records}
    objects: dict[tuple[str, str], Obj] = {}

    def add(kind: str, name: str, detail: str = "", cgroups: tuple[str, ...] = ()) -> None:
        if kind == "process":  # its own record if the start time matches, else its cgroup's
            rec = _record_of(Obj(kind, name, detail, None, cgroups), records)
        else:
            rec = by_key.get((kind, name))
        objects[(kind, name)] = Obj(kind, name, detail, rec.owner if rec else None, cgroups)

    table = parse_mountinfo(host.read_text(proc / "self" / "mountinfo"))
    for m in table:
        if m.mountpoint.startswith(str(netns_dir) + "/"):
            continue  # a named netns is a bind mount of nsfs: counted as a netns below
        upper = m.upperdir
        if any(is_under(m.mountpoint, d) for d in LAB_DIRS) or (upper and any(is_under(upper, d) for d in LAB_DIRS)):
            add("mount", m.mountpoint, m.fstype)
    for m in table:
        if m.fstype in ("cgroup", "cgroup2"):
            for path in _cgroup_dirs(fs_root, m.mountpoint):
                add("cgroup", path, m.fstype)
    try:
        for name in sorted(os.listdir(netns_dir)):
            if name.startswith(MARK):
                add("netns", name)
    except OSError:
        pass
    try:
        for name in sorted(os.listdir(sys_ / "class" / "net")):
            if name.startswith(MARK):
                add("link", name)
    except OSError:
        pass
    # Never this process, nor its parent: the shell running `labhelper cleanup` may have been
    # moved into a lab cgroup by an exercise, and killing it would end the learner's session.
    spared = {1, os.getpid(), os.getppid()}
    try:
        entries = list(os.scandir(proc))
    except OSError:
        entries = []
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) in spared:
            continue
        lines = [line for line in host.read_text(Path(entry.path) / "cgroup").splitlines() if _is_lab_cgroup(line)]
        if not lines or _is_zombie(host.read_text(Path(entry.path) / "stat")):
            continue
        where = tuple(dict.fromkeys(p for line in lines for p in _cgroup_host_paths(line, table)))
        detail = f"start={start_time(int(entry.name), str(proc))}" + (f" in {', '.join(where)}" if where else "")
        add("process", entry.name, detail, where)
    for r in records:
        if r.kind == "process" and (r.kind, r.name) not in objects:
            started = r.data.get("start")
            if started is not None and start_time(int(r.name), str(proc)) == started:
                add("process", r.name, f"start={started}")
        elif r.kind == "dir" and _exists_here(fs_root, r.name):
            add("dir", r.name)
    # Records whose object is gone: only the record is left to forget. (A process record whose
    # start time does not match is one of these: the pid now names another process, R7.)
    for r in records:
        if (r.kind, r.name) not in objects and r.kind != "vm":
            objects[("ledger", r.key)] = Obj("ledger", r.key, f"{r.kind} {r.name} is gone", r.owner)
    # A writer killed between writing its temporary file and renaming it leaves the file.
    for name in the_ledger.stale_temp_files():
        objects[("ledger", name)] = Obj("ledger", name, "a ledger write that never finished")
    ordered = sorted(objects.values(), key=lambda o: (ORDER.index(o.kind), o.name))
    return Census(ordered, records, problems)


# ---------------------------------------------------------------------------------------------
# The plan

def _is_temp_file(obj: Obj) -> bool:
    return obj.kind == "ledger" and obj.name.startswith(".")


def plan(c: Census, owner: str | None = None, orphans_only: bool = False, proc: Path | str = "/proc",
         created_by: int | None = None) -> list[Action]:
    """What cleanup would do, in order. ``owner`` keeps only that owner's objects;
    ``orphans_only`` keeps only objects whose recorded creator no longer runs (or, if
    ``created_by`` is a pid, was that process: a notebook kernel re-running its setup).

    An object without a record of its own is judged by the record that contains it: a child
    cgroup by its parent's, a process by its cgroup's.
    """
    alive = {r.key: r.creator_alive(str(proc)) for r in c.records}
    verbs = {"process": "kill", "mount": "unmount", "link": "delete-link", "netns": "delete-netns",
             "cgroup": "rmdir", "dir": "remove-tree", "ledger": "forget"}
    actions = []
    for obj in c.objects:
        if _is_temp_file(obj):  # garbage of the ledger itself: nobody's, always removed
            actions.append(Action(verbs[obj.kind], obj))
            continue
        rec = _record_of(obj, c.records)
        if owner is not None and (obj.owner or (rec.owner if rec else None)) != owner:
            continue
        if orphans_only:
            if rec is None:
                continue
            if alive.get(rec.key, False) and not (created_by is not None and rec.pid == created_by):
                continue
        actions.append(Action(verbs[obj.kind], obj))
    # Deepest first for paths: children before parents.
    actions.sort(key=lambda a: (ORDER.index(a.obj.kind), -a.obj.name.count("/") if a.obj.kind in
                                ("mount", "cgroup", "dir") else 0, a.obj.name))
    return actions


# ---------------------------------------------------------------------------------------------
# Doing it

def _ignore(exc: OSError, *codes: int) -> None:
    if exc.errno not in codes:
        raise exc


def _kill(obj: Obj) -> None:
    pid = int(obj.name)
    expected = obj.detail.split(" ")[0].removeprefix("start=")
    if not expected.isdigit():
        return  # the census could not read its start time: without an identity, never signal
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        # Holding a pidfd pins *this* process: if the start time still matches now, the signal
        # goes to the process the census saw, never to a newcomer that reused its pid (R7).
        # If it does not match, the process we saw is gone and the pid is someone else's.
        if str(start_time(pid)) != expected:
            return
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            pass
    finally:
        os.close(fd)


def _wait_gone(pids: list[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if os.path.exists(f"/proc/{p}") and not _is_zombie(host.read_text(Path(f"/proc/{p}/stat")))]
        if pids:
            time.sleep(0.02)


def _delete_link(name: str) -> None:
    from pyroute2 import IPRoute  # imported here: pyroute2 is heavy, and only cleanup of links needs it
    from pyroute2.netlink.exceptions import NetlinkError
    with IPRoute() as ipr:
        try:
            idx = ipr.link_lookup(ifname=name)
            if idx:
                ipr.link("del", index=idx[0])
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:  # deleting one end of a veth pair removes the other too
                raise


def _delete_netns(name: str, netns_dir: str = NETNS_DIR) -> None:
    path = os.path.join(netns_dir, name)
    try:
        syscalls.umount2(path, UmountFlags.MNT_DETACH | UmountFlags.UMOUNT_NOFOLLOW)
    except OSError as exc:
        _ignore(exc, errno.EINVAL, errno.ENOENT)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _mnt_id(fd: int) -> int:
    return mnt_id(fd)


def _mount_of(fd: int, where: str) -> int:
    m = _mnt_id(fd)
    if m < 0:
        # Fail closed: without the mount id, a bind mount cannot be told from a folder.
        raise LabError(f"refusing to remove {where!r}: cannot tell which mount it is on "
                       "(/proc/self/fdinfo is unreadable)", hint="is /proc mounted? run labhelper as root")
    return m


def remove_tree(path: str, allowed: tuple[str, ...] = LAB_DIRS) -> None:
    """Remove ``path`` and everything below it without following a symlink or crossing a mount.

    The path is walked down from its lab folder one component at a time, each opened with
    O_NOFOLLOW relative to its parent (mounts.open_lab_dir): a symlink anywhere in it is refused,
    not followed. A symlink at the path itself is removed as a link (its target is left alone).
    Directories are then walked by file descriptor, so a symlink swapped in mid-walk is not
    followed. Every directory must be on the same mount as the path's parent (mount ids from
    /proc/self/fdinfo): a bind mount at the top or anywhere inside stops the removal instead of
    emptying a host folder (R5).
    """
    if not any(is_under(path, d) and os.path.normpath(path) != os.path.normpath(d) for d in allowed):
        raise LabError(f"refusing to remove {path!r}: labhelper removes folders only below {' or '.join(allowed)}")
    path = os.path.normpath(path)
    name = os.path.basename(path)
    try:
        parent = open_lab_dir(os.path.dirname(path), allowed)
    except FileNotFoundError:
        return
    try:
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent)
            return
        top = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            mnt = _mount_of(top, path)
            if mnt != _mount_of(parent, os.path.dirname(path)):
                raise LabError(f"refusing to remove {path!r}: it is a mount point (another filesystem, or a "
                               "bind mount of a folder, is mounted there)",
                               hint="unmount it first (labhelper cleanup unmounts ours)")
            _empty_dir(top, mnt, path)
        finally:
            os.close(top)
        os.rmdir(name, dir_fd=parent)
    finally:
        os.close(parent)


def _empty_dir(dfd: int, mnt: int, where: str) -> None:
    for entry in list(os.scandir(dfd)):
        st = os.stat(entry.name, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            try:
                if _mount_of(sub, f"{where}/{entry.name}") != mnt:
                    raise LabError(f"refusing to remove {where}/{entry.name}: another filesystem is mounted "
                                   "there", hint="unmount it first (labhelper cleanup unmounts ours)")
                _empty_dir(sub, mnt, f"{where}/{entry.name}")
            finally:
                os.close(sub)
            os.rmdir(entry.name, dir_fd=dfd)
        else:
            os.unlink(entry.name, dir_fd=dfd)


def _rmdir_mount_point(path: str) -> None:
    """Remove the folder a lab mount was on, if it is ours (under a lab folder) and now empty."""
    if not any(is_under(path, d) and os.path.normpath(path) != os.path.normpath(d) for d in LAB_DIRS):
        return  # e.g. an overlay on /srv/x writing into our folder: the mount was ours, /srv/x is not
    try:
        parent = open_lab_dir(os.path.dirname(path))
    except (OSError, LabError):
        return
    try:
        os.rmdir(os.path.basename(path), dir_fd=parent)
    except OSError:
        pass  # not empty, or still a mount point: leave it
    finally:
        os.close(parent)


def _execute(actions: list[Action], the_ledger: Ledger | None = None,
             netns_dir: str = NETNS_DIR) -> list[tuple[Action, str]]:
    if not actions:
        return []
    the_ledger = the_ledger or ledger()
    host.guard("remove kernel objects")
    failures: list[tuple[Action, str]] = []
    killed = []
    unmount_failed = False
    for action in actions:
        obj = action.obj
        try:
            if obj.kind == "process":
                _kill(obj)
                killed.append(int(obj.name))
                the_ledger.remove(obj.kind, obj.name)
                continue
            if killed:  # before unmounting or removing cgroups, the processes must really be gone
                _wait_gone(killed)
                killed = []
            if obj.kind == "mount":
                try:
                    syscalls.umount2(obj.name, UmountFlags.MNT_DETACH | UmountFlags.UMOUNT_NOFOLLOW)
                except OSError as exc:
                    _ignore(exc, errno.EINVAL, errno.ENOENT)
                _rmdir_mount_point(obj.name)
            elif obj.kind == "link":
                _delete_link(obj.name)
            elif obj.kind == "netns":
                _delete_netns(obj.name, netns_dir)
            elif obj.kind == "cgroup":
                try:
                    os.rmdir(obj.name)
                except OSError as exc:
                    _ignore(exc, errno.ENOENT)
            elif obj.kind == "dir":
                if unmount_failed:
                    # A mount that is still there may be a bind mount of a host folder inside
                    # this folder: do not even start; the next round may have unmounted it.
                    failures.append((action, "skipped: an unmount failed in this round, and a mount may "
                                             "still be inside"))
                    continue
                remove_tree(obj.name)
            if obj.kind == "ledger":
                try:
                    os.unlink(the_ledger.root / obj.name)
                except FileNotFoundError:
                    pass
            else:
                the_ledger.remove(obj.kind, obj.name)
        except Exception as exc:  # noqa: BLE001 - one bad object must not stop the others
            if obj.kind == "mount":
                unmount_failed = True
            text = str(exc) if isinstance(exc, (OSError, LabError)) else f"{type(exc).__name__}: {exc}"
            failures.append((action, text))
    if killed:
        _wait_gone(killed)
    return failures


def execute(actions: list[Action], the_ledger: Ledger | None = None, netns_dir: str = NETNS_DIR) -> list[str]:
    """Carry out ``actions``; returns one line per failure (empty if all went well)."""
    return [f"{a!r}: {text}" for a, text in _execute(actions, the_ledger, netns_dir)]


@dataclass
class Result:
    actions: list[Action]
    failures: list[str]
    problems: list[str]
    dry_run: bool

    def text(self, notes: bool = True) -> str:
        """What was (or would be) done; with ``notes``, the failures and problems after it."""
        if not self.actions:
            text = "nothing to clean up"
        else:
            head = "would do" if self.dry_run else "done"
            text = f"{head}:\n" + "\n".join(f"  {a!r}" for a in self.actions)
        if notes:
            for line in self.failures + self.problems:
                text += f"\n  ! {line}"
        return text

    def __repr__(self) -> str:
        return self.text()

    @property
    def ok(self) -> bool:
        return not self.failures


def cleanup(owner: str | None = None, dry_run: bool = False, orphans_only: bool = False,
            created_by: int | None = None) -> Result:
    """Remove every object of ours (or only ``owner``'s, or only orphans'), then check again.

    Runs the plan up to three times: a process killed in round one may free a mount that
    round two can then remove. Whatever the plan still names after that is reported as a
    failure ("still present"): ``ok`` means the objects are really gone, not just that no call
    failed. ``created_by``: see :func:`plan`.
    """
    done: list[Action] = []
    failed: list[tuple[Action, str]] = []
    c = census()
    for _ in range(3):
        actions = plan(c, owner, orphans_only, created_by=created_by)
        if not actions:
            break
        if dry_run:
            done = actions
            break
        failed = _execute(actions)
        done += [a for a in actions if a not in done]
        c = census()
    # Judge by what exists now: an error about an object that is gone since does not matter;
    # an object still there is a failure even if no call reported one (an "already unmounted"
    # EINVAL, a process that no longer matched its start time and so was not signalled).
    left = {a.obj for a in plan(c, owner, orphans_only, created_by=created_by)} if done and not dry_run else set()
    failures = [f"{a!r}: {text}" for a, text in failed if a.obj in left]
    named = {a.obj for a, _ in failed}
    failures += [f"still present: {obj!r}" for obj in sorted(left, key=lambda o: (ORDER.index(o.kind), o.name))
                 if obj not in named]
    return Result(done, failures, c.problems, dry_run)

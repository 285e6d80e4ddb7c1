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
from .mounts import LAB_DIRS, is_under, parse_mountinfo
from .process import start_time
from .registry import Ledger, Record, ledger

__all__ = ["Obj", "Census", "Action", "census", "plan", "execute", "cleanup", "remove_tree",
           "MARK", "CGROUP_PARENT"]

MARK = "lh-"                # prefix of every netns, link and bridge we create
CGROUP_PARENT = "labhelper"  # the cgroup under which all of ours live, in every hierarchy
NETNS_DIR = "/run/netns"    # where `ip netns` and pyroute2 keep named network namespaces

# Removal order: an object can only go once what depends on it is gone.
ORDER = ("process", "mount", "link", "netns", "cgroup", "dir", "ledger")


@dataclass(frozen=True, order=True)
class Obj:
    """One kernel object of ours, as the census sees it."""
    kind: str
    name: str
    detail: str = field(default="", compare=False)
    owner: str | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        who = f" owner={self.owner}" if self.owner else ""
        return f"{self.kind} {self.name}{extra}{who}"


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
        rows = [(o.kind, o.name, o.owner or "-", o.detail) for o in self.objects]
        widths = [max(len(r[i]) for r in rows + [("kind", "name", "owner", "detail")]) for i in range(3)]
        lines = [f"{'kind':{widths[0]}}  {'name':{widths[1]}}  {'owner':{widths[2]}}  detail"]
        lines += [f"{k:{widths[0]}}  {n:{widths[1]}}  {w:{widths[2]}}  {d}" for k, n, w, d in rows]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.table()


@dataclass(frozen=True)
class Action:
    verb: str    # kill, unmount, delete-link, delete-netns, rmdir, remove-tree, forget
    obj: Obj

    def __repr__(self) -> str:
        return f"{self.verb:13} {self.obj.kind} {self.obj.name}"


# ---------------------------------------------------------------------------------------------
# The census

def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


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


def census(proc: Path | str = "/proc", sys_: Path | str = "/sys", netns_dir: Path | str = NETNS_DIR,
           fs_root: Path | str = "/", the_ledger: Ledger | None = None) -> Census:
    """Every object of ours that exists now, joined with the ledger."""
    proc, sys_, netns_dir, fs_root = Path(proc), Path(sys_), Path(netns_dir), Path(fs_root)
    the_ledger = the_ledger or ledger()
    records = the_ledger.records()
    problems = list(the_ledger.problems)
    by_key = {(r.kind, r.name): r for r in records}
    objects: dict[tuple[str, str], Obj] = {}

    def add(kind: str, name: str, detail: str = "") -> None:
        rec = by_key.get((kind, name))
        objects[(kind, name)] = Obj(kind, name, detail, rec.owner if rec else None)

    table = parse_mountinfo(_read(proc / "self" / "mountinfo"))
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
    me = os.getpid()
    for entry in os.scandir(proc):
        if not entry.name.isdigit() or int(entry.name) in (1, me):
            continue
        lines = _read(Path(entry.path) / "cgroup").splitlines()
        if any(_is_lab_cgroup(line) for line in lines):
            add("process", entry.name, f"start={start_time(int(entry.name), str(proc))}")
    for r in records:
        if r.kind == "process" and (r.kind, r.name) not in objects:
            started = r.data.get("start")
            if started is not None and start_time(int(r.name), str(proc)) == started:
                add("process", r.name, f"start={started}")
        elif r.kind == "dir" and os.path.lexists(fs_root / r.name.lstrip("/")):
            add("dir", r.name)
    # Records whose object is gone: only the record is left to forget.
    for r in records:
        if (r.kind, r.name) not in objects and r.kind != "vm":
            objects[("ledger", r.key)] = Obj("ledger", r.key, f"{r.kind} {r.name} is gone", r.owner)
    ordered = sorted(objects.values(), key=lambda o: (ORDER.index(o.kind), o.name))
    return Census(ordered, records, problems)


# ---------------------------------------------------------------------------------------------
# The plan

def _owned_by(obj: Obj, owner: str, records: list[Record]) -> bool:
    if obj.owner == owner:
        return True
    if obj.owner is not None:
        return False
    # Unrecorded objects inside a recorded one belong to its owner (a cgroup's children, a
    # mount inside a recorded folder).
    for r in records:
        if r.owner == owner and r.kind in ("cgroup", "dir", "mount") and obj.kind in ("cgroup", "mount", "dir"):
            if is_under(obj.name, r.name):
                return True
    return False


def plan(c: Census, owner: str | None = None, orphans_only: bool = False, proc: Path | str = "/proc") -> list[Action]:
    """What cleanup would do, in order. ``owner`` keeps only that owner's objects;
    ``orphans_only`` keeps only objects whose recorded creator no longer runs."""
    alive = {r.key: r.creator_alive(str(proc)) for r in c.records}
    by_name = {(r.kind, r.name): r for r in c.records}
    verbs = {"process": "kill", "mount": "unmount", "link": "delete-link", "netns": "delete-netns",
             "cgroup": "rmdir", "dir": "remove-tree", "ledger": "forget"}
    actions = []
    for obj in c.objects:
        if owner is not None and not _owned_by(obj, owner, c.records):
            continue
        if orphans_only:
            rec = by_name.get((obj.kind, obj.name))
            if obj.kind == "ledger":
                rec = next((r for r in c.records if r.key == obj.name), None)
            if rec is None or alive.get(rec.key, False):
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
    expected = obj.detail.removeprefix("start=")
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        # Holding a pidfd pins *this* process: if the start time still matches now, the signal
        # goes to the process the census saw, never to a newcomer that reused its pid (R7).
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
        pids = [p for p in pids if os.path.exists(f"/proc/{p}") and _read(Path(f"/proc/{p}/stat")).split(") ")[-1][:1] != "Z"]
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
    for line in _read(Path(f"/proc/self/fdinfo/{fd}")).splitlines():
        if line.startswith("mnt_id:"):
            return int(line.split()[1])
    return -1


def remove_tree(path: str, allowed: tuple[str, ...] = LAB_DIRS) -> None:
    """Remove ``path`` and everything below it without following a symlink or crossing a mount.

    A symlink is removed as a link (its target is left alone). Directories are opened with
    O_NOFOLLOW and walked by file descriptor, so a symlink swapped in mid-walk is not followed;
    each directory's mount id (from /proc/self/fdinfo) must equal the top's, so a bind mount
    left inside stops the removal instead of emptying a host folder (R5).
    """
    if not any(is_under(path, d) and os.path.normpath(path) != os.path.normpath(d) for d in allowed):
        raise LabError(f"refusing to remove {path!r}: labhelper removes folders only below {' or '.join(allowed)}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _empty_dir(top, _mnt_id(top), path)
    finally:
        os.close(top)
    os.rmdir(path)


def _empty_dir(dfd: int, mnt: int, where: str) -> None:
    for entry in list(os.scandir(dfd)):
        st = os.stat(entry.name, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            try:
                if _mnt_id(sub) != mnt:
                    raise LabError(f"refusing to remove {where}/{entry.name}: another filesystem is mounted "
                                   "there", hint="unmount it first (labhelper cleanup unmounts ours)")
                _empty_dir(sub, mnt, f"{where}/{entry.name}")
            finally:
                os.close(sub)
            os.rmdir(entry.name, dir_fd=dfd)
        else:
            os.unlink(entry.name, dir_fd=dfd)


def execute(actions: list[Action], the_ledger: Ledger | None = None, netns_dir: str = NETNS_DIR) -> list[str]:
    """Carry out ``actions``; returns one line per failure (empty if all went well)."""
    if not actions:
        return []
    the_ledger = the_ledger or ledger()
    host.guard("remove kernel objects")
    failures = []
    killed = []
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
                try:
                    os.rmdir(obj.name)  # the mount point we made, if now empty and unused
                except OSError:
                    pass
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
                remove_tree(obj.name)
            if obj.kind == "ledger":
                try:
                    os.unlink(the_ledger.root / obj.name)
                except FileNotFoundError:
                    pass
            else:
                the_ledger.remove(obj.kind, obj.name)
        except (OSError, LabError) as exc:
            failures.append(f"{action!r}: {exc}")
    if killed:
        _wait_gone(killed)
    return failures


@dataclass
class Result:
    actions: list[Action]
    failures: list[str]
    problems: list[str]
    dry_run: bool

    def __repr__(self) -> str:
        if not self.actions:
            text = "nothing to clean up"
        else:
            head = "would do" if self.dry_run else "done"
            text = f"{head}:\n" + "\n".join(f"  {a!r}" for a in self.actions)
        for line in self.failures + self.problems:
            text += f"\n  ! {line}"
        return text

    @property
    def ok(self) -> bool:
        return not self.failures


def cleanup(owner: str | None = None, dry_run: bool = False, orphans_only: bool = False) -> Result:
    """Remove every object of ours (or only ``owner``'s, or only orphans'), then check again.

    Runs the plan up to three times: a process killed in round one may free a mount that
    round two can then remove.
    """
    done: list[Action] = []
    failures: list[str] = []
    c = census()
    for _ in range(3):
        actions = plan(c, owner, orphans_only)
        if not actions:
            break
        if dry_run:
            done = actions
            break
        failures = execute(actions)
        done += [a for a in actions if a not in done]
        c = census()
    return Result(done, failures, c.problems, dry_run)

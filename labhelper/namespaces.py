"""Namespaces: each one gives a group of processes its own copy of one kind of kernel resource.

A process sees the hostname, the mounts, the process IDs, the network stack... of *its*
namespace of each type. Eight types exist today (the seed knew six: mnt, pid, net, ipc, uts,
user; cgroup and time came later). Each is named by an inode number, shown as a magic link in
/proc/PID/ns: two processes with the same number for ``uts`` share a hostname.

This module makes them, inspects them and joins them, always from a forked child: the notebook
kernel's own namespaces never change (unshare(2) of a user namespace, and setns(2) into a user or
mount namespace, are refused in a threaded process, and a Jupyter kernel is threaded; the others
would change the notebook for good).

* :data:`NAMESPACES`: the table (name, CLONE flag, /proc entry, what it isolates, when it came);
* :func:`run`: call a function in new namespaces and get its value back;
* :func:`hold`: a process that stays in its new namespaces until closed (in a lab cgroup of its
  own, so nothing of it outlives a crash), to look at, join and pin;
* :func:`ids`, :func:`compare`, :func:`lsns`: which namespaces processes are in, read from /proc;
* :func:`enter`: call a function inside another process's namespaces, the idea behind
  ``docker exec`` (setns(2) with a pidfd: all the chosen ones at once, or none, and those of the
  very process the pidfd was opened on, even if its pid is reused meanwhile);
* :func:`pin`: keep a namespace alive after its last process, by bind-mounting its /proc file
  (a mount below /run/labhelper/ns, recorded in the ledger like every mount of the lab).
"""
from __future__ import annotations

import errno
import os
import select
import signal
import socket
from dataclasses import dataclass
from typing import Callable, NamedTuple

from . import cgroups, marks, mounts, process, procfs, syscalls
from .errors import LabError, Refused, SyscallError
from .flags import CloneFlags, MountFlags, Prctl
from .mounts import unmount
from .registry import fault_point, ledger

__all__ = ["Namespace", "NAMESPACES", "names_of", "flags_of", "ids", "Comparison", "compare", "NsRow", "Listing",
           "lsns", "run", "hold", "Held", "enter", "pin", "unpin", "Pinned", "PIN_DIR", "UNPRIVILEGED_UID"]


class Namespace(NamedTuple):
    name: str            # the name in /proc/PID/ns and in lsns
    flag: CloneFlags     # what clone(2), unshare(2) and setns(2) take
    isolates: str
    since: str           # the kernel version that completed it, and the year
    in_seed: bool        # one of the six the article lists


NAMESPACES: tuple[Namespace, ...] = (
    Namespace("mnt", CloneFlags.CLONE_NEWNS, "the mount points: which filesystems are where", "2.4.19 (2002)", True),
    Namespace("uts", CloneFlags.CLONE_NEWUTS, "the hostname and the NIS domain name", "2.6.19 (2006)", True),
    Namespace("ipc", CloneFlags.CLONE_NEWIPC, "System V IPC objects and POSIX message queues", "2.6.19 (2006)", True),
    Namespace("pid", CloneFlags.CLONE_NEWPID, "process IDs: the first process inside is PID 1", "2.6.24 (2008)", True),
    Namespace("net", CloneFlags.CLONE_NEWNET, "network devices, addresses, routes, ports, firewall", "2.6.29 (2009)", True),
    Namespace("user", CloneFlags.CLONE_NEWUSER, "user and group IDs, and with them capabilities", "3.8 (2013)", True),
    Namespace("cgroup", CloneFlags.CLONE_NEWCGROUP, "which cgroup a process sees as the root", "4.6 (2016)", False),
    Namespace("time", CloneFlags.CLONE_NEWTIME, "the CLOCK_MONOTONIC and CLOCK_BOOTTIME offsets", "5.6 (2020)", False),
)
_BY_NAME = {n.name: n for n in NAMESPACES}

#: Where pinned namespaces are bind-mounted (a lab folder: cleanup removes what is left there).
PIN_DIR = "/run/labhelper/ns"
#: The uid (and gid) outside that "root" inside a new user namespace stands for, unless told
#: otherwise: nobody, a user with no rights at all on the host.
UNPRIVILEGED_UID = 65534


def names_of(names) -> tuple[str, ...]:
    """``names`` (a name or an iterable of names) checked against the table, in table order."""
    wanted = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in wanted if n not in _BY_NAME]
    if unknown or not wanted:
        raise Refused(f"unknown namespace {unknown[0]!r}" if unknown else "no namespace given",
                      hint=f"the eight are: {', '.join(_BY_NAME)}")
    return tuple(n.name for n in NAMESPACES if n.name in wanted)


def flags_of(names) -> CloneFlags:
    """The CLONE_NEW* flags of ``names``, or'ed: ``flags_of(["uts", "pid"])``."""
    flags = CloneFlags(0)
    for name in names_of(names):
        flags |= _BY_NAME[name].flag
    return flags


# --- looking -----------------------------------------------------------------------------------------

def _pid(pid, self_ok: bool = True) -> int | str:
    if pid == "self" and self_ok:
        return pid
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise Refused(f"a process is named by a positive pid, not {pid!r}")
    return pid


def ids(pid: int | str = "self", proc: str = "/proc") -> dict[str, int]:
    """The inode number of each namespace of process ``pid``: ``{"uts": 4026531838, ...}``."""
    pid = _pid(pid)
    found = {}
    for ns in NAMESPACES:
        try:
            link = os.readlink(f"{proc}/{pid}/ns/{ns.name}")     # "uts:[4026531838]"
        except FileNotFoundError:
            if not os.path.isdir(f"{proc}/{pid}"):
                raise LabError(f"there is no process {pid} (it exited, or never was)") from None
            continue                                            # a kernel without this type
        except PermissionError:
            raise LabError(f"the namespaces of process {pid} may not be read from here (EACCES)",
                           hint="run as root (the lab VM's notebooks do); even root may not read those of a "
                                "process outside its own container") from None
        found[ns.name] = int(link[link.index("[") + 1:-1])
    return found


class Comparison(NamedTuple):
    """Two processes' namespaces side by side (``compare``): which they share."""
    a: object
    b: object
    rows: tuple[tuple[str, int | None, int | None], ...]   # (type, inode of a, inode of b)

    def shared(self) -> tuple[str, ...]:
        return tuple(t for t, x, y in self.rows if x == y)

    def different(self) -> tuple[str, ...]:
        return tuple(t for t, x, y in self.rows if x != y)

    def __repr__(self) -> str:
        head = f"{'type':<7} {str(self.a):>12} {str(self.b):>12}"
        lines = [head] + [f"{t:<7} {x or '-':>12} {y or '-':>12}  {'same' if x == y else 'different'}"
                          for t, x, y in self.rows]
        return "\n".join(lines)


def compare(a: int | str, b: int | str = "self", proc: str = "/proc") -> Comparison:
    """Which namespaces processes ``a`` and ``b`` share."""
    first, second = ids(a, proc), ids(b, proc)
    return Comparison(a, b, tuple((ns.name, first.get(ns.name), second.get(ns.name)) for ns in NAMESPACES
                                  if ns.name in first or ns.name in second))


class NsRow(NamedTuple):
    """One namespace, as ``lsns`` (util-linux) lists it: its inode, type, how many processes are
    in it, the lowest pid of those, and that process's command."""
    inode: int
    type: str
    nprocs: int
    pid: int
    command: str


class Listing(tuple):
    """Rows of :func:`lsns`, shown as a table."""

    def __repr__(self) -> str:
        lines = [f"{'NS':>10} {'TYPE':<6} {'NPROCS':>6} {'PID':>7} COMMAND"]
        lines += [f"{r.inode:>10} {r.type:<6} {r.nprocs:>6} {r.pid:>7} {marks.printable(r.command)}" for r in self]
        return "\n".join(lines)


def lsns(proc: str = "/proc", types=None) -> Listing:
    """Every namespace that some process is in, read from /proc/*/ns (what `lsns` does)."""
    wanted = names_of(types) if types is not None else tuple(_BY_NAME)
    members: dict[tuple[str, int], list[int]] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            found = ids(int(entry), proc)
        except LabError:
            continue                                            # exited while we looked, or not ours to read
        for t, inode in found.items():
            if t in wanted:
                members.setdefault((t, inode), []).append(int(entry))
    rows = []
    for (t, inode), pids in members.items():
        first = min(pids)
        command = procfs.read_text(f"{proc}/{first}/comm").strip()
        rows.append(NsRow(inode, t, len(pids), first, command))
    return Listing(sorted(rows, key=lambda r: (r.inode, r.type)))


# --- making ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Setup:
    flags: CloneFlags
    hostname: str | None
    uid: int | None                  # uid outside for root inside a new user namespace
    offset: int                      # seconds added to CLOCK_MONOTONIC and CLOCK_BOOTTIME inside
    propagation: str                 # for a new mount namespace: private, slave or shared


def _setup_of(names, hostname, uid, offset, propagation) -> _Setup:
    flags = flags_of(names)
    if hostname is not None:
        if not (CloneFlags.CLONE_NEWUTS & flags):
            raise Refused("a hostname needs its own UTS namespace: add 'uts' to the namespaces")
        if not isinstance(hostname, str) or not 0 < len(hostname.encode()) <= 64 \
                or not all(c.isascii() and (c.isalnum() or c in "-.") for c in hostname):
            raise Refused(f"hostname {hostname!r}: 1 to 64 letters, digits, '-' and '.'")
    if propagation not in ("private", "slave", "shared"):
        raise Refused(f"propagation must be 'private', 'slave' or 'shared', not {propagation!r}")
    if not isinstance(offset, int) or isinstance(offset, bool) or abs(offset) > 10 * 365 * 86400:
        raise Refused(f"the clock offset is a number of seconds (at most ten years), not {offset!r}")
    if offset and not (CloneFlags.CLONE_NEWTIME & flags):
        raise Refused("a clock offset needs its own time namespace: add 'time' to the namespaces")
    if uid is not None and (not isinstance(uid, int) or isinstance(uid, bool) or not 0 <= uid < 2 ** 32 - 1):
        raise Refused(f"uid must be a user id, not {uid!r}")
    return _Setup(flags, hostname, uid, offset, propagation)


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _enter_new(setup: _Setup) -> None:
    """In a forked child: become what ``setup`` asks for. What the kernel allows in which order:

    1. a new user namespace made by an unprivileged process is its whole point, so first drop to
       ``setup.uid`` (credentials changed: PR_SET_PDEATHSIG and "dumpable" are cleared, so set
       them again);
    2. unshare(2) everything at once: the user namespace is made first and owns the others;
    3. the user namespace's id maps (an unprivileged process may map only its own uid, and must
       give up setgroups(2) before it may write gid_map);
    4. the hostname, the clock offsets (only before any process is in the time namespace), the
       propagation of the new mount namespace's copies of the mounts.
    """
    flags = setup.flags
    new_user = bool(CloneFlags.CLONE_NEWUSER & flags)
    if new_user and setup.uid is not None and os.geteuid() == 0 and setup.uid != 0:
        parent = os.getppid()
        os.setgroups([])
        os.setresgid(setup.uid, setup.uid, setup.uid)
        os.setresuid(setup.uid, setup.uid, setup.uid)
        # A change of credentials clears both the parent-death signal and "dumpable", which owns
        # /proc/self/* by root: set them again, or the id maps below could not be written.
        syscalls.prctl(Prctl.PR_SET_PDEATHSIG, signal.SIGKILL)
        syscalls.prctl(Prctl.PR_SET_DUMPABLE, 1)
        if os.getppid() != parent:
            os._exit(1)
    outside_uid, outside_gid = os.geteuid(), os.getegid()
    try:
        syscalls.unshare(flags)
    except SyscallError as exc:
        if exc.errno == errno.EPERM and new_user and outside_uid != 0:
            exc.hint = _userns_refused(outside_uid)
        raise
    if new_user:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {outside_uid} 1")
        _write("/proc/self/gid_map", f"0 {outside_gid} 1")
    if setup.hostname is not None:
        socket.sethostname(setup.hostname)
    if setup.offset:
        _write("/proc/self/timens_offsets", f"monotonic {setup.offset} 0\nboottime {setup.offset} 0\n")
    if CloneFlags.CLONE_NEWNS & flags and setup.propagation != "shared":
        # The new namespace's mounts are copies; private: nothing mounted here reaches the host,
        # nor the other way; slave: the host's new mounts still arrive here, ours never leave.
        how = MountFlags.MS_PRIVATE if setup.propagation == "private" else MountFlags.MS_SLAVE
        syscalls.mount(None, "/", None, MountFlags.MS_REC | how)


def _userns_refused(uid: int) -> str:
    restricted = procfs.read_text("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").strip() == "1"
    if restricted:
        return (f"AppArmor restricts user namespaces made by unprivileged processes (here uid {uid}) on this "
                "machine (kernel.apparmor_restrict_unprivileged_userns=1): such a namespace has no capabilities, "
                "so it cannot own new namespaces of other types. Ask for 'user' alone, or pass uid=None to "
                "make it as root")
    return (f"the kernel refused a user namespace to uid {uid}: unprivileged user namespaces are off "
            "(kernel.unprivileged_userns_clone=0 on some kernels), or a security module forbids them "
            "(the limit user.max_user_namespaces gives ENOSPC, not EPERM)")


def _needs_fork(flags: CloneFlags) -> bool:
    # A new pid or time namespace is for the caller's children, not the caller: the first child
    # made after unshare(2) is PID 1 of the new pid namespace, and sees the new clocks.
    return bool(flags & (CloneFlags.CLONE_NEWPID | CloneFlags.CLONE_NEWTIME))


def _as_first_process(setup: _Setup, fn, args, kwargs):
    """In the first process of the new namespaces: a /proc of its own when it has its own pid
    and mount namespaces (the old one would show the host's processes), then ``fn``."""
    flags = setup.flags
    if CloneFlags.CLONE_NEWPID & flags and CloneFlags.CLONE_NEWNS & flags and setup.propagation != "shared":
        syscalls.mount("proc", "/proc", "proc", MountFlags.MS_NOSUID | MountFlags.MS_NODEV | MountFlags.MS_NOEXEC)
    return fn(*args, **kwargs)


def _run_body(setup: _Setup, fn, args, kwargs):
    _enter_new(setup)
    if _needs_fork(setup.flags):
        return process.run_in_child(_as_first_process, setup, fn, args, kwargs, timeout=None)
    return _as_first_process(setup, fn, args, kwargs)


def run(names, fn: Callable, *args, hostname: str | None = None, uid: int | None = UNPRIVILEGED_UID,
        offset: int = 0, propagation: str = "private", cgroup: str | None = None,
        timeout: float | None = 30.0, **kwargs):
    """Call ``fn(*args, **kwargs)`` in a forked child in new namespaces ``names``, and return its
    value (it must pickle). Everything is checked before the fork.

    ``hostname``: set inside a new ``uts``. ``uid``: with a new ``user`` namespace, the child first
    becomes this uid (nobody by default), and root inside maps to it. ``offset``: seconds added to
    CLOCK_MONOTONIC and CLOCK_BOOTTIME inside a new ``time`` namespace. ``propagation``: what a new
    ``mnt`` namespace's copies of the mounts do (private, slave or shared). With new ``pid`` and
    ``mnt`` namespaces, /proc inside is a fresh one (not with shared propagation: that mount
    would reach the host's /proc too). ``cgroup``: a lab cgroup (from
    ``cgroups.create``) the child joins first; a new ``cgroup`` namespace then has it as its root.
    """
    setup = _setup_of(names, hostname, uid, offset, propagation)
    return process.run_in_child(_run_body, setup, fn, args, kwargs, timeout=timeout, cgroup=cgroup)


# --- a process that stays in its namespaces ----------------------------------------------------------

def _wait_released(ready_w: int, release_r: int) -> None:
    os.write(ready_w, f"{os.getpid()}\n".encode())
    os.close(ready_w)
    os.read(release_r, 1)            # until the parent closes its end (or dies: EOF too)


def _hold_body(setup: _Setup, ready_w: int, release_r: int) -> None:
    _enter_new(setup)
    if not _needs_fork(setup.flags):
        _wait_released(ready_w, release_r)
        return
    # The first process of the new namespaces does the waiting; its pid here (in the outer pid
    # namespace) is what the parent needs, so it is reported from this side of the fork.
    inner_r, inner_w = os.pipe()
    child = process.spawn(_as_first_process, setup, _wait_released, (inner_w, release_r), {},
                          keep_fds=(inner_w, release_r))
    os.close(inner_w)
    line = os.read(inner_r, 64)
    os.close(inner_r)
    if not line:
        child.wait(None)             # it failed: its exception comes out here
        raise LabError("the first process of the new namespaces ended before it was ready")
    os.write(ready_w, f"{child.pid}\n".encode())
    os.close(ready_w)
    child.wait(None)


@dataclass
class Held:
    """A process in its own namespaces (from :func:`hold`), asleep until :meth:`close`. It lives
    in a lab cgroup of its own: a crash of the notebook never leaves it behind."""
    pid: int
    names: tuple[str, ...]
    cgroup: str
    _child: object
    _release_w: int | None

    def ids(self) -> dict[str, int]:
        return ids(self.pid)

    @property
    def closed(self) -> bool:
        return self._release_w is None

    def close(self) -> None:
        """End the process (and whatever it started) and remove its cgroup. Idempotent."""
        if self._release_w is not None:
            os.close(self._release_w)
            self._release_w = None
            try:
                self._child.wait(10)
            except Exception:  # noqa: BLE001 - whatever it says, it is ended below
                self._child.kill()
        cgroups.remove(self.cgroup)

    def __enter__(self) -> "Held":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"pid {self.pid}"
        return f"Held({', '.join(self.names)}: {state})"


def hold(names, *, hostname: str | None = None, uid: int | None = UNPRIVILEGED_UID, offset: int = 0,
         propagation: str = "private", owner: str | None = None, timeout: float = 30.0) -> Held:
    """Start a process in new namespaces ``names`` (options as for :func:`run`) that stays there,
    asleep, until ``close()``: to look at with :func:`ids`, join with :func:`enter`, or pin."""
    setup = _setup_of(names, hostname, uid, offset, propagation)
    group = cgroups.create(f"ns-{os.getpid()}-{os.urandom(3).hex()}", owner=owner)
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()
    os.set_inheritable(release_w, False)
    try:
        child = process.spawn(_hold_body, setup, ready_w, release_r, keep_fds=(ready_w, release_r), cgroup=group)
    except BaseException:
        for fd in (ready_r, ready_w, release_r, release_w):
            os.close(fd)
        cgroups.remove(group)
        raise
    os.close(ready_w)
    os.close(release_r)
    held = Held(0, names_of(names), group, child, release_w)
    try:
        fault_point("ns-hold")
        line = _read_line(ready_r, timeout)
        if not line:
            child.wait(timeout)              # it failed: its exception is raised here
            raise LabError("the process in the new namespaces ended before it was ready")
        held.pid = int(line)
    except BaseException:
        held.close()
        raise
    finally:
        os.close(ready_r)
    return held


def _read_line(fd: int, timeout: float) -> bytes:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if not poller.poll(int(timeout * 1000)):
        raise LabError(f"the process in the new namespaces was not ready within {timeout:g} s")
    return os.read(fd, 64).strip()


# --- joining -----------------------------------------------------------------------------------------

def _join_pinned(pinned: "Pinned", names: tuple[str, ...]) -> None:
    # One namespace file at a time, the user namespace first: it owns the others, and joining it
    # gives the capabilities inside that joining them needs.
    for name in sorted(names, key=lambda n: n != "user"):
        fd = os.open(pinned.files[name], os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.setns(fd, _BY_NAME[name].flag)
        finally:
            os.close(fd)


def _enter_body(target, names: tuple[str, ...], fn, args, kwargs):
    flags = flags_of(names)
    if isinstance(target, Pinned):
        _join_pinned(target, names)
    else:
        # ``target`` is a pidfd, opened by the parent (Linux 5.8: setns takes one): the chosen
        # namespaces all at once, or none, of the very process it was opened on. Had that
        # process exited since, setns fails (ESRCH); a newcomer with its pid is never joined.
        try:
            syscalls.setns(target, flags)
        except SyscallError as exc:
            if exc.errno == errno.ESRCH:
                raise LabError("the process exited before its namespaces could be joined") from None
            raise
    if CloneFlags.CLONE_NEWNS & flags:
        os.chdir("/")                # the old working directory belongs to the old mount table
    if _needs_fork(flags):
        # Like unshare, setns into a pid or time namespace is for the caller's children.
        return process.run_in_child(fn, *args, timeout=None, **kwargs)
    return fn(*args, **kwargs)


def enter(target, names, fn: Callable, *args, timeout: float | None = 30.0, **kwargs):
    """Call ``fn(*args, **kwargs)`` inside the namespaces ``names`` of ``target`` (in a forked
    child: setns into a mount or user namespace needs a single-threaded caller) and return its
    value. ``target`` is a pid (what ``docker exec`` does to a running container) or what
    :func:`pin` returned (what ``ip netns exec`` does with a pinned network namespace)."""
    names = names_of(names)
    if isinstance(target, Pinned):
        missing = [n for n in names if n not in target.files]
        if missing:
            raise Refused(f"{target.name!r} pins no {missing[0]} namespace", hint=f"it pins: {', '.join(target.files)}")
        if not all(os.path.isfile(p) for p in target.files.values()):
            raise LabError(f"the namespaces pinned as {target.name!r} are not pinned any more (unpinned?)")
        return process.run_in_child(_enter_body, target, names, fn, args, kwargs, timeout=timeout)
    pidfd = _pidfd(_pid(target, self_ok=False))
    try:
        return process.run_in_child(_enter_body, pidfd, names, fn, args, kwargs, timeout=timeout,
                                    keep_fds=(pidfd,))
    finally:
        os.close(pidfd)


def _pidfd(pid: int) -> int:
    """A pidfd for ``pid`` (pidfd_open(2)): from now on it names that process and no other."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise LabError(f"there is no process {pid} (it exited, or never was)") from None


# --- pinning -----------------------------------------------------------------------------------------

class Pinned(NamedTuple):
    """Namespaces kept alive by bind mounts of their /proc files (from :func:`pin`)."""
    name: str
    files: dict            # type -> the file below PIN_DIR that holds it

    def __repr__(self) -> str:
        return f"Pinned({self.name}: {', '.join(f'{t} at {p}' for t, p in self.files.items())})"


def pin(pid: int, name: str, names=None, owner: str | None = None) -> Pinned:
    """Keep the namespaces ``names`` of process ``pid`` alive after it ends: bind-mount each
    /proc/PID/ns/TYPE file on PIN_DIR/NAME/TYPE (what `ip netns add` does for network
    namespaces). By default, every namespace in which ``pid`` differs from this process, but its
    pid namespace (no process can start in one whose PID 1 has gone). Each is a mount, recorded
    in the ledger; :func:`unpin` (or cleanup) removes them.

    Mount namespaces are not pinned: the kernel refuses to bind-mount a mount namespace's file
    on a shared mount, and any mount namespace not newer than the caller's (either could make a
    namespace hold itself: a loop that is never freed)."""
    pid = _pid(pid, self_ok=False)
    folder = _pin_folder(name)
    chosen = names_of(names) if names is not None else None
    if chosen and "mnt" in chosen:
        raise Refused("mount namespaces are not pinned here: the kernel refuses a mount namespace's file on a "
                      "shared mount (and /run is shared)", hint="pin the others; keep a process in the mount "
                      "namespace instead (namespaces.hold)")
    if os.path.lexists(folder):
        raise _in_use(folder)
    # A pidfd first: what is read and opened below through /proc/PID is then checked to be of
    # the process it names (still alive at the end), never of a newcomer that reused its pid.
    pidfd = _pidfd(pid)
    opened = {}
    claimed = False
    try:
        if chosen is None:
            ours, theirs = ids(), ids(pid)
            chosen = tuple(t for t in theirs if theirs[t] != ours.get(t) and t not in ("mnt", "pid"))
            if not chosen:
                raise Refused(f"process {pid} has no namespace of its own to pin (but perhaps mnt or pid)",
                              hint="name the ones to pin: pin(pid, name, names=[...])")
        for t in chosen:
            opened[t] = os.open(f"/proc/{pid}/ns/{t}", os.O_RDONLY | os.O_CLOEXEC)
        signal.pidfd_send_signal(pidfd, 0)        # still the same process: ProcessLookupError if not
        files = {}
        for t, nsfd in opened.items():
            target = f"{folder}/{t}"
            # Every record lists the folders: whichever of its mounts goes last removes them, when
            # empty (PIN_DIR too, if no other pin is left in it).
            made = [PIN_DIR, folder, target]
            with ledger().creating("mount", target, owner, data={"made": made}):
                if not claimed:
                    _claim(folder)                 # the name is ours from here: undo on failure
                    claimed = True
                _bind_file(nsfd, folder, t)
            files[t] = target
            fault_point("ns-pin")
    except BaseException as exc:
        if claimed:
            unpin(name)
        if isinstance(exc, ProcessLookupError):
            raise LabError(f"process {pid} exited while its namespaces were being pinned") from None
        raise
    finally:
        for fd in opened.values():
            os.close(fd)
        os.close(pidfd)
    return Pinned(name, files)


def _pin_folder(name) -> str:
    return marks.lab_path(f"{PIN_DIR}/{marks.plain_name(name, 'name for pinned namespaces')}", "pin namespaces at")


def _in_use(folder: str) -> Refused:
    return Refused(f"the name {os.path.basename(folder)!r} is in use ({folder} exists)",
                   hint="unpin it first, or choose another")


def _claim(folder: str) -> None:
    """Make the pin's folder, or fail if it exists: two pins of one name at once never share it
    (nor does the loser, failing, unpin the winner's)."""
    for attempt in range(3):
        try:
            dfd = marks.open_lab_dir(PIN_DIR, create=True)
            break
        except FileNotFoundError:
            # Another pin's last unpin removed PIN_DIR, empty, between our mkdir and openat:
            # make it again.
            if attempt == 2:
                raise
    try:
        os.mkdir(os.path.basename(folder), 0o755, dir_fd=dfd)
    except FileExistsError:
        raise _in_use(folder) from None
    finally:
        os.close(dfd)


def _bind_file(source_fd: int, folder: str, name: str) -> None:
    """Bind-mount the file open as ``source_fd`` on a new empty file ``folder/name``, reached
    without following a symlink (the mount is made on /proc/self/fd of the file we made)."""
    dfd = marks.open_lab_dir(folder)
    try:
        mounts.bind_file(dfd, name, f"/proc/self/fd/{source_fd}")
    finally:
        os.close(dfd)


def unpin(name: str) -> None:
    """Let the namespaces pinned as ``name`` go (each vanishes when no process is in it)."""
    folder = _pin_folder(name)
    if not os.path.isdir(folder):
        return
    for entry in sorted(os.listdir(folder)):
        unmount(f"{folder}/{entry}")
    for empty in (folder, PIN_DIR):            # what the records did not remove (a failed pin's)
        try:
            os.rmdir(empty)
        except OSError:
            pass

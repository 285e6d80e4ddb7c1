"""Named network namespaces, made the way `ip netns add` makes them, and sockets inside them.

A network namespace is a whole network stack: its own interfaces, addresses, routes, firewall
and port numbers. One exists as long as something holds it: a process in it, an open file of it
(/proc/PID/ns/net), a socket made in it, or a bind mount of that file. `ip netns add NAME`
creates one with unshare(CLONE_NEWNET) and keeps it by bind-mounting /proc/self/ns/net on
/run/netns/NAME; `ip netns del` unmounts and removes that file, and the kernel frees the stack
once nothing else holds it.

The notebook's kernel must never change its own namespaces (it is threaded, and everything the
learner runs next would be in the new one). So the unshare and setns happen in a helper: a child
forked once, single-threaded, that waits for requests on a socket pair. It makes a namespace and
returns to its own, or enters one just long enough to create a socket there, and passes the
socket back (SCM_RIGHTS). A socket stays in the namespace it was created in, so the notebook
then talks to that namespace's stack through it (rtnl.py). One fork, then a message per step:
forking per step would cost about 2 ms each, four times `ip netns add`.

The helper dies with its parent (PR_SET_PDEATHSIG) and when its socket closes; it holds no
namespace between requests, so it is never what keeps one alive.
"""
from __future__ import annotations

import errno
import os
import pickle
import signal
import socket
import threading
import time

from .. import marks, syscalls
from ..errors import LabError, Refused
from ..flags import CloneFlags, MountFlags, UmountFlags
from ..mounts import detach
from ..process import Child, spawn
from ..registry import fault_point, ledger

__all__ = ["full_name", "create", "remove", "exists", "names", "require", "open_ns", "socket_in", "rtnl_in"]


def full_name(name) -> str:
    """The namespace's name under /run/netns: ``lh-NAME`` (``NAME`` may carry the prefix already).
    Refused before any kernel call: empty, ``.``, ``..``, ``/``, NUL, newline, shell characters."""
    if isinstance(name, str) and name.startswith(marks.PREFIX):
        name = name[len(marks.PREFIX):]
    marks.plain_name(name, "network namespace name")
    return marks.netns_name(marks.PREFIX + name)


def path_of(name) -> str:
    return os.path.join(marks.NETNS_DIR, full_name(name))


def exists(name) -> bool:
    return os.path.lexists(path_of(name))


def names() -> list[str]:
    """The lab's named network namespaces, as ``lh-...`` names."""
    try:
        return sorted(n for n in os.listdir(marks.NETNS_DIR) if n.startswith(marks.PREFIX))
    except FileNotFoundError:
        return []


def require(name) -> str:
    """``name``'s full name, if that namespace exists; Refused otherwise."""
    os.close(open_ns(name))
    return full_name(name)


def open_ns(name) -> int:
    """An fd of the namespace ``name`` (O_NOFOLLOW: /run/netns/lh-x must be the nsfs file itself)."""
    path = path_of(name)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise Refused(f"there is no network namespace {full_name(name)!r} ({path} does not exist)",
                      hint="make it first: network.create(...)") from None


# --- the helper ---------------------------------------------------------------------------------

def _serve(fd: int) -> None:
    """The helper's loop (in the forked child). Each request is (seq, op, args) with fds; each
    answer (seq, ok, value) with fds."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the notebook's interrupts are for the notebook
    conn = socket.socket(fileno=fd)
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 4)
        except ConnectionResetError:
            return
        if not data:
            return                              # the parent closed its end: done
        seq, op, args = pickle.loads(data)
        out: list[int] = []
        try:
            if op == "create":
                _make(args[0], home)
                value = None
            elif op == "socket":
                out = [_socket_in(fds[0], home, *args)]
                value = None
            else:
                raise ValueError(f"unknown request {op!r}")
            answer = (seq, True, value)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
            answer = (seq, False, exc)
        finally:
            for f in fds:
                os.close(f)
        try:
            socket.send_fds(conn, [pickle.dumps(answer)], out)
        finally:
            for f in out:
                os.close(f)


def _shared_netns_dir() -> None:
    # As `ip netns add` does: /run/netns is a mount point with shared propagation, so that a
    # namespace's mount made or removed here is made or removed in every mount namespace that
    # copied this one (otherwise a copy would hold the namespace alive after we delete it).
    os.makedirs(marks.NETNS_DIR, mode=0o755, exist_ok=True)
    try:
        syscalls.mount("none", marks.NETNS_DIR, None, MountFlags.MS_SHARED | MountFlags.MS_REC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:           # EINVAL: not a mount point yet
            raise
        syscalls.mount(marks.NETNS_DIR, marks.NETNS_DIR, None, MountFlags.MS_BIND | MountFlags.MS_REC)
        syscalls.mount("none", marks.NETNS_DIR, None, MountFlags.MS_SHARED | MountFlags.MS_REC)


_prepared = False


def _make(name: str, home: int) -> None:
    """In the helper: a new network namespace kept at /run/netns/NAME. The helper is back in its
    own namespace afterwards, success or not."""
    global _prepared
    path = os.path.join(marks.NETNS_DIR, name)
    if not _prepared:                         # once per helper: a recursive propagation change
        _shared_netns_dir()                   # walks every mount below /run/netns
        _prepared = True
    # O_EXCL: the name is claimed atomically; a namespace of that name (ours or anyone's) is left alone.
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
    except FileExistsError:
        raise Refused(f"a network namespace named {name!r} exists already ({path})",
                      hint="choose another name, or remove the old one (network.remove, or `labhelper cleanup` "
                           "for what is left of an earlier run)") from None
    mounted = False
    try:
        syscalls.unshare(CloneFlags.CLONE_NEWNET)
        # thread-self, not self: the nsfs file of *this thread's* namespace (the helper has one thread).
        syscalls.mount("/proc/thread-self/ns/net", path, None, MountFlags.MS_BIND)
        mounted = True
    except BaseException:
        if mounted:
            syscalls.umount2(path, UmountFlags.MNT_DETACH)
        os.unlink(path)
        raise
    finally:
        syscalls.setns(home, CloneFlags.CLONE_NEWNET)


def _socket_in(nsfd: int, home: int, family: int, kind: int, proto: int) -> int:
    """In the helper: a socket created inside the namespace ``nsfd``."""
    syscalls.setns(nsfd, CloneFlags.CLONE_NEWNET)
    try:
        return socket.socket(family, kind | socket.SOCK_CLOEXEC, proto).detach()
    finally:
        syscalls.setns(home, CloneFlags.CLONE_NEWNET)


class _Helper:
    """The parent's side: one helper per process (a forked child gets its own)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.pid = None
        self.conn: socket.socket | None = None
        self.child: Child | None = None
        self.seq = 0

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            self.child = spawn(_serve, theirs.fileno(), keep_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        self.conn, self.pid = ours, os.getpid()

    def call(self, op: str, *args, fds: tuple[int, ...] = ()) -> tuple[object, list[int]]:
        with self.lock:
            if self.pid != os.getpid() or self.conn is None:
                self._start()
            self.seq += 1
            seq = self.seq
            try:
                socket.send_fds(self.conn, [pickle.dumps((seq, op, args))], list(fds))
            except OSError as exc:        # the helper died (killed?): start another next time
                self.conn = None
                self.child.kill()          # reap it (idempotent)
                raise LabError(f"the network helper (pid {self.child.pid}) is gone: {exc}",
                               hint="run the cell again: a new helper starts") from None
            return self._answer(seq)

    def _answer(self, seq: int):
        # An interrupt (Ctrl-C) must not separate a request from its answer: the helper finishes
        # a step in well under a second, and the caller must know whether the object exists to
        # undo it. So the answer is awaited, then the interrupt is raised.
        interrupted = None
        deadline = time.monotonic() + 10
        while True:
            try:
                data, got, _, _ = socket.recv_fds(self.conn, 1 << 16, 4)
                if not data:
                    self.conn = None
                    raise LabError("the network helper ended before it answered",
                                   hint="run the cell again: a new helper starts")
                their_seq, ok, value = pickle.loads(data)
                if their_seq != seq:      # the answer to a request abandoned earlier
                    for f in got:
                        os.close(f)
                    continue
                break
            except KeyboardInterrupt as exc:
                interrupted = exc
                if time.monotonic() > deadline:
                    raise
        if interrupted is not None:
            for f in got:
                os.close(f)
            raise interrupted
        if not ok:
            raise value
        return value, got


_helper = _Helper()


# --- the public side -------------------------------------------------------------------------------

def create(name, owner: str | None = None) -> str:
    """Make the named network namespace ``lh-NAME``: recorded in the ledger first, then made by
    the helper (unshare + bind mount, as `ip netns add`). Returns its full name."""
    full = full_name(name)
    with ledger().creating("netns", full, owner):
        _create(full)
    fault_point("netns")
    return full


def _create(full: str) -> None:
    """Make it. Interrupted after the helper made it, the namespace is removed again before the
    interrupt goes on."""
    try:
        _helper.call("create", full)
    except KeyboardInterrupt:
        _unmake(full)
        raise


def _unmake(full: str) -> None:
    path = os.path.join(marks.NETNS_DIR, full)
    detach(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove(name, the_ledger=None) -> None:
    """Remove the named namespace ``lh-NAME`` (idempotent). Its interfaces go with it once nothing
    else holds it: a veth whose other end is elsewhere disappears at both ends."""
    full = full_name(name)
    with (the_ledger or ledger()).removing("netns", full):
        _unmake(full)


def socket_in(name, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM, proto: int = 0) -> socket.socket:
    """A socket created inside the namespace ``name``, usable here: it binds, connects and
    listens in that namespace's stack. (It holds the namespace alive until it is closed.)"""
    nsfd = open_ns(name)
    try:
        _, fds = _helper.call("socket", family, kind, proto, fds=(nsfd,))
    finally:
        os.close(nsfd)
    return socket.socket(fileno=fds[0])


def rtnl_in(name):
    """An rtnetlink conversation (rtnl.Rtnl) with the namespace ``name`` (None: this process's own)."""
    from . import rtnl          # pyroute2: only when a conversation is needed (census never does)
    if name is None:
        return rtnl.Rtnl.here("host")
    sock = socket_in(name, socket.AF_NETLINK, socket.SOCK_RAW, rtnl.NETLINK_ROUTE)
    rtnl.prepare(sock)
    return rtnl.Rtnl(sock, full_name(name))

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

The helper dies with its parent (PR_SET_PDEATHSIG, tied to the thread that forked it: the
notebook's main thread) and when its socket closes; it holds no namespace between requests, so
it is never what keeps one alive. A notebook interrupt never separates a request from its
answer: it is held back for the millisecond a step takes, then raised.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pickle
import signal
import socket
import threading

from .. import marks, syscalls
from ..errors import LabError, Refused
from ..flags import CloneFlags, MountFlags, UmountFlags
from ..mounts import detach
from ..process import Child, spawn
from ..registry import fault_point, ledger

__all__ = ["full_name", "create", "remove", "exists", "names", "require", "open_ns", "socket_in", "socket_at", "rtnl_in"]


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


@contextlib.contextmanager
def _interrupts_deferred():
    """Hold a notebook interrupt (SIGINT) back while the block runs, then raise it.

    A request to the helper and its answer must never be separated: an interrupt landing just
    after sendmsg(2) or recvmsg(2) returned would lose the answer (and the socket it carries,
    which keeps a namespace alive) or leave a namespace the caller does not know it has. Only
    the main thread receives signals, so only there is there anything to defer."""
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield pending
    finally:
        signal.signal(signal.SIGINT, previous)


class _Helper:
    """The parent's side: one helper per process (a forked child gets its own).

    The helper dies with the thread that started it (PR_SET_PDEATHSIG follows the forking
    thread): in a notebook that is the kernel's main thread, which lives as long as the kernel."""

    ANSWER_TIMEOUT = 30.0          # a step takes a millisecond; a helper this late is stuck

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
        ours.settimeout(self.ANSWER_TIMEOUT)
        self.conn, self.pid = ours, os.getpid()

    def forget(self) -> None:
        """In a forked child: the helper and its connection are the parent's. The child's
        socket object still names the parent's fd number, which the child may close (spawn's
        close_fds) and then reuse for another file; closing that object later (a new helper
        replacing it, or the garbage collector) would close that other file. So the number is
        detached, never closed, and a helper of the child's own starts when it is needed."""
        if self.conn is not None:
            self.conn.detach()
        self.conn, self.child, self.pid = None, None, None

    def _gone(self, why: str) -> LabError:
        # Close our end and reap the helper: the next call starts a new one.
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.child is not None:
            self.child.kill()
        return LabError(f"the network helper {why}", hint="run the cell again: a new helper starts")

    def call(self, op: str, *args, fds: tuple[int, ...] = (), undo=None) -> tuple[object, list[int]]:
        """Send one request and wait for its answer: (value, fds received). ``undo(value)`` is
        called if the request succeeded but an interrupt arrived meanwhile; then the interrupt
        is raised."""
        with self.lock, _interrupts_deferred() as pending:
            if self.pid != os.getpid():
                self.forget()               # a fork's copy (at-fork did it already, as a rule)
            if self.conn is None:
                self._start()
            self.seq += 1
            seq = self.seq
            try:
                socket.send_fds(self.conn, [pickle.dumps((seq, op, args))], list(fds))
                ok, value, got = self._answer(seq)
            except (OSError, EOFError) as exc:       # dead, stuck (timeout) or garbled
                raise self._gone(f"(pid {self.child.pid}) failed: {exc}") from None
        if pending:
            for f in got:
                os.close(f)
            if ok and undo is not None:
                undo(value)
            raise KeyboardInterrupt
        if not ok:
            raise value
        return value, got

    def _answer(self, seq: int):
        while True:
            data, got, _, _ = socket.recv_fds(self.conn, 1 << 16, 4)
            if not data:
                raise EOFError("it ended before it answered")
            their_seq, ok, value = pickle.loads(data)
            if their_seq == seq:
                return ok, value, got
            for f in got:                  # the answer to a request abandoned earlier
                os.close(f)


_helper = _Helper()
os.register_at_fork(after_in_child=_helper.forget)


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
    """Make it. Interrupted while the helper made it, the namespace is removed again before the
    interrupt goes on (and never one the helper did not make: a name in use is left alone)."""
    _helper.call("create", full, undo=lambda _: _unmake(full))


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
        return socket_at(nsfd, family, kind, proto)
    finally:
        os.close(nsfd)


def socket_at(nsfd: int, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM, proto: int = 0) -> socket.socket:
    """A socket created inside the network namespace open at ``nsfd`` (a /proc/PID/ns/net of a
    container's process: a namespace without a name)."""
    _, fds = _helper.call("socket", family, kind, proto, fds=(nsfd,))
    return socket.socket(fileno=fds[0])


def rtnl_in(name):
    """An rtnetlink conversation (rtnl.Rtnl) with the namespace ``name`` (None: this process's own)."""
    from . import rtnl          # pyroute2: only when a conversation is needed (census never does)
    if name is None:
        return rtnl.Rtnl.here("host")
    sock = socket_in(name, socket.AF_NETLINK, socket.SOCK_RAW, rtnl.NETLINK_ROUTE)
    try:
        rtnl.prepare(sock)
    except BaseException:
        sock.close()               # an open socket would keep the namespace alive
        raise
    return rtnl.Rtnl(sock, full_name(name))

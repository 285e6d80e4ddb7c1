"""Run a Python function in a forked child and bring back its value or its exception.

Why a child? A Jupyter kernel is multi-threaded (it talks ZeroMQ on other threads), and the
kernel refuses some namespace changes in a threaded process (unshare(CLONE_NEWUSER) and setns
into a user or mount namespace fail with EINVAL). Others would change the notebook kernel itself
for good. So every isolation step happens in a fresh single-threaded child made by fork(2):

    parent (notebook kernel)            child (one thread, copy of the parent)
    ------------------------            --------------------------------------
    fork() ---------------------------> prctl(PR_SET_PDEATHSIG, SIGKILL): die with the parent
                                        prctl(PR_SET_CHILD_SUBREAPER): orphans it makes come back to it
                                        close inherited fds it does not need
                                        unshare(flags), if asked
                                        value = fn(*args)
    read the result pipe <------------- pickle(("ok", value, output)) | pickle(("err", exc, ...))
                                        SIGKILL whatever it started that still runs
    waitpid()                           _exit()

What the child prints is captured and printed again by the parent, so it shows in the notebook.
"""
from __future__ import annotations

import array
import contextlib
import gc
import io
import math
import os
import pickle
import select
import signal
import socket
import sys
import time
import traceback
import warnings
from dataclasses import dataclass

from . import marks, procfs, syscalls
from .errors import ChildError, ChildTimeout
from .flags import CloneFlags, Prctl

__all__ = ["run_in_child", "spawn", "ForkServer", "FirstProcess", "fork_server", "stop_fork_server", "Child", "is_same_process", "RemoteTraceback", "close_fds", "lifetime_pid", "own_lifetime",
           "find_processes", "remove_process"]

# In a child made by spawn(): the pid of the process whose life the child's work belongs to (the
# notebook kernel). The ledger records it as the creator, so an object a short-lived child made
# is not mistaken for an orphan once the child has exited.
_lifetime_pid: int | None = None


def lifetime_pid() -> int:
    return _lifetime_pid or os.getpid()


def own_lifetime() -> None:
    """From now on, what this process makes belongs to its own life, not its parent's: for a
    daemon that outlives the notebook kernel that started it (a detached container's supervisor)."""
    global _lifetime_pid
    _lifetime_pid = os.getpid()


class RemoteTraceback(Exception):
    """Carries the child's traceback text; attached as __cause__ of the re-raised exception."""

    def __str__(self) -> str:
        return self.args[0]


def is_same_process(pid: int, started: int | None, proc: str = "/proc") -> bool:
    """True if ``pid`` is alive and is the process that started at ``started`` (not a reuse).

    A pid alone does not name a process for long: the kernel reuses pids. (pid, start time) does.
    """
    return started is not None and procfs.start_time(pid, proc) == started


_MAX_FD = 2 ** 31 - 1


def close_fds(keep: set[int]) -> None:
    # A child inherits every fd without O_CLOEXEC: ZeroMQ sockets of the Jupyter kernel, /dev/kvm,
    # netlink sockets. Close them so nothing leaks into what the child runs or execs.
    # os.closerange uses close_range(2) where the kernel has it: one call per gap, no /proc scan,
    # and its cost does not depend on the bound. The bound is the largest fd number there can
    # be (an int), not a guess such as 1 << 20: fs.nr_open may be raised above that.
    low = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _MAX_FD)


def _child_main(write_fd: int, parent_pid: int, fn, args, kwargs, unshare: CloneFlags,
                keep_fds: set[int], gate_fd: int | None, cgroup: str | tuple[str, ...] | None) -> None:
    """Runs in the child and never returns (os._exit)."""
    # Move every inherited object out of the garbage collector's sight: a collection would
    # touch (and so copy, page by page) the whole parent heap that fork shares copy-on-write.
    gc.freeze()
    global _lifetime_pid
    _lifetime_pid = _lifetime_pid or parent_pid
    status = 1
    out = io.StringIO()
    try:
        # Die if the parent dies (a Jupyter restart SIGKILLs the kernel). PDEATHSIG is reset by
        # fork, so set it here; then check the parent did not already die before we set it.
        syscalls.prctl(Prctl.PR_SET_PDEATHSIG, signal.SIGKILL)
        # getppid() is 0 in the first process of a new pid namespace (its parent is outside):
        # then the check cannot be made; otherwise another ppid means the parent is gone.
        if os.getppid() not in (parent_pid, 0):
            os._exit(1)
        # A subreaper: a process this child starts that is orphaned (its parent exits, or it
        # daemonizes) is given to this child, not to PID 1, so the child can end it (below).
        syscalls.prctl(Prctl.PR_SET_CHILD_SUBREAPER, 1)
        if cgroup is not None:
            # Join the lab cgroup before anything else runs: every process this child starts is
            # born inside, where cleanup finds it even if PDEATHSIG does not reach it. (On cgroup
            # v1 a group is a folder in each controller's hierarchy: it joins them all.)
            for folder in (cgroup,) if isinstance(cgroup, str) else cgroup:
                with open(os.path.join(marks.cgroup_path(folder), "cgroup.procs"), "w") as fh:
                    fh.write(f"{os.getpid()}\n")
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            # A notebook interrupt (SIGINT to the process group) becomes KeyboardInterrupt here too.
            signal.signal(signal.SIGINT, signal.default_int_handler)
        close_fds({write_fd, *keep_fds} | ({gate_fd} if gate_fd is not None else set()))
        sys.stdout = sys.stderr = out
        if gate_fd is not None:
            # Wait until the parent says go (e.g. after attaching strace), or it went away.
            if not os.read(gate_fd, 1):
                os._exit(1)
            os.close(gate_fd)
        if unshare:
            syscalls.unshare(unshare)
        value = fn(*args, **kwargs)
        message = ("ok", value, out.getvalue())
        status = 0
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        message = ("err", exc, out.getvalue(), traceback.format_exc())
    try:
        payload = pickle.dumps(message)
        if message[0] == "err":
            # An exception can pickle and still fail to unpickle (an __init__ with two required
            # arguments: pickle calls it again with args only). Try here, where the text of the
            # real error is still at hand, rather than hand the parent a TypeError instead.
            pickle.loads(payload)
    except Exception as exc:  # the value or exception cannot be sent as it is: say so instead
        if message[0] == "err":
            payload = pickle.dumps(("err", ChildError(_describe(message[1])), out.getvalue(), message[3]))
        else:
            payload = pickle.dumps(("err", ChildError(f"the child's result could not be sent back: {exc!r} "
                                                     f"(result: {_safe_repr(message[1])})"), out.getvalue(), ""))
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(write_fd, view):]
    finally:
        try:
            _end_descendants()
        finally:
            os._exit(status)


def _end_descendants(rounds: int = 100) -> None:
    """In the child, at its end: SIGKILL whatever it started that still runs, and reap it.

    Everything it started is its child, or was reparented to it (it is a subreaper), so its
    children are all there is; killing them reparents their own children to it, one level at a
    time. Nothing it started outlives it, and no forked helper keeps the answer's pipe open.
    """
    for _ in range(rounds):
        left = procfs.children()
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)    # our child: a zombie or alive, never someone else's
            except ProcessLookupError:
                pass
        for pid in left:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def _safe_repr(value) -> str:
    try:
        return f"{value!r:.200}"
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real problem
        return f"<{type(value).__name__}>"


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001
        text = "<its message could not be printed>"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _pin_descendants(pid: int, limit: int = 4096) -> list[int]:
    """pidfds of every live descendant of ``pid`` (children first)."""
    pinned, todo = [], procfs.children(pid)
    while todo and len(pinned) < limit:
        here = todo.pop(0)
        try:
            pinned.append(os.pidfd_open(here))
        except (ProcessLookupError, OSError):
            continue
        todo += procfs.children(here)
    return pinned


@dataclass
class Child:
    """A forked child running a function. Use :meth:`wait` to get its value.

    ``gate=True`` children wait for :meth:`release` before they start (to attach a tracer first).
    Until it is reaped the pid cannot be reused (a zombie keeps it), so the pid is enough here.
    """
    pid: int
    _read_fd: int
    _gate_fd: int | None
    _name: str
    _done: bool = False

    def fileno(self) -> int:
        """Readable once the child answers (or ends): for a poll loop with other work meanwhile
        (a container's port proxy); then :meth:`wait` reads the answer."""
        return self._read_fd

    def release(self) -> None:
        if self._gate_fd is not None:
            os.write(self._gate_fd, b"g")
            os.close(self._gate_fd)
            self._gate_fd = None

    def kill(self) -> None:
        """SIGKILL the child, and what it started, and reap it (idempotent).

        What it started is found first (its descendants, pinned by pidfds so that a pid reused
        meanwhile is never hit), then the child is killed (it forks no more), then they are."""
        if self._done:
            return
        pinned = _pin_descendants(self.pid)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for fd in pinned:
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            finally:
                os.close(fd)
        self._reap()

    def _reap(self) -> int:
        self._done = True
        for fd in (self._read_fd, self._gate_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._gate_fd = None
        while True:
            try:
                _, status = os.waitpid(self.pid, 0)
                return status
            except ChildProcessError:
                return 0
            except InterruptedError:
                continue

    def wait(self, timeout: float | None = 30.0):
        """Return the function's value, or raise its exception (with the child's traceback as
        __cause__). Kills the child on timeout (ChildTimeout) and on KeyboardInterrupt."""
        if self._done:
            raise ChildError(f"child {self._name} (pid {self.pid}) was already waited for")
        self.release()
        chunks = []
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self.kill()
                    raise ChildTimeout(f"{self._name} did not finish within {timeout:g} s; the child "
                                       f"(pid {self.pid}) was killed",
                                       hint="pass a larger timeout=, or look for a step that blocks")
                # poll, not select: select() cannot watch an fd numbered 1024 or more, and a
                # notebook kernel holding many files gets such numbers.
                ready = poller.poll(None if left is None else max(1, math.ceil(left * 1000)))
                if ready:
                    data = os.read(self._read_fd, 1 << 16)
                    if not data:
                        break
                    chunks.append(data)
        except BaseException:
            # KeyboardInterrupt (a notebook interrupt) or anything else: leave no child behind.
            self.kill()
            raise
        status = self._reap()
        return self._result(b"".join(chunks), status)

    def _result(self, payload: bytes, status: int):
        if not payload:
            if os.WIFSIGNALED(status):
                sig = signal.Signals(os.WTERMSIG(status)).name
                raise ChildError(f"{self._name} (pid {self.pid}) was killed by {sig} before it answered",
                                 hint="SIGKILL comes from a kill, a timeout or the OOM killer (see dmesg)")
            raise ChildError(f"{self._name} (pid {self.pid}) exited with status "
                             f"{os.waitstatus_to_exitcode(status)} without an answer")
        try:
            message = pickle.loads(payload)
            kind = message[0]
        except Exception as exc:  # noqa: BLE001 - a cut-short or garbled answer
            if os.WIFSIGNALED(status):
                sig = signal.Signals(os.WTERMSIG(status)).name
                raise ChildError(f"{self._name} (pid {self.pid}) was killed by {sig} while it was sending "
                                 f"its answer ({len(payload)} bytes arrived)",
                                 hint="SIGKILL comes from a kill, a timeout or the OOM killer (see dmesg)") from None
            raise ChildError(f"{self._name} (pid {self.pid}) sent an answer that cannot be read: "
                             f"{type(exc).__name__}: {exc}") from None
        if message[2]:
            print(message[2], end="")
        if kind == "ok":
            return message[1]
        exc = message[1]
        if len(message) > 3 and message[3]:
            exc.__cause__ = RemoteTraceback(f"in the child (pid {self.pid}):\n{message[3]}")
        raise exc


def spawn(fn, *args, unshare: CloneFlags | int = 0, keep_fds: tuple[int, ...] = (),
          gate: bool = False, cgroup: str | tuple[str, ...] | None = None, **kwargs) -> Child:
    """Fork a child that runs ``fn(*args, **kwargs)`` (after ``unshare(flags)`` if given).

    ``cgroup``: a lab cgroup's folder (or several: one per v1 hierarchy) that the child joins
    before it runs anything.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process: call
    spawn() from a thread that outlives the child. A notebook's cells run on the kernel's main
    thread (ipykernel 7), which lives as long as the kernel; run_in_child waits in the thread
    that forked, so it is always safe."""
    unshare = CloneFlags(unshare)
    name = getattr(fn, "__qualname__", repr(fn))
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    gate_r = gate_w = None
    if gate:
        gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
    parent_pid = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    with warnings.catch_warnings():
        # Python 3.12 warns that fork() in a threaded process may deadlock. The child only runs
        # our code, single-threaded, and this is exactly the point of forking here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        if gate_w is not None:
            os.close(gate_w)
        _child_main(write_fd, parent_pid, fn, args, kwargs, unshare, set(keep_fds), gate_r, cgroup)
    os.close(write_fd)
    if gate_r is not None:
        os.close(gate_r)
    return Child(pid, read_fd, gate_w, name)


# The first process of a new PID namespace (its PID 1), and a child of the server's parent.
_FIRST_PROCESS = CloneFlags.CLONE_NEWPID | CloneFlags.CLONE_PARENT


class ForkServer:
    """A copy of this process that makes the first process of each new PID namespace for it:
    what a container's start needs (runtime.py), without this process forking at all.

    Why not fork here? After fork(2) every page of this process is shared copy-on-write with the
    child, and the first write to each one here costs a page fault and a copy (about 2 µs under
    kvm_pvm): a container's start then paid for some 650 of them in the runtime, a millisecond
    and a half, besides the fork's own millisecond. The server is forked once; from then on it
    forks, and the faults are its own (a few: it only waits and answers), while this process
    carries on at once (a runtime makes the container's cgroup meanwhile).

        this process                          the server (forked once)
        start_first(fn, args, fds) ---------> clone(CLONE_NEWPID | CLONE_PARENT) --> fn(fds, *args)
          (the fds travel with SCM_RIGHTS)      PID 1 of a new PID namespace, whose parent is
        ... other work ...                      *this* process (CLONE_PARENT): it is reaped,
        pid() <------------------------------   signalled and read here, as if forked here
                                                  (pidfd, waitpid, SIGCHLD, PR_SET_PDEATHSIG)

    runc and crun make their init with clone(CLONE_NEWPID) too; a Python process can only do it
    in a single-threaded process (syscalls.clone), which the server is and a Jupyter kernel is
    not. So nothing in the notebook kernel changes namespace, not even for its next child.

    What the child gets from the server rather than from this process: the server's memory, as
    it was when the server was forked (the code it runs is that code: a module changed here
    later is not seen there) less its shared mappings (the server unmaps them), its current
    folder and its limits. Its fds 0, 1 and 2 are this
    process's, sent with each request. The server dies with this process (PR_SET_PDEATHSIG: with
    the thread that started it, as spawn()'s children do), ends when its socket closes, or is
    ended by :meth:`close`; a forked child of this process forgets it (an at-fork hook) and
    starts its own when it needs one.
    """

    def __init__(self) -> None:
        here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        parent, lifetime = os.getpid(), lifetime_pid()
        sys.stdout.flush()
        sys.stderr.flush()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)     # as in spawn()
                pid = os.fork()
            if pid == 0:
                try:
                    _serve(there.detach(), parent, lifetime, mask)
                finally:
                    os._exit(0)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        there.close()
        self.pid, self.owner, self._sock = pid, parent, here

    def start_first(self, fn, args: tuple, fds: dict[str, int]) -> "FirstProcess":
        """Ask for the first process of a new PID namespace, running ``fn(fds_there, *args)``
        (``fds_there``: ``fds`` by the same names, as numbers in the child; it must pickle by
        reference: a module-level function). Returns at once: :meth:`FirstProcess.pid` waits
        for the answer. The caller may close its own copies of ``fds`` once this returns."""
        names = list(fds)
        std = [fd for fd in (0, 1, 2) if _is_open(fd)]
        payload = pickle.dumps((fn, args, names, std))
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            socket.send_fds(self._sock, [payload], [fds[n] for n in names] + std)
        except OSError as exc:
            self.close()
            raise ChildError(f"the fork server (pid {self.pid}) is gone: {exc}",
                             hint="it died with the thread that started it; the next request starts another") from None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return FirstProcess(self)

    def _answer(self, timeout: float) -> tuple[str, object]:
        ready = select.poll()
        ready.register(self._sock, select.POLLIN)
        if not ready.poll(int(timeout * 1000)):
            raise ChildTimeout(f"the fork server (pid {self.pid}) did not answer within {timeout:g} s")
        said = self._sock.recv(4096)
        if not said:
            raise ChildError(f"the fork server (pid {self.pid}) ended without answering")
        return pickle.loads(said)

    def alive(self) -> bool:
        """Whether it still serves this process (not if it died, or this is a forked child)."""
        if self._sock.fileno() < 0 or os.getpid() != self.owner:
            return False
        try:
            ended = os.waitpid(self.pid, os.WNOHANG)[0]
        except ChildProcessError:
            ended = self.pid
        if ended:
            self._sock.close()
            return False
        return True

    def close(self) -> None:
        """End the server and reap it (idempotent). It holds nothing of its own, so it is
        killed rather than asked: close() never waits on a server that does not answer."""
        if self._sock.fileno() >= 0:
            self._sock.close()
            if os.getpid() == self.owner:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pid, 0)


class FirstProcess:
    """A request to the fork server: :meth:`pid` is its answer; :meth:`abandon` kills and reaps
    what it made unless :meth:`pid` was taken (an undo: idempotent)."""

    def __init__(self, server: ForkServer) -> None:
        self._server, self._pid, self._error = server, None, None

    def pid(self, timeout: float = 30.0) -> int:
        """The child's pid (it is this process's child); a failure to make it is raised here."""
        if self._error is not None:
            raise self._error
        if self._pid is None:
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                kind, value = self._server._answer(timeout)
            except BaseException:
                # Its answer is lost or late: a later request must not read it as its own.
                self._server.close()
                raise
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if kind == "err":
                self._error = value
                raise value
            self._pid = value
        return self._pid

    def abandon(self) -> None:
        if self._pid is not None or self._error is not None:
            return                  # taken by the caller, or nothing was made
        try:
            pid = self.pid()
        except Exception:          # noqa: BLE001 - nothing was made, or the server is gone
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _serve(sock: int, parent: int, lifetime: int, mask) -> None:
    """The fork server's life (never returns): one request, one clone, one answer."""
    global _lifetime_pid
    _lifetime_pid = lifetime
    # A terminal's Ctrl-C reaches the whole process group: the process it serves decides. Then
    # SIGINT is unblocked again (a signal mask survives execve: a container's command must not
    # inherit one blocked).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    syscalls.prctl(Prctl.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        return
    close_fds({sock})
    _unmap_shared()
    for fd in (0, 1, 2):
        # Never a number below 3 free: a received fd would land there, and the child's dup2()
        # onto 0, 1 and 2 would overwrite it. (open() takes the lowest free number: this one.)
        if not _is_open(fd):
            os.open(os.devnull, os.O_RDWR)
    # Its heap, as forked, out of the collector's sight: a collection would touch every page.
    gc.freeze()
    conn = socket.socket(fileno=sock)
    while True:
        try:
            payload, fds = _receive(conn)
        except OSError:
            return
        if not payload:
            return                          # the process it served closed its end, or ended
        try:
            fn, args, names, std = pickle.loads(payload)
            # No Python bookkeeping around this clone: this process is single-threaded, and the
            # child only prepares a program and executes it (syscalls.clone says what it spares).
            pid = syscalls.clone(_FIRST_PROCESS, bookkeeping=False)
            if pid == 0:
                try:
                    conn.detach()
                    os.close(sock)
                    for want, fd in zip(std, fds[len(names):]):
                        os.dup2(fd, want)
                        os.close(fd)
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                    fn(dict(zip(names, fds)), *args)
                finally:
                    os._exit(125)
            answer = ("ok", pid)
        except BaseException as exc:     # noqa: BLE001 - told to the caller, who raises it
            answer = ("err", exc if _pickles(exc) else ChildError(f"{type(exc).__name__}: {exc}"))
        for fd in fds:
            os.close(fd)
        try:
            conn.send(pickle.dumps(answer))
        except OSError:
            return


def _unmap_shared() -> None:
    """Unmap every shared mapping inherited from the process served. Its VMs' memory and
    kvm_run pages are gone already (kvm.fds closes them in every forked child); this is for the
    rest, such as shared memory a notebook mapped, which a long-lived copy would otherwise keep
    in use. The server and its children never use them (Python's own memory is private)."""
    with open("/proc/self/maps") as maps:
        shared = [line.split()[0] for line in maps if line.split()[1].endswith("s")]
    for span in shared:
        start, end = (int(x, 16) for x in span.split("-"))
        syscalls.munmap(start, end - start)


def _receive(conn: socket.socket) -> tuple[bytes, list[int]]:
    """A request and its fds, each O_CLOEXEC as on the pipes they came from (an error pipe
    tells its reader that the child executed its command by closing at execve). Not with
    socket.recv_fds: it drops its flags argument (Python 3.11 and 3.12)."""
    fds = array.array("i")
    payload, ancillary, _, _ = conn.recvmsg(1 << 20, socket.CMSG_LEN(64 * fds.itemsize), socket.MSG_CMSG_CLOEXEC)
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    return payload, list(fds)


def _pickles(value) -> bool:
    try:
        pickle.dumps(value)
        return True
    except Exception:          # noqa: BLE001
        return False


_server: ForkServer | None = None


def fork_server() -> ForkServer:
    """This process's fork server, started on first use (and again if it died)."""
    global _server
    if _server is None or not _server.alive():
        if _server is not None:
            _server.close()
        _server = ForkServer()
    return _server


def stop_fork_server() -> None:
    """End this process's fork server, if it has one (a supervisor, once its container runs)."""
    global _server
    if _server is not None and _server.alive():
        _server.close()
    _server = None


def _forget_server_in_child() -> None:
    # A forked child shares the parent's server socket: it closes its copy now, while that fd
    # number still is that socket (later it may name another file), and starts its own server.
    global _server
    if _server is not None:
        with contextlib.suppress(OSError):
            _server._sock.close()
        _server = None


os.register_at_fork(after_in_child=_forget_server_in_child)


def run_in_child(fn, *args, unshare: CloneFlags | int = 0, timeout: float | None = 30.0,
                 keep_fds: tuple[int, ...] = (), **kwargs):
    """Run ``fn(*args, **kwargs)`` in a forked child and return its value (it must pickle).

    An exception in the child is raised here, the child's traceback attached as its cause.
    ``unshare`` gives the child new namespaces first. The child dies with this process
    (PR_SET_PDEATHSIG), keeps only fds 0-2 and ``keep_fds``, and is killed after ``timeout`` s.
    """
    return spawn(fn, *args, unshare=unshare, keep_fds=keep_fds, **kwargs).wait(timeout)


# ---------------------------------------------------------------------------------------------
# Processes as lab objects: found by the census, removed by cleanup (marks.KINDS)

def find_processes(scan: marks.Scan) -> list[marks.Obj]:
    """Every live process of ours: a process inside a lab cgroup, in any hierarchy.

    Cgroup membership is the proof: a ledger record alone is never enough to make a process
    ours (anyone who can write a record could otherwise name any process, with its right start
    time, and have cleanup kill it). A record only gives a process found here its owner.

    Never this process nor any of its ancestors: the shell running `labhelper cleanup` (or the
    notebook kernel) may have been moved into a lab cgroup by an exercise, and killing it would
    end the learner's session. Zombies are left out: they have exited, and only their parent can
    remove them.
    """
    spared = {1, *procfs.ancestors()}
    found: dict[str, marks.Obj] = {}
    try:
        entries = [e.name for e in os.scandir(scan.proc) if e.name.isdigit()]
    except OSError:
        entries = []
    for name in entries:
        if int(name) in spared:
            continue
        lab = [e for e in procfs.cgroups_of(name, scan.proc) if marks.is_lab_cgroup(e.path)]
        if not lab or procfs.is_zombie(name, scan.proc):
            continue
        where = tuple(dict.fromkeys(p for e in lab for p in procfs.cgroup_host_paths(e, scan.mounts)))
        started = procfs.start_time(int(name), scan.proc)
        detail = f"start={started}" + (f" in {', '.join(where)}" if where else "")
        found[name] = marks.Obj("process", name, detail, where=where, ident=started)
    return list(found.values())


def remove_process(obj: marks.Obj, ledger) -> None:
    """SIGKILL the process the census saw, and wait until it is gone (idempotent).

    The signal goes through a pidfd, and only if the process still has the start time the
    census read, and is still in a lab cgroup: holding a pidfd pins *this* process, so if both
    hold now, the signal reaches the process the census saw, never a newcomer that reused its
    pid (R7 in docs/reliability.md), nor one that left the lab's cgroups. Without a known start
    time nothing is signalled, and never this process or one of its ancestors.
    """
    pid = int(marks.pid_name(obj.name))
    with ledger.removing("process", obj.name):
        if obj.ident is None or pid in procfs.ancestors():
            return
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            if procfs.start_time(pid) != obj.ident:
                return                      # the process we saw is gone; the pid is someone else's
            if not any(marks.is_lab_cgroup(e.path) for e in procfs.cgroups_of(pid)):
                return                      # not (or no longer) in a lab cgroup: not ours to kill
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                return
        finally:
            os.close(fd)
        _wait_gone(pid, obj.ident)


def _wait_gone(pid: int, started: int, timeout: float = 5.0) -> None:
    # Before a mount or a cgroup of the process can go, the process must really be gone: a
    # SIGKILLed process still holds its cgroup until it has exited (a zombie holds nothing).
    deadline = time.monotonic() + timeout
    while procfs.start_time(pid) == started and not procfs.is_zombie(pid):
        if time.monotonic() >= deadline:
            return
        time.sleep(0.005)

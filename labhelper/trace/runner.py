"""Run strace: on a command (:func:`trace`) or on a Python function in a forked child
(:func:`trace_call`), and hand back a :class:`Trace`, what the program asked of the kernel.

strace writes its lines to a temporary file (-o), so the program's own stdout and stderr stay
its own; once the program has ended, the file is parsed (:mod:`labhelper.trace.parser`) and
removed. Running a tracer is where things go wrong: strace missing, ptrace refused, a command
that does not exist, one that never ends, a notebook interrupt. Each case raises an error that
says what happened, and none leaves a strace, a traced process or a temporary file behind.

This is the top of :mod:`labhelper.trace`: it uses the parser, the summary and the categories,
and :mod:`labhelper.process` (imported when first needed) to fork the child whose function is
traced.
"""
from __future__ import annotations

import contextlib
import dataclasses
import html
import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..errors import ChildTimeout, LabError, Refused, RequirementError
from .categories import CATEGORY_SYSCALLS, check_category
from .parser import Record, merge, parse
from .summary import Summary, summarize

__all__ = [
    "STRACE_HINT", "TraceError", "CommandNotFoundError", "Trace",
    "strace_path", "strace_argv", "trace", "trace_call",
]

STRACE_HINT = "apt-get install strace (scripts/provision.sh installs it with the other course packages)"


class TraceError(LabError):
    """strace could not trace what was asked (it is missing, ptrace is refused, ...)."""


class CommandNotFoundError(TraceError):
    """The command to trace does not exist (found before starting strace)."""


# ---------------------------------------------------------------------------------------------
# The result of tracing something

@dataclass(frozen=True)
class Trace:
    """What a program asked of the kernel: its system calls, signals and exits, in order."""
    command: tuple[str, ...]
    records: tuple[Record, ...]
    returncode: int | None = None   # like subprocess: -N when killed by signal N
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0             # how long the traced run took, tracing included
    strace_argv: tuple[str, ...] = ()
    value: Any = field(default=None, repr=False)   # the function's return value (trace_call)
    error: BaseException | None = field(default=None, repr=False)  # the exception it raised

    # -- what is in it ------------------------------------------------------------------------
    @property
    def calls(self) -> list[Record]:
        """The system calls only (no signal or exit records)."""
        return [r for r in self.records if r.is_call]

    def __len__(self) -> int:
        return len(self.calls)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.calls)

    @property
    def pids(self) -> list[int]:
        """Every process and thread seen, in order of appearance."""
        return list(dict.fromkeys(r.pid for r in self.records if r.pid is not None))

    @property
    def syscalls(self) -> list[str]:
        """Names of the system calls made, in order of first use."""
        return list(dict.fromkeys(r.syscall for r in self.calls))

    def count(self, syscall: str) -> int:
        return sum(1 for r in self.calls if r.syscall == syscall)

    def find(self, syscall: str | None = None, path: str | None = None) -> list[Record]:
        """Calls named ``syscall`` (any if None) whose path contains ``path`` (any if None)."""
        return [r for r in self.calls if syscall in (None, r.syscall)
                and (path is None or (r.path is not None and path in r.path))]

    def first(self, syscall: str | None = None, path: str | None = None) -> Record | None:
        found = self.find(syscall, path)
        return found[0] if found else None

    def filter(self, category: str | None = None, syscall: str | Iterable[str] | None = None,
               pid: int | None = None, failed: bool | None = None) -> "Trace":
        """A Trace with only the matching records (system calls and, without a filter on
        category/syscall/failed, also signals and exits)."""
        check_category(category)
        names = {syscall} if isinstance(syscall, str) else (set(syscall) if syscall else None)

        def keep(r: Record) -> bool:
            if pid is not None and r.pid != pid:
                return False
            if not r.is_call:
                return category is None and names is None and failed is None
            return ((category is None or r.category == category)
                    and (names is None or r.syscall in names)
                    and (failed is None or r.failed == failed))
        return dataclasses.replace(self, records=tuple(r for r in self.records if keep(r)))

    def summary(self, category: str | None = None) -> Summary:
        return summarize(self.records).filter(category)

    # -- how it ended -------------------------------------------------------------------------
    @property
    def exit(self) -> str:
        """How the traced program ended: 'exited with 0', 'killed by SIGKILL', 'raised X'."""
        if self.error is not None:
            return f"raised {type(self.error).__name__}"
        if self.command[:1] == ("python",) and self.returncode == 0:
            return "returned"
        main = self.pids[0] if self.pids else None
        for r in self.records:
            if r.pid == main and r.kind in ("exit", "killed"):
                return r.args_text
        if self.returncode is not None:
            if self.returncode < 0:
                return f"killed by {signal.Signals(-self.returncode).name}"
            return f"exited with {self.returncode}"
        return "unknown"

    @property
    def killed_by(self) -> str | None:
        m = re.match(r"killed by (SIG\w+)", self.exit)
        return m.group(1) if m else None

    @property
    def ok(self) -> bool:
        """True if the command exited with status 0 (or the traced function returned)."""
        return self.exit in ("exited with 0", "returned")

    def check(self) -> "Trace":
        """Raise if the traced program failed (like subprocess's check=True); else return self."""
        if self.error is not None:
            raise self.error
        if not self.ok:
            raise TraceError(f"the traced command {_show(self.command)} {self.exit}",
                             hint=f"its stderr: {self.stderr.strip()[-300:]!r}" if self.stderr.strip()
                             else "look at trace.records[-5:] to see how it ended")
        return self

    # -- display ------------------------------------------------------------------------------
    def __repr__(self) -> str:
        n = len(self)
        procs = len({r.pid for r in self.records if r.pid is not None}) or 1
        return (f"<Trace {_show(self.command)}: {self.exit}, {n} system call{'s' * (n != 1)} "
                f"({len(self.syscalls)} different), {procs} process{'es' * (procs != 1)}/thread"
                f"{'s' * (procs != 1)}>")

    def lines(self, n: int | None = None, skip: int = 0) -> str:
        """The records as strace-like text, without pids and times (stable to compare)."""
        chosen = self.records[skip:None if n is None else skip + n]
        return "\n".join(str(r) for r in chosen)

    def _repr_html_(self) -> str:
        return (f"<p><code>{html.escape(repr(self))}</code></p>"
                + self.summary().top(15)._repr_html_())


def _show(command: Sequence[str]) -> str:
    return repr(shlex.join(command)) if command and command[0] != "python" else " ".join(command)


# ---------------------------------------------------------------------------------------------
# Running strace

def strace_path(strace: str | None = None) -> str:
    """Where strace is: ``strace`` if given, else $LABHELPER_STRACE, else the one on PATH.

    Raises RequirementError (with the install hint) when it is missing.
    """
    wanted = strace or os.environ.get("LABHELPER_STRACE")
    if wanted:
        found = shutil.which(wanted) if os.sep not in wanted else (wanted if os.access(wanted, os.X_OK) else None)
        if not found:
            raise RequirementError(f"strace was not found at {wanted!r}", hint=STRACE_HINT,
                                   missing=("strace",))
        return found
    found = shutil.which("strace")
    if not found:
        raise RequirementError("strace is not installed: it is what shows a program's system calls",
                               hint=STRACE_HINT, missing=("strace",))
    return found


def strace_argv(strace: str, output: str, strsize: int = 80, follow: bool = True,
                only: str | None = None, also: tuple[str, ...] = ()) -> list[str]:
    """The strace command line, each flag chosen for what the course shows:

    -f        follow forks: children and threads are traced too (each line starts with its pid)
    -ttt      a timestamp on each line (Unix time with microseconds)
    -T        the time spent inside each call
    -yy       print the path (or socket address) behind each file descriptor: 3</etc/hostname>
    -s N      show up to N bytes of each string (the rest is cut, marked with ...)
    -q        no "Process N attached" chatter on stderr
    -o FILE   write the trace to a file, so the program's own stderr stays its own
    -e trace=?openat,?read,... (only="file")  trace only the calls of one category
    """
    argv = [strace]
    if follow:
        argv.append("-f")
    argv += ["-ttt", "-T", "-yy", "-q", "-s", str(int(strsize)), "-o", output]
    if only:
        if only not in CATEGORY_SYSCALLS:
            raise Refused(f"only= must be one of {', '.join(CATEGORY_SYSCALLS)}, not {only!r}")
        # Our categories, not strace's classes (its %desc would count mmap as "file"). The '?'
        # before each name: skip names this architecture lacks (aarch64 has no open or mkdir).
        # ``also``: calls traced besides (trace_call's gate and markers), left out afterwards.
        names = CATEGORY_SYSCALLS[only] + tuple(n for n in also if n not in CATEGORY_SYSCALLS[only])
        argv += ["-e", "trace=" + ",".join("?" + n for n in names)]
    return argv


def _resolve_command(command: str | Sequence[str], args: Sequence[str], env: dict | None,
                     cwd: str | None) -> list[str]:
    argv = shlex.split(command) if isinstance(command, str) else [os.fspath(a) for a in command]
    argv += [os.fspath(a) for a in args]
    if not argv:
        raise Refused("nothing to trace: the command is empty")
    prog = argv[0]
    if os.sep in prog:
        path = prog if os.path.isabs(prog) or cwd is None else os.path.join(cwd, prog)
        if not os.path.exists(path):
            raise CommandNotFoundError(f"command not found: {prog!r} does not exist",
                                       hint="check the path; `ls -l` it")
        if not os.access(path, os.X_OK) or os.path.isdir(path):
            raise CommandNotFoundError(f"{prog!r} is not an executable file",
                                       hint=f"chmod +x {shlex.quote(prog)}, or run it with its interpreter")
    else:
        search = (env or os.environ).get("PATH", os.defpath)
        if shutil.which(prog, path=search) is None:
            raise CommandNotFoundError(f"command not found: {prog!r} is not on PATH",
                                       hint="check the spelling; `apt-cache search NAME` finds the package "
                                            "that provides a program")
    return argv


def _live_tracees(output: str) -> set[int]:
    """Pids that appear in the (partial) strace output and have not exited yet."""
    seen, ended = set(), set()
    try:
        with open(output, "rb") as fh:
            for raw in fh:
                m = re.match(rb"(\d+)\s+(?:[\d.:]+\s+)?(\+\+\+ )?", raw)
                if m:
                    (ended if m.group(2) else seen).add(int(m.group(1)))
    except OSError:
        pass
    return seen - ended - {os.getpid()}


def _stop(proc: subprocess.Popen, output: str, grace: float = 3.0) -> None:
    """Kill everything strace traces, then make sure strace itself is gone and reaped.

    While strace is attached, a traced process cannot be reaped without strace printing its
    "+++ exited/killed +++" line first. So a pid in the output without such a line is a live
    tracee, never a stranger that reused the pid: it is safe to SIGKILL. Once its tracees are
    gone strace exits by itself, after writing its complete output.
    """
    deadline = time.monotonic() + grace
    while proc.poll() is None and time.monotonic() < deadline:
        for pid in _live_tracees(output):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(0.05)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:  # pragma: no cover - a kernel that cannot kill a process
        pass


def _read_output(path: str) -> list[Record]:
    with open(path, "rb") as fh:
        return merge(parse(fh.read()))


def _strace_failed(records: Sequence[Record], messages: str, argv: Sequence[str], what: str) -> None:
    """strace started but could not trace (ptrace refused, bad option): say so clearly."""
    if any(r.is_call for r in records):
        return
    text = messages.strip() or "no output"
    hint = ("strace uses ptrace(2): run as root in the lab VM; in a container, ptrace needs "
            "--cap-add SYS_PTRACE and a seccomp profile that allows it")
    if "Operation not permitted" not in text:
        hint = "run the strace command line yourself to see its error: " + shlex.join(argv)
    raise TraceError(f"strace could not trace {what}: {text}", hint=hint)


def trace(target: str | Sequence[str] | Callable, *args, timeout: float = 30.0, strsize: int = 80,
          cwd: str | None = None, env: dict | None = None, input: str | bytes | None = None,
          strace: str | None = None, only: str | None = None, check: bool = False,
          **kwargs) -> Trace:
    """Run a command (or call a Python function, see :func:`trace_call`) under strace.

    ``target`` is a command line (``"ls -l /"``, split like a shell would, without expanding
    anything) or an argument list (``["ls", "-l", "/"]``); ``args`` are appended. Returns a
    :class:`Trace`. A command that fails or is killed is traced all the same (see
    ``Trace.exit``); ``check=True`` raises TraceError then. After ``timeout`` seconds the
    command and everything it started are killed and ChildTimeout is raised; its ``partial``
    attribute holds what was traced until then. ``only`` ("file", "process", ...) makes strace
    record only one class of calls. ``strace`` (or $LABHELPER_STRACE) names the strace binary.
    """
    if callable(target):
        return trace_call(target, *args, timeout=timeout, strsize=strsize, strace=strace,
                          only=only, check=check, **kwargs)
    if kwargs:
        raise TypeError(f"unexpected keyword arguments for a command: {', '.join(kwargs)}")
    exe = strace_path(strace)
    argv = _resolve_command(target, args, env, cwd)
    data = input.encode() if isinstance(input, str) else input
    proc = output = group = None
    started = time.monotonic()
    try:
        output = _temp_output()
        full = strace_argv(exe, output, strsize, only=only) + ["--"] + argv
        # strace stays in our process group: a Jupyter restart (SIGKILL to the kernel's group)
        # takes strace and the traced command with it. And where it can, it starts in a lab
        # cgroup of its own, which everything the command starts is born into: at the end, or at
        # the timeout, killing that cgroup kills them all, also those that left strace behind
        # (a process that kills its tracer, a daemon). A tiny shell joins the cgroup, then
        # becomes strace (exec), so not one instruction of strace runs outside it.
        group = _own_cgroup()
        launch = full if group is None else ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"',
                                             group, *full]
        proc = subprocess.Popen(launch, cwd=cwd, env=env, stdin=subprocess.PIPE if data is not None
                                else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc, output)
            _kill_group(group)            # before draining: a survivor would hold the pipes open
            out, err = _drain(proc)
            partial = _make_trace(argv, output, proc.returncode, out, err, started, full)
            exc = ChildTimeout(f"tracing {shlex.join(argv)!r} ran past the {timeout:g} s timeout; "
                               f"the command and every process it started were killed",
                               hint="pass a larger timeout=, or trace a command that ends by itself")
            exc.partial = partial  # type: ignore[attr-defined]
            raise exc from None
        result = _make_trace(argv, output, proc.returncode, out, err, started, full)
        _strace_failed(result.records, _strace_messages(err.decode("utf-8", "backslashreplace"))[0], full,
                       repr(shlex.join(argv)))
    except BaseException:
        # KeyboardInterrupt (a notebook interrupt) or an error of ours: leave nothing running.
        if proc is not None and proc.poll() is None:
            _stop(proc, output)
            _kill_group(group)
            _drain(proc)
        raise
    finally:
        if proc is not None:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None and not stream.closed:
                    stream.close()
        if output is not None:
            _unlink(output)
        _remove_group(group)
    return result.check() if check else result


def _own_cgroup() -> str | None:
    """A new lab cgroup for one trace, or None where the lab may not make one (not root, a
    machine not declared disposable, no cgroup hierarchy): then only what strace itself still
    traces at the end is stopped."""
    if os.geteuid() != 0:
        return None
    from .. import cgroups, host   # imported here: tracing a command needs them, importing trace does not
    if host.disposable_reason() is None:
        return None
    try:
        return cgroups.create(f"trace-{uuid.uuid4().hex[:12]}")
    except (LabError, OSError):
        return None


def _kill_group(group: str | None) -> None:
    if group is not None:
        from .. import cgroups
        cgroups.kill(group)


def _remove_group(group: str | None) -> None:
    if group is not None:
        from .. import cgroups
        cgroups.remove(group)


def _drain(proc: subprocess.Popen) -> tuple[bytes, bytes]:
    """Collect what is left in the pipes of a stopped strace, without blocking forever."""
    try:
        return proc.communicate(timeout=5)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        return b"", b""


def _temp_output() -> str:
    """A new empty file for strace's -o (the caller removes it)."""
    fd, path = tempfile.mkstemp(prefix="lh-strace-", suffix=".txt")
    os.close(fd)
    return path


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _strace_messages(stderr: str) -> tuple[str, str]:
    """Split stderr into (strace's own messages, the program's stderr).

    strace and the traced command share stderr; strace prefixes its own lines with "strace: ".
    """
    mine, theirs = [], []
    for line in stderr.splitlines(keepends=True):
        (mine if line.startswith("strace: ") else theirs).append(line)
    return "".join(mine), "".join(theirs)


def _make_trace(argv, output, returncode, out: bytes, err: bytes, started, full,
                value=None, error=None) -> Trace:
    records = _read_output(output) if os.path.exists(output) else []
    _, stderr = _strace_messages(err.decode("utf-8", "backslashreplace"))
    return Trace(tuple(argv), tuple(records), returncode, out.decode("utf-8", "backslashreplace"),
                 stderr, time.monotonic() - started, tuple(full), value, error)


# --- tracing a Python function in a child ------------------------------------------------------

def _marker(token: str, which: str) -> str:
    return f"/proc/self/lh-trace-{which}-{token}"


def _call_between_markers(token: str, fn, args, kwargs):
    # These two access(2) calls fail with ENOENT (the paths do not exist) and cost nothing; they
    # mark in the trace where fn starts and ends, so the child's own setup is left out.
    os.access(_marker(token, "begin"), os.F_OK)
    try:
        return fn(*args, **kwargs)
    finally:
        os.access(_marker(token, "end"), os.F_OK)


def _between_markers(records: Sequence[Record], token: str) -> list[Record]:
    begin = end = None
    for i, r in enumerate(records):
        if r.is_call and token in r.args_text:
            if begin is None and "begin" in r.args_text:
                begin = i
            elif "end" in r.args_text:
                end = i
    if begin is None:
        return list(records)
    main = records[begin].pid
    kept = list(records[begin + 1:end if end is not None else len(records)])
    if end is not None:  # other processes fn started may still be finishing: keep their lines
        kept += [r for r in records[end + 1:] if r.pid != main]
    return kept


def _wait_attached(pid: int, proc: subprocess.Popen, output: str, timeout: float = 10.0) -> None:
    """Wait until strace (``proc``) traces the system calls of ``pid``: until it has written the
    first of them to ``output``. Not TracerPid in its status: that is set when strace seizes the
    process (PTRACE_SEIZE), a moment before it stops it and asks for its system calls
    (PTRACE_SYSCALL); a child let go in between would run untraced. The child waits in read(2)
    at its gate, and strace writes that call (resumed) as soon as it traces it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return  # strace gave up: the caller reports its messages
        try:
            if os.path.getsize(output) > 0:
                return
        except FileNotFoundError:
            pass
        if not os.path.exists(f"/proc/{pid}"):
            return
        time.sleep(0.002)
    raise TraceError(f"strace did not start tracing pid {pid} within {timeout:g} s",
                     hint="is the machine very busy? try again")


def trace_call(fn: Callable, *args, timeout: float = 30.0, strsize: int = 80,
               strace: str | None = None, only: str | None = None, check: bool = False,
               **kwargs) -> Trace:
    """Call ``fn(*args, **kwargs)`` in a forked child under strace and return its Trace.

    The child waits at a gate until strace has attached (strace -p), so the trace starts
    exactly where ``fn`` starts. ``Trace.value`` is fn's return value (it must pickle); if fn
    raises, ``Trace.error`` holds the exception (raised here with ``check=True``). What fn
    prints is in ``Trace.stdout``.
    """
    # Imported here, not at the top: labhelper.process loads ctypes and labhelper.syscalls, which
    # makes `import labhelper.trace` about 9 ms (40 %) slower (python -X importtime), and only
    # tracing a function needs it.
    from ..process import spawn

    exe = strace_path(strace)
    token = uuid.uuid4().hex[:12]
    name = getattr(fn, "__qualname__", None) or repr(fn)
    command = ("python", f"{name}()")
    started = time.monotonic()
    child = proc = output = group = None
    value = error = None
    printed = io.StringIO()
    try:
        output = _temp_output()
        group = _own_cgroup()       # the child joins it first thing, so all it starts is born inside
        child = spawn(_call_between_markers, token, fn, args, kwargs, gate=True, cgroup=group)
        # The gate's read(2) and the markers' access(2) are traced whatever ``only`` says: the
        # first tells when strace traces the child (_wait_attached), the others where fn runs.
        full = strace_argv(exe, output, strsize, only=only, also=("read", "access")) + ["-p", str(child.pid)]
        proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        _wait_attached(child.pid, proc, output)
        if proc.poll() is not None:
            messages = proc.stderr.read().decode("utf-8", "backslashreplace")
            _strace_failed([], messages, full, f"{name}() in pid {child.pid}")
        child.release()
        try:
            with contextlib.redirect_stdout(printed):
                value = child.wait(timeout)
        except ChildTimeout as exc:
            _stop(proc, output)
            _kill_group(group)
            exc.partial = _make_trace(command, output, None, printed.getvalue().encode(), b"",  # type: ignore[attr-defined]
                                      started, full)
            raise
        except Exception as exc:  # fn raised: the trace is still worth having
            error = exc
        try:
            proc.wait(timeout=5)  # strace exits once its tracee is gone
        except subprocess.TimeoutExpired:
            _stop(proc, output)
        err = proc.stderr.read()
        result = _make_trace(command, output, 0 if error is None else 1,
                             printed.getvalue().encode(), err, started, full, value, error)
        records = _between_markers(result.records, token)
        if only:
            records = [r for r in records if not r.is_call or r.syscall in CATEGORY_SYSCALLS[only]]
        result = dataclasses.replace(result, records=tuple(records))
    except BaseException:
        if child is not None:
            child.kill()
        if proc is not None and proc.poll() is None:
            _stop(proc, output)
        raise
    finally:
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        if output is not None:
            _unlink(output)
        _remove_group(group)
    return result.check() if check else result

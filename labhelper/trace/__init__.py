"""Watch a program talk to the kernel: strace, parsed into typed records.

Every time a program needs something only the kernel can do (open a file, start a process, map
memory, send a packet) it makes a *system call*: it puts the call's number and arguments in
registers and executes one instruction (``syscall`` on x86_64, ``svc #0`` on aarch64) that
switches the CPU from user mode to kernel mode. strace(1) sees each of those calls through
ptrace(2) and prints one line per call::

    4242  1717171717.123456 openat(AT_FDCWD</root>, "/etc/hostname", O_RDONLY|O_CLOEXEC) = 3</etc/hostname> <0.000021>
    ^pid  ^time (-ttt)       ^name  ^arguments, fds decoded to paths (-yy)            ^return value     ^time inside (-T)

This module runs strace for you (:func:`trace`), on a command or on a Python function in a
forked child, parses every line into a :class:`Record`, merges calls that strace had to print
in two halves (``<unfinished ...>`` / ``<... resumed>``), and summarizes like ``strace -c``
(:meth:`Trace.summary`). :func:`parse` works on any saved strace output.

strace is a *tracer*: the traced program stops at every system call while strace reads and
prints it, so a traced program runs many times slower. The durations it reports include part of
that cost. Tracing shows *what* a program asks of the kernel; to measure *how long* a system
call really takes, see :mod:`labhelper.syscost`.
"""
from __future__ import annotations

import dataclasses
import html
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..errors import ChildTimeout, LabError, RequirementError

__all__ = [
    "Record", "Trace", "Summary", "SummaryRow", "TraceError", "CommandNotFoundError",
    "trace", "trace_call", "parse", "parse_line", "merge", "summarize", "category",
    "CATEGORIES", "CATEGORY_NAMES", "strace_path", "strace_argv", "unescape",
]

STRACE_HINT = "apt-get install strace (scripts/provision.sh installs it with the other course packages)"


class TraceError(LabError):
    """strace could not trace what was asked (it is missing, ptrace is refused, ...)."""


class CommandNotFoundError(TraceError):
    """The command to trace does not exist (found before starting strace)."""


# ---------------------------------------------------------------------------------------------
# Categories: which part of the kernel a system call talks to. strace has similar classes
# (-e trace=%file,%process,%memory,%network,%signal); ours put every call in exactly one box,
# and count fd-based I/O (read, write, close, ...) as "file": in Unix, everything is a file.

CATEGORY_NAMES = ("file", "process", "memory", "network", "signal", "other")

_CATEGORY_LISTS = {
    "file": """
        open openat openat2 creat close close_range read pread64 readv preadv preadv2 write
        pwrite64 writev pwritev pwritev2 lseek _llseek stat fstat lstat newfstatat fstatat64
        statx stat64 fstat64 lstat64 statfs fstatfs statfs64 fstatfs64 access faccessat
        faccessat2 readlink readlinkat getdents getdents64 mkdir mkdirat rmdir unlink unlinkat
        rename renameat renameat2 link linkat symlink symlinkat chmod fchmod fchmodat fchmodat2
        chown fchown lchown fchownat truncate ftruncate fsync fdatasync sync syncfs
        sync_file_range dup dup2 dup3 fcntl fcntl64 ioctl flock pipe pipe2 poll ppoll select
        _newselect pselect6 epoll_create epoll_create1 epoll_ctl epoll_wait epoll_pwait
        epoll_pwait2 eventfd eventfd2 inotify_init inotify_init1 inotify_add_watch
        inotify_rm_watch fanotify_init fanotify_mark getcwd chdir fchdir chroot mount umount2
        pivot_root sendfile sendfile64 splice tee vmsplice copy_file_range fadvise64 readahead
        fallocate utime utimes utimensat futimesat getxattr lgetxattr fgetxattr setxattr
        lsetxattr fsetxattr listxattr llistxattr flistxattr removexattr lremovexattr
        fremovexattr mknod mknodat umask name_to_handle_at open_by_handle_at open_tree
        move_mount fsopen fsmount fsconfig fspick mount_setattr io_setup io_destroy io_submit
        io_getevents io_cancel io_uring_setup io_uring_enter io_uring_register timerfd_create
        timerfd_settime timerfd_gettime quotactl swapon swapoff
        """,
    "process": """
        execve execveat fork vfork clone clone3 exit exit_group wait4 waitid getpid getppid
        gettid getuid geteuid getgid getegid getresuid getresgid setuid setgid setreuid setregid
        setresuid setresgid setfsuid setfsgid getgroups setgroups setsid getsid setpgid getpgid
        getpgrp prctl arch_prctl set_tid_address set_robust_list get_robust_list rseq futex
        futex_waitv sched_yield sched_getaffinity sched_setaffinity sched_getparam
        sched_setparam sched_getscheduler sched_setscheduler sched_get_priority_max
        sched_get_priority_min sched_getattr sched_setattr sched_rr_get_interval unshare setns
        capget capset getrlimit setrlimit prlimit64 ugetrlimit getrusage uname sethostname
        setdomainname pidfd_open pidfd_getfd personality ptrace times getpriority setpriority
        seccomp ioprio_get ioprio_set kcmp process_madvise getcpu acct reboot kexec_load
        init_module finit_module delete_module
        """,
    "memory": """
        brk mmap mmap2 munmap mprotect mremap madvise mlock mlock2 munlock mlockall munlockall
        msync mincore pkey_mprotect pkey_alloc pkey_free set_mempolicy get_mempolicy mbind
        migrate_pages move_pages process_vm_readv process_vm_writev memfd_create memfd_secret
        userfaultfd remap_file_pages membarrier map_shadow_stack shmget shmat shmdt shmctl
        """,
    "network": """
        socket socketpair bind listen accept accept4 connect getsockname getpeername sendto
        recvfrom sendmsg recvmsg sendmmsg recvmmsg shutdown setsockopt getsockopt socketcall
        """,
    "signal": """
        rt_sigaction rt_sigprocmask rt_sigreturn rt_sigsuspend rt_sigpending rt_sigtimedwait
        rt_sigqueueinfo rt_tgsigqueueinfo sigaltstack kill tkill tgkill signalfd signalfd4
        pause pidfd_send_signal alarm restart_syscall sigaction sigprocmask sigreturn
        """,
}

#: syscall name -> one of CATEGORY_NAMES (names not listed are "other": clocks, getrandom, ...)
CATEGORIES: dict[str, str] = {name: cat for cat, names in _CATEGORY_LISTS.items()
                              for name in names.split()}


def category(syscall: str | None) -> str:
    """The category of a system call: file, process, memory, network, signal or other."""
    return CATEGORIES.get(syscall or "", "other")


# ---------------------------------------------------------------------------------------------
# Records

KINDS = ("call", "unfinished", "resumed", "signal", "exit", "killed", "other")


@dataclass(frozen=True)
class Record:
    """One line of strace output (or two merged halves of one call).

    ``kind`` is "call" (a complete system call), "unfinished" (it never returned while traced:
    the process exited or strace detached), "resumed" (only the second half was seen),
    "signal" (a signal was delivered: ``--- SIGCHLD {...} ---``), "exit" (``+++ exited with N
    +++``; ``retval`` is N), "killed" (``+++ killed by SIGKILL +++``) or "other" (a line that
    is none of these, kept as is).
    """
    pid: int | None            # None when strace ran without -f
    time: float | None         # seconds: Unix time with -ttt, seconds since midnight with -tt
    kind: str
    syscall: str | None        # the call's name, for call/unfinished/resumed
    args_text: str             # the arguments as strace printed them (signal info for signals)
    retval: int | None         # the return value (-1 on error); exit status for "exit"
    retval_text: str           # all of it after "=": '3</etc/hostname>', '-1 ENOENT (...)'
    errno: str | None          # e.g. "ENOENT" when the call failed
    errtext: str | None        # e.g. "No such file or directory"
    duration: float | None     # seconds inside the call (-T), as seen by strace
    signal: str | None = None  # "signal" and "killed" records: the signal's name
    line: str = field(default="", repr=False, compare=False)

    @property
    def args(self) -> tuple[str, ...]:
        """The arguments split at top-level commas, each as strace printed it."""
        return split_args(self.args_text)

    @property
    def failed(self) -> bool:
        return self.errno is not None

    @property
    def category(self) -> str:
        return category(self.syscall)

    @property
    def is_call(self) -> bool:
        return self.kind in ("call", "unfinished", "resumed")

    def strings(self) -> list[str]:
        """The quoted string arguments, unescaped (undecodable bytes kept as surrogates)."""
        return [os.fsdecode(unescape(a)) for a in self.args if a.startswith('"')]

    @property
    def path(self) -> str | None:
        """The file the call is about: its first string argument (openat, execve, mkdir, ...),
        else the path strace decoded for its first fd argument (read, write, close ...)."""
        args = self.args
        if not args:
            return None
        if args[0].startswith('"'):        # open, execve, mkdir, stat, unlink, ...
            return os.fsdecode(unescape(args[0]))
        at_call = (self.syscall or "").endswith(("at", "at2")) or self.syscall == "statx"
        if at_call and len(args) > 1 and args[1].startswith('"') and args[1] != '""':
            return os.fsdecode(unescape(args[1]))   # openat(dirfd, "path", ...)
        m = re.match(r"(?:-?\d+|AT_FDCWD)<(.*)>$", args[0], re.S)
        if m:                                # read(3</etc/hostname>, ...): the fd's path (-yy)
            return os.fsdecode(unescape('"' + m.group(1) + '"'))
        return None

    def __str__(self) -> str:
        if self.kind in ("call", "resumed"):
            return f"{self.syscall}({self.args_text}) = {self.retval_text}"
        if self.kind == "unfinished":
            return f"{self.syscall}({self.args_text} <unfinished ...>"
        if self.kind == "signal":
            return f"--- {self.args_text} ---"
        if self.kind in ("exit", "killed"):
            return f"+++ {self.args_text} +++"
        return self.args_text

    def __repr__(self) -> str:
        text = str(self)
        if self.kind in ("call", "resumed", "unfinished") and len(self.args_text) > 70:
            text = f"{self.syscall}({self.args_text[:67]}...)"
            if self.kind != "unfinished":
                text += f" = {self.retval_text}"
        pid = f"{self.pid} " if self.pid is not None else ""
        return f"<{pid}{text}>"


# A token: a quoted string (with backslash escapes), one bracket or comma, or a run of the rest
# (escapes included: a path in <...> may hold an escaped quote, 3</tmp/a\"b>).
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[()\[\]{}<>,]|(?:[^"()\[\]{}<>,\\]|\\.?)+', re.S)
_CLOSERS = {")": "(", "]": "[", "}": "{"}


def _scan(text: str, stack: list[str] | None = None) -> tuple[int, list[int]]:
    """Walk ``text`` keeping track of nesting; return (end, commas).

    With a non-empty ``stack`` (e.g. ``["("]``: we are inside a call's parentheses), ``end`` is
    the index where that stack empties (the closing bracket), or -1. ``commas`` are the
    positions of commas at the starting depth: the argument separators.

    Inside ``<...>`` (an fd decoded by -yy: ``3</etc/passwd>``, ``4<TCP:[1.2.3.4:80->5.6.7.8:9]>``)
    only quotes, ``<`` and ``>`` count, and ``->`` is an arrow: strace escapes ``<`` and ``>``
    in paths (as \\74 and \\76) but not ``(`` or ``[``.
    """
    stack = list(stack or [])
    base = len(stack)
    commas: list[int] = []
    prev = ""
    for m in _TOKEN.finditer(text):
        tok = m.group()
        c = tok[0]
        if c == '"':
            pass
        elif stack and stack[-1] == "<":
            if c == "<":
                stack.append("<")
            elif c == ">" and not prev.endswith("-"):
                stack.pop()
        elif c in "([{<":
            stack.append(c)
        elif c in _CLOSERS:
            if stack and stack[-1] == _CLOSERS[c]:
                stack.pop()
        elif c == "," and len(stack) == base:
            commas.append(m.start())
        prev = tok
        if base and not stack:
            return m.start(), commas
    return -1, commas


def split_args(text: str) -> tuple[str, ...]:
    """Split an argument list at its top-level commas: '3</a,b>, "x, y", [1, 2]' -> 3 parts."""
    if not text.strip():
        return ()
    _, commas = _scan(text)
    parts, start = [], 0
    for pos in commas:
        parts.append(text[start:pos].strip())
        start = pos + 1
    last = text[start:].strip()
    if last or not parts:  # 'a, b, ' (a call cut short by the process's death) has no third part
        parts.append(last)
    return tuple(parts)


_SIMPLE_ESCAPES = {"n": 10, "t": 9, "r": 13, "v": 11, "f": 12, "a": 7, "b": 8, "e": 27,
                   "\\": 92, '"': 34, "'": 39, "?": 63}


def unescape(quoted: str) -> bytes:
    """The bytes of a string as strace prints it: '"a\\tb\\377"...' -> b'a\\tb\\xff'.

    strace escapes non-printable bytes in octal (\\377) or hex (\\xff, with -x), and marks a
    string cut at -s characters with a trailing ``...``; the cut part is simply absent.
    """
    s = quoted
    if s.endswith("..."):
        s = s[:-3]
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        s = s[1:-1]
    out = bytearray()
    i, n = 0, len(s)
    while i < n:
        ch = s[i]
        if ch != "\\" or i + 1 >= n:
            out += ch.encode("utf-8", "surrogateescape")
            i += 1
            continue
        nxt = s[i + 1]
        if nxt == "x" and re.match(r"[0-9a-fA-F]{2}", s[i + 2:i + 4]):
            out.append(int(s[i + 2:i + 4], 16))
            i += 4
        elif nxt in "01234567":
            m = re.match(r"[0-7]{1,3}", s[i + 1:i + 4])
            out.append(int(m.group(), 8) & 0xFF)
            i += 1 + len(m.group())
        elif nxt in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[nxt])
            i += 2
        else:
            out += ("\\" + nxt).encode("utf-8", "surrogateescape")
            i += 2
    return bytes(out)


_PREFIX = re.compile(
    r"(?:\[pid\s+(?P<pid1>\d+)\]\s+|(?P<pid2>\d+)\s+)?"
    r"(?:(?P<ts>\d+\.\d+|\d\d:\d\d:\d\d(?:\.\d+)?)\s+)?"
    r"(?P<body>.*)", re.S)
_DURATION = re.compile(r"\s+<(\d+\.\d+)>\s*$")
_RESUMED = re.compile(r"<\.\.\. (\w+) resumed>\s?(.*)", re.S)
_CALL = re.compile(r"(\w+)\((.*)", re.S)
_RETVAL = re.compile(r"\s*=\s*(0x[0-9a-fA-F]+|-?\d+|\?)(.*)", re.S)
_ERRNO = re.compile(r"\s*(E[A-Z0-9_]+)\s+\((.*)\)\s*$", re.S)
_UNFINISHED = " <unfinished ...>"
_DETACHED = " <detached ...>"


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    if ":" in text:
        h, m, s = text.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    return float(text)


def _parse_return(rest: str) -> tuple[int | None, str, str | None, str | None]:
    """Parse what follows the closing parenthesis: ' = -1 ENOENT (No such file or directory)'."""
    m = _RETVAL.match(rest)
    if not m:
        return None, rest.strip().lstrip("=").strip(), None, None
    token, tail = m.group(1), m.group(2)
    retval_text = (token + tail).strip()
    if token == "?":
        retval = None
    elif token.startswith("0x"):
        retval = int(token, 16)
    else:
        retval = int(token)
    if tail.startswith("<"):  # a returned fd, decoded: = 3</etc/hostname>
        end, _ = _scan(tail[1:], ["<"])
        tail = tail[end + 2:] if end >= 0 else ""
    em = _ERRNO.match(tail)
    if em:
        return retval, retval_text, em.group(1), em.group(2)
    return retval, retval_text, None, None


# What may follow " = " after a call: a number or "?", an fd's decoration, an errno, a comment.
_TAIL = re.compile(r"(?:0x[0-9a-fA-F]+|-?\d+|\?)(?:<[^<>]*(?:<[^<>]*>[^<>]*)*>)?"
                   r"(?: E[A-Z0-9_]+ \([^()]*\))?(?: \([^()]*(?:\([^()]*\)[^()]*)*\))?(?: <unavailable>)?\s*$")


def _close_paren(rest: str) -> int:
    """Index of the ')' that closes a call's argument list in ``rest`` (the text after
    "name("), or -1. Fast path: the last " = " preceded by ')' is the separator, unless the
    return value's own text holds " = " (then what follows does not parse, and we scan)."""
    eq = rest.rfind(" = ")
    if eq > 0:
        j = eq
        while j > 0 and rest[j - 1] == " ":
            j -= 1
        if j > 0 and rest[j - 1] == ")" and _TAIL.match(rest, eq + 3):
            return j - 1
    end, _ = _scan(rest, ["("])
    return end


def _strip_marker(text: str, marker: str) -> str:
    """Remove a trailing marker and the one space strace puts before it."""
    if text.endswith(marker):
        text = text[:-len(marker)]
        return text[:-1] if text.endswith(" ") else text
    return text


def parse_line(line: str) -> Record | None:
    """Parse one line of strace output into a Record (None for an empty line).

    Understands the output of ``strace -f -ttt -T -yy`` and of most other flag combinations:
    a pid (``1234 `` or ``[pid 1234] ``) and a timestamp (-t, -tt or -ttt) are optional.
    """
    line = line.rstrip("\n")
    if not line.strip():
        return None
    m = _PREFIX.match(line)
    pid_text = m.group("pid1") or m.group("pid2")
    pid = int(pid_text) if pid_text else None
    ts = _timestamp(m.group("ts"))
    body = m.group("body").strip()

    def rec(kind, syscall=None, args_text="", retval=None, retval_text="", errno=None,
            errtext=None, duration=None, sig=None) -> Record:
        return Record(pid, ts, kind, syscall, args_text, retval, retval_text, errno, errtext,
                      duration, sig, line)

    if body.startswith("--- ") and body.endswith(" ---"):
        inner = body[4:-4]
        sm = re.match(r"(?:stopped by )?(SIG\w+)", inner)
        return rec("signal", args_text=inner, sig=sm.group(1) if sm else None)
    if body.startswith("+++ ") and body.endswith(" +++"):
        inner = body[4:-4]
        em = re.match(r"exited with (-?\d+)", inner)
        if em:
            return rec("exit", args_text=inner, retval=int(em.group(1)), retval_text=em.group(1))
        km = re.match(r"killed by (SIG\w+)", inner)
        if km:
            return rec("killed", args_text=inner, sig=km.group(1))
        return rec("exit", args_text=inner)  # e.g. "superseded by execve"

    duration = None
    dm = _DURATION.search(body)
    if dm:
        duration = float(dm.group(1))
        body = body[:dm.start()]

    rm = _RESUMED.match(body)
    if rm:
        name, rest = rm.group(1), rm.group(2)
        end = _close_paren(rest)
        if end < 0:  # resumed, then interrupted again before returning
            return rec("unfinished", name, _strip_marker(rest, "<unfinished ...>"), duration=duration)
        # '<... clock_nanosleep resumed> <unfinished ...>) = ?': the process died inside the call
        args = _strip_marker(rest[:end], "<unfinished ...>")
        retval, retval_text, errno, errtext = _parse_return(rest[end + 1:])
        return rec("resumed", name, args, retval, retval_text, errno, errtext, duration)

    cm = _CALL.match(body)
    if cm:
        name, rest = cm.group(1), cm.group(2)
        # 'wait4(-1,  <unfinished ...>': strace prints the arguments known so far, a space and
        # the marker; the second half ('<... wait4 resumed>[{...}], 0, NULL) = 42') follows later.
        for marker in ("<unfinished ...>", "<detached ...>"):
            if rest.endswith(marker):
                return rec("unfinished", name, _strip_marker(rest, marker),
                           retval_text="" if marker == "<unfinished ...>" else marker, duration=duration)
        end = _close_paren(rest)
        if end >= 0:
            retval, retval_text, errno, errtext = _parse_return(rest[end + 1:])
            return rec("call", name, rest[:end], retval, retval_text, errno, errtext, duration)
    return rec("other", args_text=body)


def parse(text: str | bytes | Iterable[str]) -> list[Record]:
    """Parse strace output (a whole text, bytes, or lines) into Records, one per line, unmerged.

    Bytes that are not UTF-8 are kept readable as backslash escapes (b'\\xff' -> '\\\\xff').
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    lines = text.splitlines() if isinstance(text, str) else text
    out = []
    for line in lines:
        r = parse_line(line)
        if r is not None:
            out.append(r)
    return out


def merge(records: Sequence[Record]) -> list[Record]:
    """Join each ``<unfinished ...>`` half with its ``<... resumed>`` half into one "call".

    strace prints a call in two halves when another traced process or thread does something
    while the first is inside the kernel (with -f this is common: a parent waiting in wait4).
    The merged call keeps the first half's time and position, and takes its result, errno and
    duration from the second. An unfinished call that never resumed (the process was killed,
    strace detached) stays "unfinished"; a resumed half with no first half stays "resumed".
    """
    out: list[Record] = []
    pending: dict[int | None, int] = {}  # pid -> index in out of its unfinished call
    for r in records:
        if r.kind == "unfinished" and r.retval_text != "<detached ...>":
            pending[r.pid] = len(out)
            out.append(r)
        elif r.kind == "resumed" and r.pid in pending and out[pending[r.pid]].syscall == r.syscall:
            index = pending.pop(r.pid)
            first = out[index]
            out[index] = dataclasses.replace(
                r, kind="call", time=first.time if first.time is not None else r.time,
                args_text=first.args_text + r.args_text, line=first.line + "\n" + r.line)
        else:
            out.append(r)
    return out


# ---------------------------------------------------------------------------------------------
# Summary, like strace -c

@dataclass(frozen=True)
class SummaryRow:
    syscall: str
    category: str
    calls: int
    errors: int
    seconds: float  # total time inside the call, as strace measured it (-T)

    @property
    def usecs_per_call(self) -> float:
        return self.seconds * 1e6 / self.calls if self.calls else 0.0


@dataclass(frozen=True)
class Summary:
    """Counts, errors and time per system call, like ``strace -c``.

    strace -c shows system CPU time by default; this table sums the -T durations, which are
    wall-clock time between entering and leaving each call (``strace -c -w``).
    """
    rows: tuple[SummaryRow, ...]
    # The time that 100 % stands for: the whole trace's, also after top() or filter().
    base_seconds: float | None = field(default=None, compare=False)

    @property
    def calls(self) -> int:
        return sum(r.calls for r in self.rows)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.rows)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[SummaryRow]:
        return iter(self.rows)

    def __contains__(self, syscall: str) -> bool:
        return any(r.syscall == syscall for r in self.rows)

    def __getitem__(self, syscall: str) -> SummaryRow:
        for r in self.rows:
            if r.syscall == syscall:
                return r
        raise KeyError(f"{syscall!r} was not called (called: {', '.join(self.names())})")

    def names(self) -> list[str]:
        return [r.syscall for r in self.rows]

    def counts(self) -> dict[str, int]:
        return {r.syscall: r.calls for r in self.rows}

    def by_category(self) -> dict[str, int]:
        """Calls per category, in CATEGORY_NAMES order (categories with no calls left out)."""
        c = Counter()
        for r in self.rows:
            c[r.category] += r.calls
        return {k: c[k] for k in CATEGORY_NAMES if c[k]}

    def sorted(self, by: str = "calls", reverse: bool | None = None) -> "Summary":
        """Sort by "calls", "errors", "seconds", "usecs_per_call", "syscall" or "category".
        Numbers sort largest first, names alphabetically (ties: by name)."""
        keys = {"calls", "errors", "seconds", "usecs_per_call", "syscall", "category"}
        if by not in keys:
            raise ValueError(f"cannot sort by {by!r}; choose one of {', '.join(sorted(keys))}")
        numeric = by not in ("syscall", "category")
        reverse = numeric if reverse is None else reverse
        rows = sorted(self.rows, key=lambda r: r.syscall)
        rows.sort(key=lambda r: getattr(r, by), reverse=reverse)
        return Summary(tuple(rows), self._base)

    @property
    def _base(self) -> float:
        return self.base_seconds if self.base_seconds is not None else self.seconds

    def top(self, n: int = 10) -> "Summary":
        """The first ``n`` rows (percentages stay relative to the whole trace)."""
        return Summary(self.rows[:n], self._base)

    def filter(self, category: str | None = None) -> "Summary":
        _check_category(category)
        return Summary(tuple(r for r in self.rows if category in (None, r.category)), self._base)

    def table(self) -> str:
        total = self._base or 1.0
        lines = ["% time     seconds  usecs/call     calls    errors syscall        category",
                 "------ ----------- ----------- --------- --------- -------------- --------"]
        for r in self.rows:
            errors = str(r.errors) if r.errors else ""
            lines.append(f"{100 * r.seconds / total:6.2f} {r.seconds:11.6f} {r.usecs_per_call:11.0f} "
                         f"{r.calls:9d} {errors:>9} {r.syscall:<14} {r.category}")
        lines.append("------ ----------- ----------- --------- --------- -------------- --------")
        lines.append(f"{100 * self.seconds / total:6.2f} {self.seconds:11.6f} {self.seconds * 1e6 / max(self.calls, 1):11.0f} "
                     f"{self.calls:9d} {self.errors or '':>9} total")
        return "\n".join(lines)

    __str__ = table

    def __repr__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        total = self._base or 1.0
        head = ("<tr><th>syscall</th><th>category</th><th>calls</th><th>errors</th>"
                "<th>seconds</th><th>µs/call</th><th>% time</th></tr>")
        body = "".join(
            f"<tr><td><code>{html.escape(r.syscall)}</code></td><td>{r.category}</td>"
            f"<td style='text-align:right'>{r.calls}</td><td style='text-align:right'>{r.errors or ''}</td>"
            f"<td style='text-align:right'>{r.seconds:.6f}</td>"
            f"<td style='text-align:right'>{r.usecs_per_call:.0f}</td>"
            f"<td style='text-align:right'>{100 * r.seconds / total:.1f}</td></tr>"
            for r in self.rows)
        foot = (f"<tr><th>total</th><th></th><th style='text-align:right'>{self.calls}</th>"
                f"<th style='text-align:right'>{self.errors}</th>"
                f"<th style='text-align:right'>{self.seconds:.6f}</th><th></th><th></th></tr>")
        return f"<table>{head}{body}{foot}</table>"


def _check_category(cat: str | None) -> None:
    if cat is not None and cat not in CATEGORY_NAMES:
        raise ValueError(f"unknown category {cat!r}; choose one of {', '.join(CATEGORY_NAMES)}")


def summarize(records: Iterable[Record]) -> Summary:
    """A strace -c style table of the system calls among ``records`` (most calls first)."""
    calls: Counter = Counter()
    errors: Counter = Counter()
    seconds: Counter = Counter()
    for r in records:
        if not r.is_call:
            continue
        calls[r.syscall] += 1
        if r.failed:
            errors[r.syscall] += 1
        seconds[r.syscall] += r.duration or 0.0
    rows = tuple(SummaryRow(n, category(n), calls[n], errors[n], seconds[n]) for n in calls)
    return Summary(rows).sorted("calls")


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
        _check_category(category)
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
                only: str | None = None) -> list[str]:
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
        if only not in _CATEGORY_LISTS:
            raise ValueError(f"only= must be one of {', '.join(_CATEGORY_LISTS)}, not {only!r}")
        # Our categories, not strace's classes (its %desc would count mmap as "file"). The '?'
        # before each name: skip names this architecture lacks (aarch64 has no open or mkdir).
        argv += ["-e", "trace=" + ",".join("?" + n for n in _CATEGORY_LISTS[only].split())]
    return argv


def _resolve_command(command: str | Sequence[str], args: Sequence[str], env: dict | None,
                     cwd: str | None) -> list[str]:
    argv = shlex.split(command) if isinstance(command, str) else [os.fspath(a) for a in command]
    argv += [os.fspath(a) for a in args]
    if not argv:
        raise ValueError("nothing to trace: the command is empty")
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
    proc = output = None
    started = time.monotonic()
    try:
        output = _temp_output()
        full = strace_argv(exe, output, strsize, only=only) + ["--"] + argv
        # strace stays in our process group: a Jupyter restart (SIGKILL to the kernel's group)
        # takes strace and the traced command with it.
        proc = subprocess.Popen(full, cwd=cwd, env=env, stdin=subprocess.PIPE if data is not None
                                else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc, output)
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
            _drain(proc)
        raise
    finally:
        if proc is not None:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None and not stream.closed:
                    stream.close()
        if output is not None:
            _unlink(output)
    return result.check() if check else result


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


def _wait_attached(pid: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Wait until strace (``proc``) is the ptrace tracer of ``pid`` (TracerPid in its status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return  # strace gave up: the caller reports its messages
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("TracerPid:") and int(line.split()[1]) == proc.pid:
                        return
        except FileNotFoundError:
            return
        time.sleep(0.002)
    raise TraceError(f"strace did not attach to pid {pid} within {timeout:g} s",
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
    import contextlib
    import io

    from ..process import spawn  # here, not at the top: importing labhelper.trace stays light

    exe = strace_path(strace)
    token = uuid.uuid4().hex[:12]
    name = getattr(fn, "__qualname__", None) or repr(fn)
    command = ("python", f"{name}()")
    started = time.monotonic()
    child = proc = output = None
    value = error = None
    printed = io.StringIO()
    try:
        output = _temp_output()
        child = spawn(_call_between_markers, token, fn, args, kwargs, gate=True)
        full = strace_argv(exe, output, strsize, only=only) + ["-p", str(child.pid)]
        proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        _wait_attached(child.pid, proc)
        if proc.poll() is not None:
            messages = proc.stderr.read().decode("utf-8", "backslashreplace")
            _strace_failed([], messages, full, f"{name}() in pid {child.pid}")
        child.release()
        try:
            with contextlib.redirect_stdout(printed):
                value = child.wait(timeout)
        except ChildTimeout as exc:
            _stop(proc, output)
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
    return result.check() if check else result

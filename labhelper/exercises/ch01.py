"""Chapter 01 exercises: the kernel and system calls.

The checks measure this machine (they trace real programs), so they accept what is true *here*:
which call mkdir uses depends on the architecture and the C library, and how many calls
Python makes at start-up depends on its version and installation.
"""
from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import sys
import tempfile

from . import Exercise, right, wrong

# -- what this machine does (measured once per kernel; tests replace these functions) -----------


def _can_trace() -> bool:
    return shutil.which("strace") is not None


@functools.lru_cache(maxsize=None)
def _mkdir_syscall() -> str:
    """The system call `mkdir DIR` uses here to create the directory (traced)."""
    if _can_trace():
        from .. import trace
        with tempfile.TemporaryDirectory(prefix="lh-ch01-") as tmp:
            t = trace.trace(["mkdir", "made-by-mkdir"], cwd=tmp)
        for r in t.calls:
            if r.path == "made-by-mkdir" and r.retval == 0 and r.syscall.startswith("mkdir"):
                return r.syscall
    # Without strace: glibc calls mkdir(2) where the architecture has it; aarch64 only has mkdirat.
    return "mkdirat" if platform.machine() == "aarch64" else "mkdir"


@functools.lru_cache(maxsize=None)
def _python_startup_calls() -> int | None:
    """How many system calls `python -c pass` makes here (this kernel's interpreter)."""
    if not _can_trace():
        return None
    from .. import trace
    return len(trace.trace([sys.executable, "-c", "pass"]))


def _missing_file_errno() -> str:
    """The errno name the kernel gives when Python opens a file that does not exist (traced)."""
    path = "/nonexistent-lh-ch01/file.txt"
    if _can_trace():
        from .. import trace
        t = trace.trace_call(_open_quietly, path)
        found = t.find(path=path)
        if found and found[0].errno:
            return found[0].errno
    try:
        open(path).close()
    except OSError as exc:
        import errno as _errno
        return _errno.errorcode[exc.errno]
    return "none"


def _open_quietly(path: str) -> None:
    try:
        open(path).close()
    except OSError:
        pass


def _name(answer) -> str | None:
    if not isinstance(answer, str):
        return None
    return re.sub(r"\(\s*\)$", "", answer.strip()).lower().removeprefix("sys_")


# -- q1: which system call does mkdir use? -----------------------------------------------------

def _check_mkdir(answer):
    name = _name(answer)
    if name is None:
        return wrong(f"answer with the system call's name as a string, such as 'openat', not "
                     f"{type(answer).__name__}.")
    actual = _mkdir_syscall()
    if name == actual:
        caveat = ""
        if answer.strip().lower().startswith("sys_"):
            caveat = (f" (accepted with a caveat: sys_{actual} is the kernel's C function that implements "
                      f"the call; the system call itself is named {actual}, as strace and the man page "
                      f"write it)")
        return right(f"`mkdir` asks the kernel with {actual}(2); the kernel's VFS then creates the "
                     f"directory in the filesystem{caveat}.")
    if name in ("mkdir", "mkdirat"):
        return wrong("close: that is a real system call for creating directories, but not the one "
                     "this machine's mkdir program makes. Trace it and look.")
    if name in ("open", "openat", "creat", "openat2"):
        return wrong("that call opens or creates *files*; a directory is made with another one. Look "
                     "for the call whose path is the new directory.")
    if name in ("execve", "mmap", "brk", "close", "read", "write", "newfstatat", "fstat"):
        return wrong("every program makes that call; look for the one whose path is the new directory.")
    return wrong("that is not the call that creates the directory. Trace `mkdir NAME` in a "
                 "temporary folder and find the call whose argument is NAME.")


q1 = Exercise(
    "01.1",
    "Which system call does the `mkdir` program use to create a directory on this machine? "
    "Answer with its name, e.g. 'openat' (case and a trailing `()` do not matter).",
    _check_mkdir,
    "Trace it in a temporary folder: `t = trace.trace('mkdir demo', cwd=tmpdir)`, then "
    "`t.find(path='demo')`, or look at `t.summary()` for a name that starts with mkdir.",
    "`[r.syscall for r in trace.trace('mkdir demo', cwd=tmpdir).find(path='demo')]`: on x86_64 "
    "glibc calls `mkdir` (number 83); aarch64 has no mkdir system call, only `mkdirat` "
    "(number 34), which takes a directory fd (AT_FDCWD: the current directory) first.",
)


# -- q2: make the write system call yourself ---------------------------------------------------

MESSAGE = b"hello, kernel\n"


def _uses_raw_syscall(fn) -> bool:
    code = getattr(fn, "__code__", None)
    stack, seen = [code] if code else [], set()
    while stack:
        c = stack.pop()
        seen.update(c.co_names)
        stack.extend(k for k in c.co_consts if hasattr(k, "co_names"))
    return "raw_syscall" in seen


def _write_into_temp_file(fn) -> tuple[object, bytes, str]:
    """Call fn(fd) with fd open on a fresh temporary file; return (its result, the file's bytes,
    the file's path)."""
    with tempfile.TemporaryDirectory(prefix="lh-ch01-") as tmp:
        path = os.path.join(tmp, "written-by-you.txt")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            result = fn(fd)
        finally:
            os.close(fd)
        with open(path, "rb") as fh:
            return result, fh.read(), path


def _traced_write(fn) -> tuple[object, bytes, bool | None]:
    """(fn's result, the bytes in the file, whether strace saw a write(2) to that file or None
    when strace is missing). fn runs in a traced child, so the kernel is watched as it works."""
    if not _can_trace():
        result, data, _ = _write_into_temp_file(fn)
        return result, data, None
    from .. import trace
    t = trace.trace_call(_write_into_temp_file, fn, check=True)
    result, data, path = t.value
    seen = any(r.syscall in ("write", "pwrite64") and r.retval and r.retval > 0 for r in t.find(path=path))
    return result, data, seen


def _check_write(fn):
    if not callable(fn):
        return wrong("pass your function itself: `ch01.q2.check(my_write)`, where `def my_write(fd): ...`.")
    result, data, seen = _traced_write(fn)
    if data != MESSAGE:
        if not data:
            return wrong("the file is still empty: your function wrote nothing to the fd it was given.")
        if MESSAGE.startswith(data):
            return wrong(f"the kernel wrote only the first {len(data)} of the message's {len(MESSAGE)} bytes: "
                         f"write(2) writes as many bytes as its `count` argument (the third) says. Pass the "
                         f"length of your bytes: `len(data)`.")
        if data.startswith(MESSAGE):
            return wrong(f"the kernel wrote {len(data)} bytes, more than the {len(MESSAGE)} of the message: "
                         f"the `count` argument (the third) is larger than your buffer, so the kernel copied "
                         f"whatever lay after it in memory. Pass the length of your bytes: `len(data)`.")
        return wrong(f"the file holds {len(data)} bytes that are not b'hello, kernel\\n' "
                     f"(check the text, and the newline at the end).")
    if result != len(MESSAGE):
        return wrong("the bytes arrived, but your function should return what the system call "
                     "returned: the number of bytes the kernel took.")
    if seen is False:
        return wrong("strace saw no write(2) to the file: how did the bytes get there?")
    if not _uses_raw_syscall(fn):
        return wrong("the file is right, but a library wrapper made the call for you. Make it "
                     "yourself, by number: `syscalls.raw_syscall('write', fd, data, len(data))`.")
    note = "; strace saw your write(2)" if seen else ""
    return right(f"you called the kernel by number ({_write_number()}) and it wrote "
                 f"{len(MESSAGE)} bytes{note}.")


def _write_number() -> str:
    from .. import syscalls
    try:
        return f"write is {syscalls.syscall_number('write')} on {platform.machine()}"
    except (KeyError, NotImplementedError):
        return "write"


q2 = Exercise(
    "01.2",
    "Make the `write` system call yourself: define `my_write(fd)` that writes b'hello, kernel\\n' "
    "to `fd` with `syscalls.raw_syscall` and returns what the kernel returned. Check it with "
    "`ch01.q2.check(my_write)`.",
    _check_write,
    "`raw_syscall(name, *args)` takes the call's arguments in the C order of write(2): "
    "`ssize_t write(int fd, const void *buf, size_t count)`. bytes are passed as a pointer.",
    "```\ndef my_write(fd):\n    data = b'hello, kernel\\n'\n    return syscalls.raw_syscall('write', fd, data, len(data))\n```",
)


# -- q3: how many system calls does starting Python make? ---------------------------------------

TOLERANCE = 0.25


def _check_startup(answer):
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        return wrong(f"answer with a number (how many system calls), not {type(answer).__name__}.")
    actual = _python_startup_calls()
    if actual is None:
        return wrong("this check traces Python, and strace is not installed: apt-get install strace.")
    low, high = actual * (1 - TOLERANCE), actual * (1 + TOLERANCE)
    if answer < low:
        return wrong("too few. Count every system call of `[sys.executable, '-c', 'pass']`, all the "
                     "way from execve to exit_group: `len(trace.trace(...))`.")
    if answer > high:
        return wrong("too many. Trace `[sys.executable, '-c', 'pass']` itself (not a shell or a "
                     "wrapper script around it), and count system calls, not lines of text.")
    return right(f"starting this Python makes about {actual} system calls (your answer is within "
                 f"{TOLERANCE:.0%}): loading shared libraries, reading modules, setting up signals, "
                 f"before running a single line of your code.")


q3 = Exercise(
    "01.3",
    "How many system calls does starting Python and doing nothing (`python -c pass`, with "
    "`sys.executable`) make on this machine? Answer with a number; within 25 % counts.",
    _check_startup,
    "`t = trace.trace([sys.executable, '-c', 'pass'])`; a Trace's `len()` is its number of system "
    "calls; `t.summary()` shows which.",
    "`ch01.q3.check(len(trace.trace([sys.executable, '-c', 'pass'])))`. Most calls are the dynamic "
    "loader mapping libraries (openat, mmap, close) and the import system looking for modules "
    "(newfstatat, openat, read).",
)


# -- q4: what does the kernel answer for a missing file? ----------------------------------------

def _check_errno(answer):
    if isinstance(answer, int) and not isinstance(answer, bool):
        return wrong("that is the errno *number*; answer with its name, the way strace prints it "
                     "(capital letters, starting with E).")
    name = answer.strip().upper() if isinstance(answer, str) else None
    if not name or not name.startswith("E"):
        return wrong("answer with an errno name such as 'EPERM', as a string.")
    actual = _missing_file_errno()
    if name == actual:
        return right(f"openat returned -1 and errno {actual}; Python turned it into "
                     f"FileNotFoundError. Every OSError carries the kernel's errno.")
    if name in ("EACCES", "EPERM"):
        return wrong("that is the answer for a file you may not open; this one does not exist.")
    return wrong("not that one. Trace `open('/nonexistent/x')` in a function and look at the "
                 "errno of the openat call.")


q4 = Exercise(
    "01.4",
    "When Python opens a file that does not exist, which errno does the kernel answer? Give "
    "its name as a string.",
    _check_errno,
    "Trace a function that opens a missing file: `t = trace.trace(open, '/nonexistent/x')` and "
    "look at `t.first('openat').errno` (the exception is in `t.error`).",
    "`trace.trace(open, '/nonexistent/x').first('openat').errno` is 'ENOENT' (No such file or "
    "directory); Python raises FileNotFoundError, whose `.errno` is `errno.ENOENT`.",
)

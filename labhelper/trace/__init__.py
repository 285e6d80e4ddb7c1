"""Watch a program talk to the kernel: strace, parsed into typed records.

Every time a program needs something only the kernel can do (open a file, start a process, map
memory, send a packet) it makes a *system call*: it puts the call's number and arguments in
registers and executes one instruction (``syscall`` on x86_64, ``svc #0`` on aarch64) that
switches the CPU from user mode to kernel mode. strace(1) sees each of those calls through
ptrace(2) and prints one line per call::

    4242  1717171717.123456 openat(AT_FDCWD</root>, "/etc/hostname", O_RDONLY|O_CLOEXEC) = 3</etc/hostname> <0.000021>
    ^pid  ^time (-ttt)       ^name  ^arguments, fds decoded to paths (-yy)            ^return value     ^time inside (-T)

This package runs strace for you (:func:`trace`), on a command or on a Python function in a
forked child, parses every line into a :class:`Record`, merges calls that strace had to print
in two halves (``<unfinished ...>`` / ``<... resumed>``), and summarizes like ``strace -c``
(:meth:`Trace.summary`). :func:`parse` works on any saved strace output.

strace is a *tracer*: the traced program stops at every system call while strace reads and
prints it, so a traced program runs many times slower. The durations it reports include part of
that cost. Tracing shows *what* a program asks of the kernel; to measure *how long* a system
call really takes, see :mod:`labhelper.syscost`.

Its modules, bottom to top (each imports only the ones above it in this list):

- ``categories``: which part of the kernel each system call talks to (file, process, memory, ...);
- ``parser``: strace's lines into :class:`Record` objects; two halves of one call merged;
- ``summary``: calls, errors and time per system call, like ``strace -c``;
- ``runner``: runs strace on a command or a Python function, returns a :class:`Trace`;
- ``__main__``: ``python -m labhelper.trace CMD...`` prints the summary of tracing CMD.

Everything a notebook needs is importable from here: ``from labhelper import trace``, then
``trace.trace(...)``, ``trace.parse(...)``, ``trace.Record``, ``trace.CATEGORY_NAMES``, ...
The package returns data and draws nothing: its pictures are drawn by :mod:`labhelper.teach`.
"""
from __future__ import annotations

from .categories import CATEGORIES, CATEGORY_NAMES, category
from .parser import KINDS, Record, merge, parse, parse_line, split_args, unescape
from .runner import (STRACE_HINT, CommandNotFoundError, Trace, TraceError, strace_argv, strace_path,
                     trace, trace_call)
from .summary import Summary, SummaryRow, summarize

# KINDS, STRACE_HINT and split_args are importable from here too, as they were before the split;
# __all__ is the list it has always been.

__all__ = [
    "Record", "Trace", "Summary", "SummaryRow", "TraceError", "CommandNotFoundError",
    "trace", "trace_call", "parse", "parse_line", "merge", "summarize", "category",
    "CATEGORIES", "CATEGORY_NAMES", "strace_path", "strace_argv", "unescape",
]

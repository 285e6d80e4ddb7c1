"""Read strace's output: each line becomes a :class:`Record`, a small typed object.

strace prints one line per system call (see :mod:`labhelper.trace` for its parts), plus lines
for signals (``--- SIGCHLD {...} ---``) and exits (``+++ exited with 0 +++``). When a call is
interrupted by another traced process, strace prints it in two halves, ``<unfinished ...>``
then ``<... NAME resumed>``: :func:`merge` joins them back into one call.

The arguments are kept as strace printed them (``args_text``) and split at top-level commas on
demand (:func:`split_args`), because their syntax (structures, arrays, flags, decoded fds such
as ``3</etc/hostname>``) differs for each call; :func:`unescape` turns a printed string back
into its bytes. Nothing here runs strace: :func:`parse` reads any saved strace output.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .categories import category

__all__ = ["KINDS", "Record", "parse_line", "parse", "merge", "split_args", "unescape"]

# What a line can be: see Record's docstring.
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

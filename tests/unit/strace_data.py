"""strace output captured on a real machine (tests/unit/data/strace), loaded for the trace tests.

The fixtures were made with ``strace -f -ttt -T -yy -s 64 -o FILE`` (strace 6.1, Debian 12);
three were cut after the Python interpreter's start-up to keep them small. forms.txt gathers
the rarer line forms in one place, including a raw non-UTF-8 byte.
"""
from __future__ import annotations

from pathlib import Path

from labhelper import trace as T

DATA = Path(__file__).parent / "data" / "strace"


def load(name: str, merged: bool = True) -> list[T.Record]:
    """The Records of one fixture file, with the halves of interrupted calls merged (or not)."""
    records = T.parse((DATA / name).read_bytes())
    return T.merge(records) if merged else records


def one(line: str) -> T.Record:
    """The Record of one line of strace output (which must not be empty)."""
    r = T.parse_line(line)
    assert r is not None
    return r

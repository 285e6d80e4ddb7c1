"""A bare fork() whose child answers in a few bytes through a pipe, for tests of fork hooks.

Not labhelper.process.run_in_child: what these tests check is what *any* fork() does to
labhelper's state (its os.register_at_fork hooks), so the child must be a plain one.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable


def child_answer(child: Callable[[], bytes], size: int = 4096) -> bytes:
    """Fork; the child runs ``child()`` and writes what it returns; the parent returns that (b""
    if the child failed before answering)."""
    r, w = os.pipe()
    with warnings.catch_warnings():     # Python 3.12: "multi-threaded, fork() may deadlock";
        warnings.simplefilter("ignore", DeprecationWarning)   # the child only reports and exits
        pid = os.fork()
    if pid == 0:
        try:
            os.write(w, child())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    try:
        return os.read(r, size)
    finally:
        os.close(r)

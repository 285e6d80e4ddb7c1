"""``python -m labhelper.trace CMD...``: trace CMD and print what it asked of the kernel.

A small manual tool: it runs CMD under strace (:func:`labhelper.trace.trace`), then prints the
Trace's one-line description (how CMD ended, how many system calls, how many processes) and the
``strace -c`` style table of its system calls (:meth:`labhelper.trace.Trace.summary`)::

    python -m labhelper.trace ls /
"""
from __future__ import annotations

import sys

from .runner import trace


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - a small manual tool
    """Print the summary of tracing ``argv`` (default: the command line's arguments)."""
    argv = sys.argv[1:] if argv is None else argv
    t = trace(argv)
    print(repr(t))
    print(t.summary().table())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""Count what a trace holds, like ``strace -c``: calls, errors and time per system call.

:func:`summarize` turns a list of :class:`~labhelper.trace.Record` into a :class:`Summary`, one
:class:`SummaryRow` per system call, most called first. A Summary prints as strace -c's table
(and as an HTML table in a notebook), can be sorted, cut to its top rows and filtered by
category. It returns numbers and draws nothing: the bar charts are drawn on the teaching side
(:mod:`labhelper.teach.plots`).
"""
from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ..errors import Refused
from .categories import CATEGORY_NAMES, category, check_category
from .parser import Record

__all__ = ["SummaryRow", "Summary", "summarize"]


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
            raise Refused(f"cannot sort by {by!r}; choose one of {', '.join(sorted(keys))}")
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
        check_category(category)
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

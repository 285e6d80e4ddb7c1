"""The course's charts, drawn from saved data (matplotlib's Agg backend, no display)."""
from __future__ import annotations

import pathlib

import pytest

from labhelper import trace
from labhelper.teach import plots

DATA = pathlib.Path(__file__).parent / "data" / "strace"


def load(name: str) -> list[trace.Record]:
    return trace.merge(trace.parse((DATA / name).read_bytes()))


def test_summary_plot_has_one_bar_per_syscall():
    pytest.importorskip("matplotlib")
    s = trace.summarize(load("shell_children.txt"))
    fig = plots.syscalls(s, top=8)
    ax, bx = fig.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[::-1] == s.names()[:8]  # most called at the top
    assert [t.get_text() for t in bx.get_xticklabels()] == list(s.by_category())

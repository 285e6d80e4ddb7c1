"""The course's charts, drawn from saved data (matplotlib's Agg backend, no display)."""
from __future__ import annotations

import capabilities

from labhelper import trace
from labhelper.teach import plots

from strace_data import load


def test_summary_plot_has_one_bar_per_syscall():
    capabilities.need("matplotlib")
    s = trace.summarize(load("shell_children.txt"))
    fig = plots.syscalls(s, top=8)
    ax, bx = fig.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[::-1] == s.names()[:8]  # most called at the top
    assert [t.get_text() for t in bx.get_xticklabels()] == list(s.by_category())

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


def test_side_by_side_draws_each_row_top_down_with_its_value():
    capabilities.need("matplotlib")
    fig = plots.side_by_side([("container", 0.024, "container"), ("kernel boot", 4.3, "vm")], "ms", "t", scale=1e-3)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["kernel boot", "container"]   # first row on top
    assert [t.get_text() for t in ax.texts] == ["4,300 ms", "24 ms"]
    assert ax.get_xscale() == "log" and [p.get_facecolor() for p in ax.patches][0] != ax.patches[1].get_facecolor()

"""labhelper.trace.summary: calls, errors and time per system call, like strace -c, on the
captured strace output of tests/unit/data/strace. No root needed."""
from __future__ import annotations

import pytest

from labhelper import trace as T
from labhelper.errors import Refused

from strace_data import load


def test_summary_counts_errors_and_time():
    merged = load("shell_children.txt")
    s = T.summarize(merged)
    calls = [r for r in merged if r.is_call]
    assert s.calls == len(calls)
    assert s.errors == sum(r.failed for r in calls)
    assert s.seconds == pytest.approx(sum(r.duration or 0 for r in calls))
    assert s["openat"].calls == sum(r.syscall == "openat" for r in calls)
    assert s["newfstatat"].errors > 0 and s["execve"].calls == 5
    # sorted by calls (largest first), ties by name
    counts = [row.calls for row in s]
    assert counts == sorted(counts, reverse=True)
    assert s.sorted("syscall").names() == sorted(s.names())
    assert s.sorted("seconds").rows[0].seconds == max(r.seconds for r in s)
    with pytest.raises(ValueError, match="cannot sort by") as info:
        s.sorted("bogus")
    assert isinstance(info.value, Refused)
    with pytest.raises(KeyError, match="was not called"):
        s["kexec_load"]
    cats = s.by_category()
    assert sum(cats.values()) == s.calls and list(cats) == [c for c in T.CATEGORY_NAMES if c in cats]
    assert "process" in cats and "file" in cats


def test_summary_table_and_html():
    s = T.summarize(load("cat_hostname.txt"))
    text = s.table()
    assert text.splitlines()[0].startswith("% time") and text.splitlines()[-1].endswith("total")
    assert repr(s) == text and "openat" in text
    html = s._repr_html_()
    assert html.startswith("<table>") and "<code>openat</code>" in html
    top = s.top(3)
    assert len(top) == 3 and "100.00" not in top.table().splitlines()[-1]  # % of the whole trace


def test_summary_filter_keeps_percentages_of_the_whole():
    s = T.summarize(load("shell_children.txt"))
    memory = s.filter("memory")
    assert memory.names() and all(r.category == "memory" for r in memory)
    assert memory.calls == s.by_category()["memory"]
    assert memory.base_seconds == pytest.approx(s.seconds)  # 100 % is still the whole trace
    assert s.filter(None) == s
    with pytest.raises(ValueError, match="unknown category") as info:
        s.filter("disk")
    assert isinstance(info.value, Refused)

"""The system call explorer's table labels its total as the total of the rows shown (issue 18:
"total 128" under a chart of "137 system calls")."""
from __future__ import annotations

import re

from labhelper.teach import widgets
from labhelper.trace.summary import Summary, SummaryRow


def summary(counts: dict[str, int]) -> Summary:
    return Summary(tuple(SummaryRow(name, "file", n, 0, 0.001 * n) for name, n in counts.items())).sorted("calls")


def test_the_total_is_of_the_rows_shown():
    s = summary({f"call{i}": 20 - i for i in range(14)})  # 14 kinds, 189 calls
    html = widgets.shown_table(s, top=12)
    shown = sum(20 - i for i in range(12))
    assert f"<tr><th>total of the 12 shown</th><th></th><th style='text-align:right'>{shown}</th>" in html
    assert "<th>total</th>" not in html
    assert "The 12 system calls made most often, of 14 different ones; 189 calls in all." in html
    assert len(re.findall(r"<tr><td>", html)) == 12


def test_all_rows_shown_say_so():
    s = summary({"read": 3, "write": 2})
    html = widgets.shown_table(s, top=12)
    assert "<tr><th>total of all 2</th><th></th><th style='text-align:right'>5</th>" in html
    assert "most often" not in html

"""Every markdown table of every chapter has rows of the header's width (issue 18).

A hard line break inside a row splits it in two when rendered. The checker is the browser
test's (tests/ui/markdown_tables.py); here it runs over notebooks/*.ipynb in milliseconds.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "ui"))

from markdown_tables import cells, notebook_table_problems, table_problems  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_table_row_has_the_headers_columns(path: Path):
    assert notebook_table_problems(json.loads(path.read_text())) == []


def test_a_row_broken_by_a_line_break_is_seen():
    broken = ("| in the guest | what it says |\n|---|---|\n| `hlt` | HLT exiting |\n"
              "| a load | an EPT violation: KVM marks the address invalid\nentry, so later accesses exit |\n"
              "| an interrupt | external-interrupt exiting |\n")
    problems = table_problems(broken)
    assert len(problems) == 1 and "row 3 has 1 columns, the header 2" in problems[0], problems
    assert table_problems(broken.replace("invalid\nentry", "invalid entry")) == []


def test_what_is_not_a_broken_table():
    assert table_problems("no table | here\n\njust text\n") == []
    assert table_problems("| a | b |\n|:--|--:|\n| 1 | 2 |\n\nafter the blank line: prose | with a pipe\n") == []
    assert table_problems("```\n| a | b |\n|---|---|\n| 1 |\n```\n") == []  # in a code block
    assert table_problems("| a | b |\n|---|---|\n| `x \\| y` | 2 |\n## heading\n") == []  # escaped pipe
    assert cells("| a | b \\| c |") == ["a", "b \\| c"]


def test_a_wrong_delimiter_row_is_seen():
    assert table_problems("| a | b | c |\n|---|---|\n| 1 | 2 | 3 |\n")

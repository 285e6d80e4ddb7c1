"""Markdown tables whose rows do not all have the header's number of columns.

A line break inside a row (an editor's hard wrap) makes GitHub-flavoured Markdown, and so
JupyterLab, end the row there and start another from the rest: one row of a table becomes two,
the second a stray fragment padded with empty cells. Used by tests/unit/test_notebook_tables.py
(every notebook, fast) and by the browser test (the notebook it opened).
"""
from __future__ import annotations

import re

DELIMITER = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
OTHER_BLOCK = re.compile(r"^\s*(#{1,6}\s|>|```|~~~)")


def cells(line: str) -> list[str]:
    """The cells of a table row: split on `|` not escaped as `\\|`, outer pipes dropped."""
    text = line.strip()
    if text.startswith("|"):
        text = text[1:]
    if text.endswith("|") and not text.endswith("\\|"):
        text = text[:-1]
    return [c.strip() for c in re.split(r"(?<!\\)\|", text)]


def table_problems(markdown: str) -> list[str]:
    """One line per row whose number of cells is not its table's header's."""
    lines = markdown.splitlines()
    problems: list[str] = []
    fenced = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and "|" in line and i + 1 < len(lines) and "-" in lines[i + 1] \
                and DELIMITER.match(lines[i + 1]) and ("|" in lines[i + 1] or line.strip().startswith("|")):
            width = len(cells(line))
            if len(cells(lines[i + 1])) != width:
                problems.append(f"table {line.strip()[:60]!r}: the delimiter row has {len(cells(lines[i + 1]))} "
                                f"columns, the header {width}")
            j = i + 2
            # GFM: the table goes on until a blank line or another block starts; every line is a row.
            while j < len(lines) and lines[j].strip() and not OTHER_BLOCK.match(lines[j]):
                if len(cells(lines[j])) != width:
                    problems.append(f"table {line.strip()[:60]!r}: row {j - i - 1} has {len(cells(lines[j]))} "
                                    f"columns, the header {width} (a line break inside a row?): "
                                    f"{lines[j].strip()[:80]!r}")
                j += 1
            i = j
            continue
        i += 1
    return problems


def notebook_table_problems(notebook: dict) -> list[str]:
    """table_problems() of every markdown cell, each prefixed with its cell's index."""
    out = []
    for index, cell in enumerate(notebook.get("cells", [])):
        if cell.get("cell_type") == "markdown":
            out += [f"cell {index}: {p}" for p in table_problems("".join(cell.get("source", "")))]
    return out

"""The notebook side of the lab: start a chapter, the doctor's report, reset.

Every chapter's first cell is::

    from labhelper.teach import lab
    lab.start("03")

which makes this kernel's objects owned by "ch03" and removes what an earlier run of the same
chapter, or any kernel that died (a restart is SIGKILL), left behind.
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass

from .. import cleanup, host, process
from .chapters import chapter, needed_by

__all__ = ["start", "doctor", "Report", "Row", "reset"]


def start(number: str) -> None:
    """Prepare this kernel for chapter ``number``: set the owner of what it creates, clean leftovers.

    Leftovers are this chapter's objects made by this kernel (the cell run again) or by a
    kernel that is gone, and any dead kernel's objects of any chapter. Objects of another live
    kernel of the same chapter (the notebook open twice) stay: they are in use.
    """
    owner = chapter(number).owner
    os.environ["LABHELPER_OWNER"] = owner  # forked children and subprocesses inherit it
    f = host.facts()
    if not (f.root and f.disposable):
        print(f"Chapter {number}: read-only mode. Live cells that change the kernel explain and skip "
              f"(root: {f.root}, disposable: {f.disposable_why}).")
        return
    # "This kernel" is the process whose life the objects belong to: the kernel itself, also
    # for objects its forked children made (they record the kernel's pid, process.lifetime_pid).
    result = cleanup.cleanup(owner=owner, orphans_only=True, created_by=process.lifetime_pid())
    orphans = cleanup.cleanup(orphans_only=True)
    removed = len(result.actions) + len(orphans.actions)
    print(f"Chapter {number} is ready; this kernel's objects belong to {owner!r}."
          + (f" Removed {removed} leftover object(s) of an earlier run." if removed else ""))
    for line in result.failures + orphans.failures:
        print(f"  ! {line}")


def reset(owner: str | None = None) -> cleanup.Result:
    """Remove every object of ours (or ``owner``'s): what `labhelper cleanup` does."""
    return cleanup.cleanup(owner=owner)


@dataclass(frozen=True)
class Row:
    name: str
    ok: bool
    required: bool
    found: str
    what: str
    chapters: str
    fix: str

    @property
    def status(self) -> str:
        return "ok" if self.ok else ("MISSING" if self.required else "missing (optional)")


@dataclass(frozen=True)
class Report:
    rows: tuple[Row, ...]
    case: host.VirtCase

    @property
    def ok(self) -> bool:
        """False if something required is missing (the CLI then exits non-zero)."""
        return all(r.ok or not r.required for r in self.rows)

    def text(self) -> str:
        w = max(len(r.name) for r in self.rows)
        s = max(len(r.status) for r in self.rows)
        lines = [f"{'check':{w}}  {'status':{s}}  found"]
        for r in self.rows:
            lines.append(f"{r.name:{w}}  {r.status:{s}}  {r.found}")
            if not r.ok:
                lines.append(f"{'':{w}}  {'':{s}}  -> needed by {r.chapters}; fix: {r.fix}")
        lines.append(f"\nvirtualization: {self.case.summary}\n  -> {self.case.consequence}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        colour = {"ok": "#1a7f37", "MISSING": "#cf222e"}
        out = ['<table><tr><th style="text-align:left">check</th><th>status</th>'
               '<th style="text-align:left">found</th><th style="text-align:left">if missing</th></tr>']
        for r in self.rows:
            c = colour.get(r.status, "#9a6700")
            note = "" if r.ok else f"needed by {html.escape(r.chapters)}. Fix: {html.escape(r.fix)}"
            out.append(f'<tr><td style="text-align:left">{html.escape(r.what)}</td>'
                       f'<td style="color:{c}">{r.status}</td><td style="text-align:left">{html.escape(r.found)}</td>'
                       f'<td style="text-align:left">{note}</td></tr>')
        out.append("</table>")
        out.append(f"<p><b>Virtualization:</b> {html.escape(self.case.summary)}. "
                   f"{html.escape(self.case.consequence[0].upper() + self.case.consequence[1:])}.</p>")
        return "".join(out)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "checks": [r.__dict__ | {"status": r.status} for r in self.rows],
                "virtualization": self.case.__dict__}


def doctor(f: host.Facts | None = None) -> Report:
    """What this machine offers the course, and what each missing piece means."""
    f = f or host.facts()
    rows = tuple(Row(c.name, c.ok, c.need.required, c.found, c.need.what, needed_by(c.name), host.fix_for(c.name, f))
                 for c in host.checks(f))
    return Report(rows, host.virtualization_case(f))

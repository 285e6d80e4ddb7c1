"""The plan: which objects of the census to remove, and in which order.

The order is marks.ORDER (processes, mounts, links, network namespaces, cgroups, folders, then
records whose object is gone); paths go deepest first. A plan can be narrowed to one owner
(``labhelper cleanup --owner ch05``) or to orphans, objects whose creator no longer runs
(what ``lab.start`` removes: a notebook restarted, or a kernel that died).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import marks
from ..marks import ORDER, Obj
from .inventory import Census, record_of

__all__ = ["Action", "plan", "is_temp_file"]


@dataclass(frozen=True)
class Action:
    verb: str    # what is done: a kind's verb (kill, unmount, rmdir...), or "forget" for a record
    obj: Obj

    def __repr__(self) -> str:
        return f"{self.verb:13} {self.obj.kind} {marks.printable(self.obj.name)}"


def is_temp_file(obj: Obj) -> bool:
    """Something that is nobody's: a temporary file of the ledger (``.KEY.PID.tmp``) a killed
    writer left, a file there that is not a record at all, or an object a killed creator left
    before it could record it (``Obj.nobodys``). Always part of a plan."""
    return (obj.kind == "ledger" and obj.name.startswith(".")) or obj.kind == "ledger-file" or obj.nobodys


_LEDGER_VERBS = {"ledger": "forget", "ledger-file": "set-aside"}


def _verb(kind: str) -> str:
    return _LEDGER_VERBS.get(kind) or marks.kind(kind).verb


def plan(c: Census, owner: str | None = None, orphans_only: bool = False, proc: Path | str = "/proc",
         created_by: int | None = None) -> list[Action]:
    """What cleanup would do, in order. ``owner`` keeps only that owner's objects;
    ``orphans_only`` keeps only objects whose recorded creator no longer runs (or, if
    ``created_by`` is a pid, was that process: a notebook kernel re-running its setup).

    An object without a record of its own is judged by the record that contains it: a child
    cgroup by its parent's, a process by its cgroup's.
    """
    alive = {r.key: r.creator_alive(str(proc)) for r in c.records}
    actions = []
    for obj in c.objects:
        if is_temp_file(obj):  # nobody's: always removed
            actions.append(Action(_verb(obj.kind), obj))
            continue
        rec = record_of(obj, c.records)
        if owner is not None and (obj.owner or (rec.owner if rec else None)) != owner:
            continue
        if orphans_only:
            if rec is None:
                continue
            if alive.get(rec.key, False) and not (created_by is not None and rec.pid == created_by):
                continue
        actions.append(Action(_verb(obj.kind), obj))
    actions.sort(key=_order)
    return actions


def _order(a: Action) -> tuple:
    kind = a.obj.kind
    deep = kind not in _LEDGER_VERBS and marks.kind(kind).deepest_first
    return (ORDER.index(kind), -a.obj.name.count("/") if deep else 0, a.obj.name)

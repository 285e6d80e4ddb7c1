"""The census: every kernel object of ours that exists now, joined with the ledger.

Each kind of object (marks.KINDS) is found by its own concept module's ``find`` function, from
the kernel's state (the mount table, the cgroup trees, /sys/class/net, /run/netns, /proc) and,
for kinds the kernel cannot list by our mark, from the ledger's records. The census then says
whose each object is: its own record's owner, or the owner of the record that contains it (a
child cgroup, a folder or a mount inside a recorded one, a process inside a recorded cgroup).
A record whose object is gone is listed too, as kind "ledger": only the record is left to forget.

Every reader takes its root (``proc``, ``sys_``, ``netns_dir``, ``fs_root``), so the census is
unit-tested against fake trees.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import marks, procfs
from ..marks import KINDS, ORDER, Kind, Obj, Scan
from ..registry import Ledger, Record, ledger

__all__ = ["Census", "census", "record_of", "function_of"]


def function_of(kind: Kind, role: str) -> Callable:
    """The concept module's function named by ``kind.find`` or ``kind.remove`` ("mounts.find_mounts")."""
    module, _, name = getattr(kind, role).rpartition(".")
    return getattr(importlib.import_module(f"labhelper.{module}"), name)


@dataclass
class Census:
    objects: list[Obj]
    records: list[Record]
    problems: list[str]

    def __bool__(self) -> bool:
        return bool(self.objects)

    def __iter__(self):
        return iter(self.objects)

    def __len__(self) -> int:
        return len(self.objects)

    def names(self) -> set[tuple[str, str]]:
        return {(o.kind, o.name) for o in self.objects}

    def table(self) -> str:
        if not self.objects:
            return "nothing of ours exists"
        rows = [(o.kind, marks.printable(o.name), o.owner or "-", marks.printable(o.detail)) for o in self.objects]
        widths = [max(len(r[i]) for r in rows + [("kind", "name", "owner", "detail")]) for i in range(3)]
        lines = [f"{'kind':{widths[0]}}  {'name':{widths[1]}}  {'owner':{widths[2]}}  detail"]
        lines += [f"{k:{widths[0]}}  {n:{widths[1]}}  {w:{widths[2]}}  {d}".rstrip() for k, n, w, d in rows]
        return "\n".join(lines)

    def __repr__(self) -> str:
        # In a notebook the problems (a corrupt ledger file, a ledger only root may read) show
        # under the table; the CLI prints the table alone and the problems on stderr.
        return self.table() + "".join(f"\n  ! {line}" for line in self.problems)


def record_of(obj: Obj, records: list[Record]) -> Record | None:
    """The record that says whose ``obj`` is: its own, else the deepest record of a kind in
    ``Kind.within`` that contains one of ``obj.where`` (a cgroup's children, a mount inside a
    recorded folder, a grandchild process left in a recorded cgroup)."""
    if obj.kind in ("ledger", "ledger-file"):
        return next((r for r in records if r.key == obj.name), None)
    own = next((r for r in records if obj.described_by(r)), None)
    if own is not None:
        return own
    within = marks.kind(obj.kind).within
    best = None
    for r in records:
        if r.kind in within and any(marks.is_under(p, r.name) for p in obj.where):
            if best is None or len(r.name) > len(best.name):
                best = r
    return best


def census(proc: Path | str = "/proc", sys_: Path | str = "/sys", netns_dir: Path | str = marks.NETNS_DIR,
           fs_root: Path | str = "/", the_ledger: Ledger | None = None) -> Census:
    """Every object of ours that exists now, joined with the ledger."""
    the_ledger = the_ledger or ledger()
    records = the_ledger.records()
    scan = Scan(Path(proc), Path(sys_), Path(netns_dir), Path(fs_root), procfs.mountinfo(proc), records)
    # Find every object first, then say whose each is: a finder may add records it read from
    # the objects themselves (a cgroup keeps its own), and a process is judged by its cgroup's.
    found = [obj for kind in KINDS for obj in function_of(kind, "find")(scan)]
    objects: dict[tuple[str, str], Obj] = {}
    for obj in found:
        rec = record_of(obj, records)
        objects[(obj.kind, obj.name)] = dataclasses.replace(obj, owner=rec.owner if rec else None)
    # Records whose object is gone: only the record is left to forget. (A process record whose
    # start time does not match is one of these: the pid now names another process, R7.)
    for r in records:
        found = objects.get((r.kind, r.name))
        if found is None or not found.described_by(r):
            objects[("ledger", r.key)] = Obj("ledger", r.key, f"{r.kind} {r.name} is gone", r.owner)
    # A writer killed between writing its temporary file and renaming it leaves the file.
    for name in the_ledger.stale_temp_files():
        objects[("ledger", name)] = Obj("ledger", name, "a ledger write that never finished")
    # Files in the ledger that are not records (junk, a FIFO, a symlink, half a record...): set
    # aside by cleanup, so that one bad file never stops the census or the rest of cleanup.
    for name, why in the_ledger.bad:
        objects[("ledger-file", name)] = Obj("ledger-file", name, why)
    ordered = sorted(objects.values(), key=lambda o: (ORDER.index(o.kind), o.name))
    return Census(ordered, records, list(the_ledger.problems) + scan.problems)

"""Carrying out a plan: each object removed by its own concept module's remover.

Every remover is idempotent (an object already gone is fine) and works inside
``ledger.removing``, which applies the safety guard and forgets the record once the object is
gone. One object that cannot be removed does not stop the others: its failure is reported and
the next cleanup tries again. A kind may ask to be skipped in a round where removing another
kind failed (Kind.not_after_failed): a folder is not removed while a mount inside it may still
be there (a bind mount of a host folder would be emptied through it).
"""
from __future__ import annotations

from .. import marks
from ..errors import LabError
from ..registry import Ledger, ledger
from .inventory import function_of
from .planner import Action

__all__ = ["execute", "execute_each"]


def execute_each(actions: list[Action], the_ledger: Ledger | None = None) -> list[tuple[Action, str]]:
    """Carry out ``actions`` in order; returns (action, why) for each one that failed.

    On a machine not declared disposable this refuses before anything is touched
    (NotDisposableError)."""
    if not actions:
        return []
    the_ledger = the_ledger or ledger()
    the_ledger.guard("remove kernel objects")
    failures: list[tuple[Action, str]] = []
    failed_kinds: set[str] = set()
    for action in actions:
        obj = action.obj
        try:
            if obj.kind == "ledger":
                the_ledger.forget_file(obj.name)
                continue
            if obj.kind == "ledger-file":
                the_ledger.quarantine(obj.name)
                continue
            kind = marks.kind(obj.kind)
            blocked = failed_kinds.intersection(kind.not_after_failed)
            if blocked:
                failures.append((action, f"skipped: removing a {', '.join(sorted(blocked))} failed in this "
                                         f"round, and one may still be inside"))
                continue
            function_of(kind, "remove")(obj, the_ledger)
        except Exception as exc:  # noqa: BLE001 - one bad object must not stop the others
            failed_kinds.add(obj.kind)
            text = str(exc) if isinstance(exc, (OSError, LabError)) else f"{type(exc).__name__}: {exc}"
            failures.append((action, text))
    return failures


def execute(actions: list[Action], the_ledger: Ledger | None = None) -> list[str]:
    """Carry out ``actions``; returns one line per failure (empty if all went well)."""
    return [f"{a!r}: {text}" for a, text in execute_each(actions, the_ledger)]

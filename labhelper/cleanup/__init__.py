"""Census and cleanup: find every kernel object of ours, and remove exactly those.

*Ours* means carrying one of the project's marks (labhelper.marks): a name starting with
``lh-`` (network namespaces, links), a path below /var/lib/labhelper or /run/labhelper (mounts,
folders), a cgroup below a ``labhelper`` cgroup in any hierarchy, or a process inside one. The
ledger (labhelper.registry) adds who created each object and whether its creator still runs.

Three steps, one module each:

* :mod:`.inventory`: the census, each kind found by its concept module (marks.KINDS);
* :mod:`.planner`: the plan, in dependency order, narrowed to an owner or to orphans;
* :mod:`.executor`: each object removed by its concept module's idempotent remover.

:func:`cleanup` runs them, up to three rounds (a process killed in round one may free a mount
that round two can then remove), and judges success by what exists afterwards. This package
sits above every concept module: it imports them (by the names in marks.KINDS), they never
import it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import RequirementError
from ..marks import ORDER, Obj
from .executor import execute, execute_each
from .inventory import Census, census, record_of
from .planner import Action, plan

__all__ = ["Obj", "Census", "Action", "Result", "census", "plan", "execute", "cleanup", "record_of"]


@dataclass
class Result:
    actions: list[Action]
    failures: list[str]
    problems: list[str]
    dry_run: bool

    def text(self, notes: bool = True) -> str:
        """What was (or would be) done; with ``notes``, the failures and problems after it."""
        if not self.actions:
            text = "nothing to clean up"
        else:
            head = "would do" if self.dry_run else "done"
            text = f"{head}:\n" + "\n".join(f"  {a!r}" for a in self.actions)
        if notes:
            for line in self.failures + self.problems:
                text += f"\n  ! {line}"
        return text

    def __repr__(self) -> str:
        return self.text()

    @property
    def ok(self) -> bool:
        return not self.failures


def cleanup(owner: str | None = None, dry_run: bool = False, orphans_only: bool = False,
            created_by: int | None = None) -> Result:
    """Remove every object of ours (or only ``owner``'s, or only orphans'), then check again.

    Runs the plan up to three times: a process killed in round one may free a mount that
    round two can then remove. Whatever the plan still names after that is reported as a
    failure ("still present"): ``ok`` means the objects are really gone, not just that no call
    failed. ``created_by``: see :func:`plan`.
    """
    done: list[Action] = []
    failed: list[tuple[Action, str]] = []
    c = census()
    seen = list(c.problems)       # what the first look found (e.g. a bad ledger file set aside since)
    for _ in range(3):
        actions = plan(c, owner, orphans_only, created_by=created_by)
        if not actions:
            break
        if dry_run:
            done = actions
            break
        if os.geteuid() != 0:
            # Refuse before the first removal, rather than try each and report EPERM for all.
            raise RequirementError(f"removing the lab's kernel objects needs root ({len(actions)} to remove)",
                                   hint="run it as root: `sudo labhelper cleanup` (a dry run, "
                                        "`labhelper cleanup --dry-run`, shows what it would do)",
                                   missing=("root",))
        failed = execute_each(actions)
        done += [a for a in actions if a not in done]
        c = census()
    # Judge by what exists now: an error about an object that is gone since does not matter;
    # an object still there is a failure even if no call reported one (an "already unmounted"
    # EINVAL, a process that no longer matched its start time and so was not signalled).
    left = {a.obj for a in plan(c, owner, orphans_only, created_by=created_by)} if done and not dry_run else set()
    failures = [f"{a!r}: {text}" for a, text in failed if a.obj in left]
    named = {a.obj for a, _ in failed}
    failures += [f"still present: {obj!r}" for obj in sorted(left, key=lambda o: (ORDER.index(o.kind), o.name))
                 if obj not in named]
    return Result(done, failures, list(dict.fromkeys(seen + c.problems)), dry_run)

"""Exercises: each has a check, a hint and a solution.

Usage in a notebook::

    from labhelper.exercises import ch00
    ch00.q1.check(answer)     # says what is wrong, never the expected answer
    ch00.q1.hint()
    ch00.q1.solution()

A check returns a :class:`CheckResult` (truthy when right) that prints as one line. Checks of
hands-on tasks look at the kernel's state, not only at the value they are given.
"""
from __future__ import annotations

import html
import importlib
from dataclasses import dataclass
from typing import Callable

__all__ = ["Exercise", "CheckResult", "right", "wrong", "cannot_check"]


@dataclass(frozen=True)
class CheckResult:
    """``ok`` is True (right), False (not yet) or None: this machine cannot check the answer
    (e.g. the check must run a VM and there is no /dev/kvm). None is falsy, but never says "wrong"."""
    ok: bool | None
    message: str

    def __bool__(self) -> bool:
        return bool(self.ok)

    @property
    def label(self) -> str:
        return {True: "✅ Correct", False: "❌ Not yet", None: "⚠️ Cannot check here"}[self.ok]

    def __repr__(self) -> str:
        return f"{self.label}: {self.message}"

    def _repr_html_(self) -> str:
        colour = {True: "#1a7f37", False: "#cf222e", None: "#9a6700"}[self.ok]
        return f'<span style="color:{colour}">{html.escape(repr(self))}</span>'


def right(message: str = "well done.") -> CheckResult:
    return CheckResult(True, message)


def wrong(message: str) -> CheckResult:
    return CheckResult(False, message)


def cannot_check(message: str) -> CheckResult:
    """The answer may be right, but this machine lacks what the check needs: say what."""
    return CheckResult(None, message)


@dataclass(frozen=True)
class Text:
    """Hint and solution text; it displays as Markdown in a notebook and plain text elsewhere."""
    title: str
    body: str

    def __repr__(self) -> str:
        return f"{self.title}: {self.body}"

    def _repr_markdown_(self) -> str:
        return f"**{self.title}:** {self.body}"


@dataclass(frozen=True)
class Exercise:
    """One exercise. ``checker(answer)`` returns a CheckResult; it must not print the answer."""
    id: str
    task: str
    checker: Callable[..., CheckResult]
    hint_text: str
    solution_text: str

    def check(self, *answer, **kwargs) -> CheckResult:
        if answer and answer[0] is Ellipsis:
            return wrong("replace the ... with your answer, then run the cell again.")
        try:
            return self.checker(*answer, **kwargs)
        except Exception as exc:  # a learner's odd answer must give a message, not a traceback
            return wrong(f"your answer could not be checked ({type(exc).__name__}: {exc}).")

    def hint(self) -> Text:
        return Text("Hint", self.hint_text)

    def solution(self) -> Text:
        return Text("Solution", self.solution_text)

    def __repr__(self) -> str:
        return f"Exercise {self.id}: {self.task}"


def __getattr__(name: str):
    # `from labhelper.exercises import ch01` imports the chapter's module on first use.
    if name.startswith("ch") and name[2:].isdigit():
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(name)

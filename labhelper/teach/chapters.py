"""The course's chapters, in one table: what each teaches, and what it needs from this machine.

The order is the seed's: the kernel, the hypervisor, Docker's kernel features, the comparison.
Every other place that speaks of chapters (the course map, the doctor's "needed by", the
chapter explorer, ``lab.start``) reads this table; a new chapter is one row here.

The table also lists chapters that are not written yet. A chapter *exists* when its notebook
does (``NN-*.ipynb`` in the course's notebooks folder): :func:`exists` and :func:`available`
say which, and every place that shows a chapter to a learner asks them, so that a chapter
still to come is shown as coming, never as if it could be opened.

``needs`` names rows of :data:`labhelper.host.NEEDS`. Without one of them a chapter's live
cells explain what is missing and skip; nothing else of the chapter changes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from .. import host
from ..errors import LabError, Refused

__all__ = ["Chapter", "CHAPTERS", "chapter", "needing", "needed_by", "notebooks_folder", "exists", "available",
           "mention", "up_next", "course_notebooks", "trust"]

_LIVE = ("root", "disposable")  # a chapter that changes kernel state needs both


class Chapter(NamedTuple):
    number: str              # "03"
    slug: str                # "namespaces": notebooks/03-namespaces.ipynb
    what: str                # one line: what a learner does in it
    part: str                # the seed's part it belongs to
    needs: tuple[str, ...]   # names in host.NEEDS

    @property
    def notebook(self) -> str:
        return f"{self.number}-{self.slug}.ipynb"

    @property
    def owner(self) -> str:
        """The ledger owner of what this chapter's kernel creates (``lab.start``)."""
        return f"ch{self.number}"


CHAPTERS: tuple[Chapter, ...] = (
    Chapter("00", "start-here", "What this lab is; the doctor; exercises; reset", "the lab", _LIVE),
    Chapter("01", "kernel-and-system-calls", "User vs kernel mode; open() traced to openat; what a syscall costs",
            "the kernel", ("strace",)),
    Chapter("02", "hypervisors", "Type 1 vs 2; trap-and-emulate vs paravirtual; a real VM on /dev/kvm",
            "virtualization", ("kvm",)),
    Chapter("03", "namespaces", "The eight namespaces made and observed; PID 1; propagation; docker exec",
            "Docker's kernel features", (*_LIVE, "namespaces", "userns")),
    Chapter("04", "network-namespaces", "An empty network stack; veth, a bridge, two containers talking",
            "Docker's kernel features", (*_LIVE, "namespaces", "nft", "ping")),
    Chapter("05", "cgroups", "Memory (OOM), CPU quota, pids (fork bomb), I/O; v1 and v2",
            "Docker's kernel features", (*_LIVE, "cgroups")),
    Chapter("06", "union-filesystems", "overlayfs, copy-up, whiteouts; image layers; docker diff",
            "Docker's kernel features", (*_LIVE, "overlayfs")),
    Chapter("07", "a-container-by-hand", "chroot and its escape; pivot_root; docker run step by step; seccomp",
            "Docker's kernel features", (*_LIVE, "namespaces", "cgroups", "overlayfs", "nft")),
    Chapter("08", "containers-vs-vms", "The seed's question answered with measurements", "the comparison",
            (*_LIVE, "namespaces", "cgroups", "overlayfs", "kvm")),
)


def chapter(number: str) -> Chapter:
    """The chapter numbered ``number`` ("03")."""
    for c in CHAPTERS:
        if c.number == number:
            return c
    raise Refused(f"there is no chapter {number!r}; the chapters are "
                  f"{', '.join(c.number for c in CHAPTERS)}")


def needing(name: str) -> tuple[Chapter, ...]:
    """The chapters whose live cells need ``name`` (a row of host.NEEDS)."""
    if name not in host.NEEDS:
        raise Refused(f"unknown requirement {name!r}; known: {', '.join(host.NEEDS)}")
    return tuple(c for c in CHAPTERS if name in c.needs)


# Needs that no single chapter lists because everything depends on them.
_EVERYWHERE = {"python": "every chapter", "dot": "every diagram"}


def needed_by(name: str) -> str:
    """Who needs ``name``, in words: "chapters 03, 04, 07 and 08"."""
    if name in _EVERYWHERE:
        return _EVERYWHERE[name]
    numbers = [c.number for c in needing(name)]
    if not numbers:
        return "no chapter yet"
    if len(numbers) == 1:
        return f"chapter {numbers[0]}"
    return f"chapters {', '.join(numbers[:-1])} and {numbers[-1]}"


# ---------------------------------------------------------------------------------------------
# Which chapters exist: those whose notebook is in the course's notebooks folder

#: Where the lab VM's JupyterLab serves the chapters from (scripts/provision.sh --lab-vm).
LAB_VM_NOTEBOOKS = Path("/var/lib/labhelper-notebooks")


def _has_chapters(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("[0-9][0-9]-*.ipynb"))


def notebooks_folder() -> Path | None:
    """The course's notebooks folder: ``$LABHELPER_NOTEBOOKS`` if set; else the checkout's
    ``notebooks/`` beside this package (``make lab``, the tests); else the lab VM's copy
    (/var/lib/labhelper-notebooks); else the current folder, where a notebook's kernel runs,
    if it holds chapters. None when none of them holds a chapter."""
    if os.environ.get("LABHELPER_NOTEBOOKS"):
        return Path(os.environ["LABHELPER_NOTEBOOKS"])
    for folder in (Path(__file__).resolve().parents[2] / "notebooks", LAB_VM_NOTEBOOKS, Path.cwd()):
        if _has_chapters(folder):
            return folder
    return None


def exists(number: str, folder: str | os.PathLike | None = None) -> bool:
    """Whether chapter ``number`` is written: its notebook, ``NN-*.ipynb``, is in ``folder``
    (default: :func:`notebooks_folder`). Where no notebooks folder is found at all, every
    chapter of the table counts as existing (nothing tells otherwise)."""
    chapter(number)  # refuses an unknown number
    where = Path(folder) if folder is not None else notebooks_folder()
    if where is None:
        return True
    return any(where.glob(f"{number}-*.ipynb"))


def available(folder: str | os.PathLike | None = None) -> tuple[Chapter, ...]:
    """The chapters that exist, in order (see :func:`exists`)."""
    return tuple(c for c in CHAPTERS if exists(c.number, folder))


def mention(number: str, folder: str | os.PathLike | None = None) -> str:
    """How a text refers to a chapter: "chapter 05", or "chapter 07 (coming)" while it is not written."""
    return f"chapter {number}" if exists(number, folder) else f"chapter {number} (coming)"


def up_next(number: str, folder: str | os.PathLike | None = None) -> str:
    """The "Next:" line at the end of chapter ``number``, from what exists."""
    later = [c for c in CHAPTERS if c.number > chapter(number).number]
    if not later:
        return "This was the last chapter."
    c = later[0]
    title = c.slug.replace("-", " ").capitalize()
    if exists(c.number, folder):
        return f"Next: {c.number} · {title}."
    return f"Next: {c.number} · {title}, coming: this chapter is not written yet."


# ---------------------------------------------------------------------------------------------
# Trust: the course's own notebooks show their committed outputs (diagrams) before any cell runs

def course_notebooks(folder: str | os.PathLike, originals: str | os.PathLike | None = None) -> list[Path]:
    """The course's own chapter notebooks in ``folder``: the files ``NN-slug.ipynb`` named by the
    chapter table, and with ``originals`` (the course's notebooks folder, when ``folder`` is a
    copy of it) only those whose bytes are the original's. Nothing else: not a learner's own
    notebook, not a file the course does not ship."""
    folder = Path(folder)
    found = []
    for c in CHAPTERS:
        path = folder / c.notebook
        if not path.is_file() or path.is_symlink():
            continue
        if originals is not None:
            original = Path(originals) / c.notebook
            if not original.is_file() or original.read_bytes() != path.read_bytes():
                continue
        found.append(path)
    return found


def trust(folder: str | os.PathLike, originals: str | os.PathLike | None = None, jupyter: str | os.PathLike = "jupyter",
          env: dict | None = None) -> list[Path]:
    """Sign the course's own notebooks in ``folder`` (:func:`course_notebooks`) with ``jupyter
    trust``, so that JupyterLab shows their committed outputs (SVG, HTML) before anything runs.
    ``jupyter`` and ``env`` must be those of the server that will serve them: the signatures
    are kept in that user's Jupyter data folder. Returns the files signed."""
    import subprocess
    files = course_notebooks(folder, originals)
    if files:
        result = subprocess.run([str(jupyter), "trust", *map(str, files)], env=env, capture_output=True,
                                text=True, timeout=120)
        if result.returncode != 0:
            raise LabError(f"jupyter trust failed ({result.returncode}): {result.stderr.strip()[-500:]}",
                           hint="the notebooks still open; their diagrams appear once their cells run")
    return files

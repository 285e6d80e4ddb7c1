"""The course's chapters, in one table: what each teaches, and what it needs from this machine.

The order is the seed's: the kernel, the hypervisor, Docker's kernel features, the comparison.
Every other place that speaks of chapters (the course map, the doctor's "needed by", the
chapter explorer, ``lab.start``) reads this table; a new chapter is one row here.

``needs`` names rows of :data:`labhelper.host.NEEDS`. Without one of them a chapter's live
cells explain what is missing and skip; nothing else of the chapter changes.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import host
from ..errors import Refused

__all__ = ["Chapter", "CHAPTERS", "chapter", "needing", "needed_by"]

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
    Chapter("07", "a-container-by-hand", "chroot and its escape; pivot_root; /proc, /dev; capabilities",
            "Docker's kernel features", (*_LIVE, "namespaces", "cgroups", "overlayfs")),
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

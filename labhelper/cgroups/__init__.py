"""cgroups: the kernel's control groups, which group processes, limit what they use, and let
the whole group be found and killed at once.

Every cgroup of the course lives at or below a cgroup named ``labhelper`` (marks.CGROUP_PARENT)
in a mounted hierarchy: under cgroup v1 there is one hierarchy per controller (memory, pids,
cpu...), under cgroup v2 a single one for all. A process in a lab cgroup is a lab process: that
membership is the mark by which cleanup knows it may kill it (a ledger record alone is never
enough), and it survives the crash of whoever started the process.

The parts:

* ``tree``    the verbs every chapter needs to keep track of processes (create, add, procs,
              kill, remove), and lab cgroups as objects of kind "cgroup" (census and removal);
* ``limits``  limits checked before anything is written (R20), and the stats' shape;
* ``files``   reading and writing cgroup files, errors that name the file and the value;
* ``v1``, ``v2``  the same verbs (apply limits, stats, freeze) for each version;
* ``group``   chapter 05's groups: ``group(name)`` on whichever version limits here;
* ``delegation``  where the lab's cgroups may go under systemd (a delegated subtree), and the
              step that prepares one (``python -m labhelper.cgroups.delegate -- COMMAND``).
"""
from __future__ import annotations

from . import devices
from .group import Group, existing, group, limits_of, place, tree_of, version
from .limits import Limits, Stats, check, format_size, parse_size
from .tree import add, create, find_cgroups, hierarchy, kill, procs, remove, remove_cgroup, remove_empty_parents

__all__ = ["hierarchy", "create", "add", "procs", "kill", "remove", "find_cgroups", "remove_cgroup",
           "Group", "group", "version", "place", "tree_of", "limits_of", "Limits", "Stats", "check", "parse_size",
           "format_size", "devices", "existing", "remove_empty_parents"]

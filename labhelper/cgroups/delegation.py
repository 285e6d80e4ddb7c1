"""Where the lab's cgroups may go on cgroup v2, and how a service gets such a place (delegation).

On v2 a program may manage only a subtree that was handed to it. Under systemd every cgroup
above belongs to systemd, and a service gets a subtree of its own with ``Delegate=yes``: its
cgroup (``/sys/fs/cgroup/system.slice/labhelper-jupyter.service``) is then the service's to
divide. Two kernel rules decide how:

* a controller is usable in a cgroup only if the parent enables it in ``cgroup.subtree_control``;
* a cgroup that enables controllers for its children may hold no process itself ("no internal
  processes"): processes live in leaves.

So the service's processes move out of its cgroup into a leaf, ``server``; the service enables
the controllers in its own cgroup; the lab's parent cgroup is ``labhelper`` beside ``server``;
and the notebook kernels, children of the server, are told where it is (LABHELPER_CGROUP_ROOT).
That is what ``python -m labhelper.cgroups.delegate -- COMMAND`` does before it becomes COMMAND,
in a cgroup systemd marked as delegated (``trusted.delegate``); the lab VM's unit runs JupyterLab
so, and so does `make lab` (under `systemd-run --scope -p Delegate=yes` on a systemd host). Where the process sits at the root of the hierarchy (no
systemd: CI, this course's test machines), the root is the lab's place and nothing is moved.
If the step fails, the command starts all the same, without a delegated place.
"""
from __future__ import annotations

import os
import sys

from .. import procfs
from ..errors import LabError
from . import files
from .v2 import WANTED

__all__ = ["ROOT_ENV", "v2_mount", "base", "own_cgroup", "delegated", "prepare", "main"]

ROOT_ENV = "LABHELPER_CGROUP_ROOT"
LEAF = "server"


def v2_mount(table=None) -> str | None:
    """Where the cgroup2 hierarchy is mounted (None: not at all)."""
    table = procfs.mountinfo() if table is None else table
    return next((m.mountpoint for m in table if m.fstype == "cgroup2"), None)


def base(mount: str) -> str:
    """The folder the lab's parent cgroup goes in, in the v2 hierarchy mounted at ``mount``: the
    delegated cgroup named by LABHELPER_CGROUP_ROOT, if it is a folder of that hierarchy, else
    the hierarchy's root."""
    root = os.environ.get(ROOT_ENV)
    if root:
        root = os.path.normpath(root)
        if (root == mount or root.startswith(mount.rstrip("/") + "/")) and os.path.isdir(root):
            return root
    return mount


def own_cgroup(mount: str, proc: str = "/proc") -> str:
    """This process's cgroup folder in the v2 hierarchy mounted at ``mount``."""
    for entry in procfs.cgroups_of("self", proc):
        if entry.hierarchy == "0" and not entry.controllers:
            return os.path.normpath(os.path.join(mount, entry.path.lstrip("/")))
    return mount


def prepare(mount: str | None = None) -> str:
    """Make this process's own v2 cgroup the lab's place: move the process into a leaf, enable
    the controllers its parent gives it for its children, and return the folder."""
    mount = mount or v2_mount()
    if mount is None:
        return ""                                  # no cgroup v2: v1 needs no delegation
    own = own_cgroup(mount)
    if own == mount:
        return mount                               # the root: exempt from the rule, nothing to move
    if not delegated(own):
        # Root could write there anyway: but then the lab would rearrange a cgroup that systemd
        # manages, and systemd would undo it or fail. Only a subtree handed over is the lab's.
        raise LabError(f"{own} was not delegated to this process (systemd marks a delegated cgroup with the "
                       "trusted.delegate attribute)",
                       hint="run it as a service with Delegate=yes, or: systemd-run --scope -p Delegate=yes ...")
    leaf = os.path.join(own, LEAF)
    os.makedirs(leaf, exist_ok=True)
    files.write(leaf, "cgroup.procs", os.getpid())
    given = (files.read(own, "cgroup.controllers") or "").split()
    active = (files.read(own, "cgroup.subtree_control") or "").split()
    wanted = [c for c in WANTED if c in given and c not in active]
    if wanted:
        files.write(own, "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
    return own


def delegated(folder: str) -> bool:
    """Did systemd delegate this cgroup? (It sets trusted.delegate=1 on it, since systemd 251;
    user.delegate where it cannot set trusted.* attributes.)"""
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(folder, name).strip() == b"1":
                return True
        except OSError:
            continue
    return False


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.exit("usage: python -m labhelper.cgroups.delegate -- COMMAND [ARGS...]")
    try:
        place = prepare()
    except Exception as exc:  # noqa: BLE001 - the course must start even where this step cannot
        # Without a delegated place chapter 05 says clearly what is missing; without JupyterLab
        # the learner would have nothing at all (and systemd would give up restarting it).
        print(f"labhelper.cgroups.delegation: the lab gets no delegated cgroup ({exc}); starting anyway",
              file=sys.stderr, flush=True)
        place = ""
    if place:
        os.environ[ROOT_ENV] = place
    os.execvp(argv[0], argv)


"""Chapter 03 exercises: give a process namespaces of its own, and prove it from the kernel.

Each check reads the kernel's state, not only the value it is given: the namespace links in
/proc/PID/ns, the pid list in /proc/PID/status, the mount table in /proc/PID/mountinfo, the id
map in /proc/PID/uid_map, and, through setns(2), the hostname inside.
"""
from __future__ import annotations

import os
import socket

from .. import namespaces, procfs
from . import Exercise, right, wrong

__all__ = ["q1", "q2", "q3", "q4"]


def _pid_of(answer) -> int | None:
    """The pid of a namespaces.Held (or a pid given as a number), if the process still runs."""
    pid = getattr(answer, "pid", answer)
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return None
    return pid if os.path.isdir(f"/proc/{pid}") else None


def _other(kind: str, pid: int) -> bool:
    """Is process ``pid`` in another ``kind`` namespace than this one?"""
    return namespaces.ids(pid).get(kind) != namespaces.ids().get(kind)


_NOT_A_PROCESS = ("pass the process: what namespaces.hold(...) returned (it must still run: do not close it "
                  "before the check).")


# --- q1: a hostname of its own ---------------------------------------------------------------------

def _check_hostname(held) -> object:
    pid = _pid_of(held)
    if pid is None:
        return wrong(_NOT_A_PROCESS)
    if not _other("uts", pid):
        return wrong("that process shares this machine's UTS namespace: its hostname *is* this machine's. "
                     "Which namespace holds the hostname?")
    inside = namespaces.enter(pid, ["uts"], socket.gethostname)
    if inside != "ex1":
        return wrong(f"its own UTS namespace, yes, but its hostname is {inside!r}, not 'ex1'.")
    if socket.gethostname() == "ex1":
        return wrong("this machine's own hostname is 'ex1' now: the change reached the host. Change it only "
                     "inside a new UTS namespace.")
    return right(f"inside: 'ex1'; this machine: {socket.gethostname()!r}. Same kernel, two hostnames.")


q1 = Exercise(
    "03.1",
    "Start a process whose hostname is 'ex1', without changing this machine's: `held = namespaces.hold(..., "
    "hostname='ex1')`, then `ch03.q1.check(held)`. The check reads the hostname inside, through setns.",
    _check_hostname,
    "The hostname lives in the UTS namespace. `namespaces.hold(names, hostname=...)` takes the list of "
    "namespaces to make new.",
    "`held = namespaces.hold(['uts'], hostname='ex1')`; `ch03.q1.check(held)`; then `held.close()`.",
)


# --- q2: PID 1 ---------------------------------------------------------------------------------------

def _nspids(pid: int) -> list[int]:
    for line in procfs.read_text(f"/proc/{pid}/status").splitlines():
        if line.startswith("NSpid:"):
            return [int(p) for p in line.split()[1:]]
    return []


def _check_pid_one(held) -> object:
    pid = _pid_of(held)
    if pid is None:
        return wrong(_NOT_A_PROCESS)
    chain = _nspids(pid)          # its pid in each PID namespace from ours down to its own
    if not _other("pid", pid):
        return wrong(f"process {pid} is in this notebook's PID namespace, not one of its own. Start it in a new one.")
    if chain[-1] != 1:
        return wrong(f"it is in a new PID namespace, but it is number {chain[-1]} there, not the first process.")
    return right(f"/proc/{pid}/status says NSpid: {' '.join(map(str, chain))}: pid {chain[0]} out here, 1 inside "
                 "its own PID namespace.")


q2 = Exercise(
    "03.2",
    "Start a process that is PID 1 of a PID namespace of its own, and pass it to `ch03.q2.check`. The check "
    "reads the NSpid line of /proc/PID/status: its pid in every PID namespace it is in.",
    _check_pid_one,
    "`namespaces.hold(['pid'])`: the first process made in a new PID namespace is its number 1.",
    "`held = namespaces.hold(['pid'])`; `ch03.q2.check(held)`; `held.close()`.",
)


# --- q3: a mount only one process sees ------------------------------------------------------------------

def _check_private_mount(held) -> object:
    pid = _pid_of(held)
    if pid is None:
        return wrong(_NOT_A_PROCESS)
    if not _other("mnt", pid):
        return wrong("that process shares this machine's mount namespace: a mount it made would be seen here too.")
    # The mount on top at /mnt in its namespace (the last one listed there), and its filesystem,
    # named by its device number: a tmpfs is a filesystem of its own, so if this machine saw the
    # same one mounted anywhere, its device number would be in our mount table too. (/mnt may be
    # a mount point here already, e.g. a cloud VM's scratch disk: that does not matter.)
    theirs = [m for m in procfs.mountinfo(pid=pid) if m.mountpoint == "/mnt"]
    if not theirs or theirs[-1].fstype != "tmpfs":
        return wrong("its own mount namespace, yes, but no tmpfs is mounted on /mnt in it. "
                     "Mount one there, from inside (namespaces.enter).")
    seen_here = [m.mountpoint for m in procfs.mountinfo() if m.device == theirs[-1].device]
    if seen_here:
        return wrong(f"that tmpfs is mounted out here too (on {seen_here[0]}): the mount reached this machine.")
    return right(f"/proc/{pid}/mountinfo has a tmpfs (device {theirs[-1].device}) on /mnt; this machine's mount table "
                 "does not have it anywhere.")


q3 = Exercise(
    "03.3",
    "Give a held process (with its own mount namespace) a tmpfs on /mnt that this machine does not see, then "
    "`ch03.q3.check(held)`. The check compares /proc/PID/mountinfo with this machine's.",
    _check_private_mount,
    "`namespaces.enter(held.pid, ['mnt'], fn)` runs fn inside its mount namespace; in fn, "
    "`syscalls.mount('ex3', '/mnt', 'tmpfs')`.",
    "```\nheld = namespaces.hold(['mnt'])\nnamespaces.enter(held.pid, ['mnt'], syscalls.mount, 'ex3', '/mnt', 'tmpfs')\n"
    "ch03.q3.check(held)\nheld.close()   # the mount goes with its namespace\n```",
)


# --- q4: root inside, nobody outside --------------------------------------------------------------------

def _check_uid_outside(held, answer=None) -> object:
    pid = _pid_of(held)
    if pid is None:
        return wrong(_NOT_A_PROCESS + " Then the uid, as the second argument.")
    if not _other("user", pid):
        return wrong("that process is in this machine's user namespace: uid 0 there is the real root.")
    lines = procfs.read_text(f"/proc/{pid}/uid_map").split()
    if len(lines) < 3:
        return wrong("its user namespace maps no uid at all yet.")
    inside, outside = int(lines[0]), int(lines[1])
    if isinstance(answer, bool) or not isinstance(answer, int):
        return wrong("the second argument is the uid outside (a number) that root inside the namespace stands for.")
    if inside != 0:
        return wrong("in that namespace the first uid mapped is not 0: no root inside.")
    if outside == 0:
        return wrong("root inside that namespace is uid 0 outside, the real root: it was made by root with "
                     "uid=None. Hold one made the default way (as nobody) and ask again.")
    if answer != outside:
        return wrong("not that one: /proc/PID/uid_map says it (inside, outside, how many).")
    return right(f"uid 0 inside is uid {outside} outside: root in there, {'nobody' if outside == 65534 else outside} here.")


q4 = Exercise(
    "03.4",
    "In a held process with its own user namespace, root inside is some unprivileged uid outside. Which? "
    "`ch03.q4.check(held, uid)`: the check reads /proc/PID/uid_map.",
    _check_uid_outside,
    "`cat /proc/PID/uid_map` has three numbers per line: the first uid inside, the first uid outside, how many.",
    "`held = namespaces.hold(['user'])`; `ch03.q4.check(held, int(open(f'/proc/{held.pid}/uid_map').read().split()[1]))`"
    " (65534, nobody, unless hold() was told another uid).",
)

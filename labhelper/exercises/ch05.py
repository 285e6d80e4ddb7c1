"""Chapter 05 exercises: set limits on a group, and prove them by what the kernel does.

Each check reads the group's files back from the kernel and then measures: a CPU limit is right
when a busy loop inside gets that share of a CPU, a memory limit when one allocation survives
and a bigger one is OOM-killed, a pids limit when exactly that many processes can exist.
"""
from __future__ import annotations

import os
import time

from .. import cgroups
from ..errors import ChildTimeout, LabError
from . import Exercise, right, wrong

__all__ = ["q1", "q2", "q3", "q4"]

_NOT_A_GROUP = "pass the group: what cgroups.group(...) returned (do not remove it before the check)."


def _group(g) -> cgroups.Group | None:
    if not isinstance(g, cgroups.Group) or not os.path.isdir(g.path):
        return None
    return g


# --- q1: 30% of a CPU ---------------------------------------------------------------------------------

def _busy(seconds: float) -> tuple[float, float]:
    start_cpu, start = time.process_time(), time.monotonic()
    while time.monotonic() - start < seconds:
        pass
    return time.process_time() - start_cpu, time.monotonic() - start


def _check_cpu(g) -> object:
    g = _group(g)
    if g is None:
        return wrong(_NOT_A_GROUP)
    cpu = cgroups.limits_of(g).cpu
    if cpu is None:
        return wrong("the group has no CPU limit: its quota is 'max'.")
    if abs(cpu - 0.3) > 0.005:
        return wrong(f"the group's quota is {cpu:g} of a CPU, not 0.3.")
    used, wall = g.run(_busy, 2.0)
    share = used / wall
    if not 0.2 <= share <= 0.36:
        return wrong(f"the quota says 0.3, but a busy loop inside got {share:.2f} of a CPU: is the loop in the group?")
    return right(f"a busy loop in the group got {share:.2f} of a CPU over {wall:.1f} s: the quota holds.")


q1 = Exercise(
    "05.1",
    "Hold the processes of a group to 30% of one CPU: `g = cgroups.group('ex1')`, set the limit, then "
    "`ch05.q1.check(g)`. The check reads the quota back and runs a busy loop in the group for 2 s.",
    _check_cpu,
    "A CPU limit is a quota of CPU time per period: `g.limit(cpu=...)` takes it in CPUs (0.5 is half of one).",
    "`g.limit(cpu=0.3)`: on v2 it writes `30000 100000` to cpu.max; on v1 30000 to cpu.cfs_quota_us "
    "(with 100000 in cpu.cfs_period_us).",
)


# --- q2: a limit between two allocations ----------------------------------------------------------------

def _allocate(mib: int) -> int:
    block = bytearray(mib * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return mib


def _check_memory(g) -> object:
    g = _group(g)
    if g is None:
        return wrong(_NOT_A_GROUP)
    if cgroups.limits_of(g).memory is None:
        return wrong("the group has no memory limit.")
    before = g.stats().oom_kills or 0
    try:
        g.run(_allocate, 32, timeout=120)
    except ChildTimeout:
        return wrong("a process asking for 32 MiB did not finish in 2 minutes: is it swapping? (add swap=0)")
    except LabError:
        return wrong("a process asking for 32 MiB was killed: the limit is too low.")
    try:
        g.run(_allocate, 128, timeout=120)
        return wrong("a process asking for 128 MiB finished: the limit is too high (or swap absorbs it: add "
                     "swap=0).")
    except LabError:
        pass
    if (g.stats().oom_kills or 0) <= before:
        return wrong("the 128 MiB process died, but the group's OOM counter did not move: something else killed it.")
    return right("32 MiB fits, 128 MiB is OOM-killed, and the kernel counted the kill in the group.")


q2 = Exercise(
    "05.2",
    "Give a group a memory limit such that a process allocating 32 MiB finishes and one allocating 128 MiB is "
    "OOM-killed; then `ch05.q2.check(g)`. The check runs both in the group and reads its OOM counter.",
    _check_memory,
    "The limit must sit between the two, with some room above 32 MiB: what the process copies or allocates besides "
    "its 32 MiB is charged too.",
    "`g.limit(memory='64M', swap=0)` (swap=0: pages cannot escape to swap instead).",
)


# --- q3: exactly ten processes ----------------------------------------------------------------------------

def _fork_many(n: int) -> int:
    started = 0
    children = []
    for _ in range(n):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            time.sleep(1)
            os._exit(0)
        children.append(pid)
        started += 1
    for pid in children:
        os.waitpid(pid, 0)
    return started


def _check_pids(g) -> object:
    g = _group(g)
    if g is None:
        return wrong(_NOT_A_GROUP)
    limit = cgroups.limits_of(g).pids
    if limit is None:
        return wrong("the group has no pids limit: any number of processes may start.")
    started = g.run(_fork_many, 30)
    if started + 1 != 10:
        return wrong(f"a process in the group could start {started} children, so the group held {started + 1} "
                     "processes at once, not 10.")
    return right("one process and 9 children: the 10th fork was refused (EAGAIN), a fork bomb would stop there.")


q3 = Exercise(
    "05.3",
    "Let a group hold at most 10 processes at once; then `ch05.q3.check(g)`. The check starts a process in the "
    "group that forks as many children as it can.",
    _check_pids,
    "Which controller counts processes? The one a fork bomb cannot get past.",
    "`g.limit(pids=10)`: the process itself counts, so it can fork 9 children.",
)


# --- q4: which version, which file ----------------------------------------------------------------------

def _check_file(answer) -> object:
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        return wrong("answer with a pair: (version, file name), such as (1, 'memory.limit_in_bytes').")
    ver, name = answer
    real = cgroups.version()
    want = "memory.max" if real == 2 else "memory.limit_in_bytes"
    if ver not in (1, 2):
        return wrong("the version is 1 or 2.")
    if ver != real:
        return wrong(f"this machine limits through cgroup v{real}, not v{ver}: look at cgroups.version() "
                     "or at the mounts of type cgroup and cgroup2.")
    if str(name).strip() != want:
        return wrong(f"right version; but {name!r} is not the file that holds the memory limit on v{real}.")
    return right(f"v{real}, and the limit is in {want}.")


q4 = Exercise(
    "05.4",
    "On this machine, which cgroup version do the limits go through, and which file holds a group's memory "
    "limit? `answer = (version, file name)`; `ch05.q4.check(answer)`.",
    _check_file,
    "Look at a group's folder: `os.listdir(g.folders['memory'])`.",
    "On v2 `(2, 'memory.max')`; on v1 `(1, 'memory.limit_in_bytes')`. `cgroups.version()` says which.",
)

"""cgroup v2: one hierarchy, one folder per group, every controller's files side by side.

A controller is usable in a cgroup only if its parent enables it in ``cgroup.subtree_control``,
and that parent's parent too, up to the root: the lab enables them in its own parent only
(``labhelper/``), and only those its parent gives it (``cgroup.controllers``). Under systemd the
cgroups above are systemd's: the lab's place is a subtree systemd *delegated* (``Delegate=yes``).
A cgroup whose subtree_control enables a controller may hold no process itself (the
"no internal processes" rule): the lab's parent never does; its processes are in the leaves.

The verbs are the same as v1.py's (runc's fs2 and fs are the model): apply limits, read stats,
freeze and thaw, and kill (one write to ``cgroup.kill``, Linux 5.14).
"""
from __future__ import annotations

import os
import time

from ..errors import Refused, RequirementError
from . import files
from .limits import CPU_PERIOD_US, Limits, Stats

__all__ = ["WANTED", "enable", "apply", "stats", "freeze", "frozen", "files_of"]

WANTED = ("cpu", "io", "memory", "pids")      # what the lab limits; cpuset and the rest are left alone


def enable(parent: str, wanted=WANTED) -> tuple[str, ...]:
    """Enable ``wanted`` controllers for the children of ``parent`` (the lab's own cgroup), as
    far as the cgroup above gives them; return those that are now usable below it."""
    given = (files.read(parent, "cgroup.controllers") or "").split()
    active = (files.read(parent, "cgroup.subtree_control") or "").split()
    missing = [c for c in wanted if c in given and c not in active]
    if missing:
        files.write(parent, "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
    return tuple(c for c in wanted if c in given)


def _need(folder: str, controller: str, what: str) -> None:
    if controller not in (files.read(folder, "cgroup.controllers") or "").split():
        raise RequirementError(f"{what} needs the {controller} controller, which the cgroup above {folder} "
                               "does not give to the lab",
                               hint="under systemd, run the lab in a delegated cgroup (Delegate=yes, as the "
                                    "lab VM's unit does); elsewhere, enable it in the root's cgroup.subtree_control")


def apply(folder: str, limits: Limits) -> dict[str, str]:
    """Write the limits that are set; return {file: value written}. Every controller needed is
    checked first: a limit that cannot be applied stops the others before any is written."""
    todo = []
    if limits.memory is not None:
        todo.append(("memory", "memory.max", limits.memory, "a memory limit"))
    if limits.memory_high is not None:
        todo.append(("memory", "memory.high", limits.memory_high, "memory.high"))
    if limits.swap is not None:
        todo.append(("memory", "memory.swap.max", limits.swap, "a swap limit"))
    if limits.cpu is not None:
        todo.append(("cpu", "cpu.max", f"{round(limits.cpu * CPU_PERIOD_US)} {CPU_PERIOD_US}", "a CPU limit"))
    if limits.cpu_weight is not None:
        todo.append(("cpu", "cpu.weight", limits.cpu_weight, "a CPU weight"))
    if limits.pids is not None:
        todo.append(("pids", "pids.max", limits.pids, "a pids limit"))
    if limits.io_device is not None and (limits.io_read or limits.io_write):
        parts = [limits.io_device]
        if limits.io_read:
            parts.append(f"rbps={limits.io_read}")
        if limits.io_write:
            parts.append(f"wbps={limits.io_write}")
        todo.append(("io", "io.max", " ".join(parts), "an I/O limit"))
    for controller, _, _, what in todo:
        _need(folder, controller, what)
    # The I/O limit first: the only one the kernel may still refuse after the checks (a device
    # that is gone, a partition), and then nothing else has been written either.
    todo.sort(key=lambda item: item[0] != "io")
    written = {}
    for _, name, value, _ in todo:
        files.write(folder, name, value)
        written[name] = str(value)
    return written


def stats(folder: str) -> Stats:
    mem_events = files.read_keyed(folder, "memory.events")
    cpu = files.read_keyed(folder, "cpu.stat")
    pids_events = files.read_keyed(folder, "pids.events")
    rd = wr = None
    io = files.read(folder, "io.stat")
    if io is not None:
        rd = wr = 0
        for line in io.splitlines():
            fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
            rd += int(fields.get("rbytes", 0))
            wr += int(fields.get("wbytes", 0))
    pressure = {}
    for res in ("cpu", "memory", "io"):
        text = files.read(folder, f"{res}.pressure")
        if text:
            pressure[res] = {line.split()[0]: float(line.split()[1].split("=")[1]) for line in text.splitlines()
                             if line.split() and "avg10=" in line}
    return Stats(
        version=2,
        memory_current=files.read_int(folder, "memory.current"),
        memory_peak=files.read_int(folder, "memory.peak"),          # Linux 5.19
        oom_kills=mem_events.get("oom_kill"),
        memory_max_hits=mem_events.get("max"),
        cpu_usage_us=cpu.get("usage_usec"),
        cpu_periods=cpu.get("nr_periods"),
        cpu_throttled_periods=cpu.get("nr_throttled"),
        cpu_throttled_us=cpu.get("throttled_usec"),
        pids_current=files.read_int(folder, "pids.current"),
        pids_refused=pids_events.get("max"),
        io_read_bytes=rd, io_write_bytes=wr, pressure=pressure)


def frozen(folder: str) -> bool:
    return files.read_keyed(folder, "cgroup.events").get("frozen") == 1


def freeze(folder: str, on: bool = True, timeout: float = 5.0) -> None:
    """Freeze (or thaw) every process of the group: they stop where they are, and no signal but
    SIGKILL reaches them until they are thawed. ``cgroup.events`` says when it is done."""
    if not files.exists(folder, "cgroup.freeze"):
        raise Refused("this kernel has no cgroup.freeze (cgroup v2 freezer, Linux 5.2)")
    files.write(folder, "cgroup.freeze", 1 if on else 0)
    deadline = time.monotonic() + timeout
    while frozen(folder) != on:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{folder} is not {'frozen' if on else 'thawed'} after {timeout:g} s")
        time.sleep(0.005)


def files_of(folder: str) -> list[str]:
    """The files of a v2 cgroup, for the side-by-side view."""
    return sorted(os.listdir(folder))

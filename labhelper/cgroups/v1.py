"""cgroup v1: one hierarchy per controller, so one folder per controller for each group.

A group here is a folder named alike in each controller's hierarchy (memory/labhelper/NAME,
cpu,cpuacct/labhelper/NAME, pids/labhelper/NAME, blkio/..., freezer/...), and a process is
added to each. The same verbs as v2.py, under the older names and units:

| what | v1 | v2 |
|---|---|---|
| memory limit | memory.limit_in_bytes (-1: none) | memory.max ("max") |
| memory + swap | memory.memsw.limit_in_bytes (memory and swap together) | memory.swap.max (swap alone) |
| CPU quota | cpu.cfs_quota_us, cpu.cfs_period_us | cpu.max ("quota period") |
| CPU share | cpu.shares (1024 is the default) | cpu.weight (100) |
| pids | pids.max | pids.max |
| I/O | blkio.throttle.{read,write}_bps_device (writeback escapes) | io.max |
| freeze | freezer.state (FROZEN, THAWED) | cgroup.freeze |
| kill all | freeze, kill each, thaw | cgroup.kill |

v1 has no memory.high. It throttles the I/O a group's own tasks submit (direct I/O, reads,
fsync), but not the kernel's background writeback of their dirty pages, where v2 charges that
writeback to the group that dirtied the pages (cgroup writeback).
"""
from __future__ import annotations

import errno
import time
from dataclasses import replace

from .. import procfs
from ..errors import Refused, RequirementError
from . import files
from .limits import CPU_PERIOD_US, Limits, Stats

__all__ = ["CONTROLLERS", "apply", "stats", "freeze", "frozen"]

# The controllers a lab group uses on v1, by the name of a hierarchy's controller (cpu and
# cpuacct usually share one: "cpu,cpuacct").
CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "blkio", "freezer", "devices")


def _folder(folders: dict[str, str], controller: str, what: str) -> str:
    folder = folders.get(controller)
    if folder is None:
        raise RequirementError(f"{what} needs the v1 {controller} controller, which is not mounted here",
                               hint=f"mount it: mount -t cgroup -o {controller} cgroup /sys/fs/cgroup/{controller}")
    return folder


def apply(folders: dict[str, str], limits: Limits) -> dict[str, str]:
    """Write the limits that are set, each in its controller's folder; return {file: value}."""
    # Every controller needed is checked first: nothing is written if one is missing.
    needs = [("memory", "a memory limit", limits.memory is not None or limits.swap is not None),
             ("cpu", "a CPU limit", limits.cpu is not None or limits.cpu_weight is not None),
             ("pids", "a pids limit", limits.pids is not None),
             ("blkio", "an I/O limit", limits.io_device is not None)]
    for controller, what, wanted in needs:
        if wanted:
            _folder(folders, controller, what)
    # And every refusal of v1's own, before anything is written.
    if limits.memory_high is not None:
        raise Refused("cgroup v1 has no memory.high (its memory.soft_limit_in_bytes only acts under the whole "
                      "machine's memory pressure); use memory= here, or a v2 machine such as the lab VM")
    if limits.swap is not None and limits.memory is None:
        raise Refused("on v1 swap is limited together with memory (memory.memsw): give memory= too")
    if limits.swap is not None and not files.exists(folders["memory"], "memory.memsw.limit_in_bytes"):
        if limits.swap == 0 and procfs.meminfo_bytes("SwapTotal", 1) == 0:
            limits = replace(limits, swap=None)          # nothing can swap here: swap=0 holds already
        else:
            raise Refused("this kernel does not account swap in v1 (boot with swapaccount=1)")
    written = {}

    def put(controller, name, value, what):
        files.write(_folder(folders, controller, what), name, value)
        written[name] = str(value)

    # The I/O limits first: the only ones the kernel may still refuse after the checks (a device
    # that is gone), and then nothing else has been written either.
    if limits.io_device is not None:
        if limits.io_read:
            put("blkio", "blkio.throttle.read_bps_device", f"{limits.io_device} {limits.io_read}", "an I/O limit")
        if limits.io_write:
            put("blkio", "blkio.throttle.write_bps_device", f"{limits.io_device} {limits.io_write}", "an I/O limit")
    if limits.memory is not None:
        mem = _folder(folders, "memory", "a memory limit")
        if limits.swap is not None:
            total = limits.memory + limits.swap
            # memsw (memory + swap) may never be below the memory limit: raise it first when
            # growing, lower it last when shrinking.
            try:
                put("memory", "memory.limit_in_bytes", limits.memory, "a memory limit")
                put("memory", "memory.memsw.limit_in_bytes", total, "a swap limit")
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                put("memory", "memory.memsw.limit_in_bytes", total, "a swap limit")
                put("memory", "memory.limit_in_bytes", limits.memory, "a memory limit")
        else:
            try:
                put("memory", "memory.limit_in_bytes", limits.memory, "a memory limit")
            except OSError as exc:
                if exc.errno == errno.EINVAL and files.exists(mem, "memory.memsw.limit_in_bytes"):
                    raise Refused("on v1 memory and swap together (memory.memsw.limit_in_bytes) are capped below "
                                  "this memory limit: give swap= too, such as swap=0") from None
                raise
    if limits.cpu is not None:
        put("cpu", "cpu.cfs_period_us", CPU_PERIOD_US, "a CPU limit")
        put("cpu", "cpu.cfs_quota_us", round(limits.cpu * CPU_PERIOD_US), "a CPU limit")
    if limits.cpu_weight is not None:
        # v2's weight 1..10000 (100 the default) as v1's shares (1024 the default): 10..102400
        put("cpu", "cpu.shares", max(2, limits.cpu_weight * 1024 // 100), "a CPU weight")
    if limits.pids is not None:
        put("pids", "pids.max", limits.pids, "a pids limit")
    return written


def stats(folders: dict[str, str]) -> Stats:
    mem, cpu, acct, pids, blkio = (folders.get(c) for c in ("memory", "cpu", "cpuacct", "pids", "blkio"))
    oom = files.read_keyed(mem, "memory.oom_control") if mem else {}
    cpu_stat = files.read_keyed(cpu, "cpu.stat") if cpu else {}
    usage_ns = files.read_int(acct, "cpuacct.usage") if acct else None
    rd = wr = None
    if blkio:
        text = files.read(blkio, "blkio.throttle.io_service_bytes")
        if text is not None:
            rd = wr = 0
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[1] == "Read":
                    rd += int(parts[2])
                elif len(parts) == 3 and parts[1] == "Write":
                    wr += int(parts[2])
    throttled = cpu_stat.get("throttled_time")
    return Stats(
        version=1,
        memory_current=files.read_int(mem, "memory.usage_in_bytes") if mem else None,
        memory_peak=files.read_int(mem, "memory.max_usage_in_bytes") if mem else None,
        oom_kills=oom.get("oom_kill"),                      # Linux 4.13
        # hits of either limit: memory alone, or memory and swap together (memsw) when set
        memory_max_hits=(None if not mem else (files.read_int(mem, "memory.failcnt") or 0)
                         + (files.read_int(mem, "memory.memsw.failcnt") or 0)),
        cpu_usage_us=None if usage_ns is None else usage_ns // 1000,
        cpu_periods=cpu_stat.get("nr_periods"),
        cpu_throttled_periods=cpu_stat.get("nr_throttled"),
        cpu_throttled_us=None if throttled is None else throttled // 1000,
        pids_current=files.read_int(pids, "pids.current") if pids else None,
        pids_refused=files.read_keyed(pids, "pids.events").get("max") if pids else None,
        io_read_bytes=rd, io_write_bytes=wr)


def frozen(folders: dict[str, str]) -> bool:
    folder = folders.get("freezer")
    return folder is not None and (files.read(folder, "freezer.state") or "").strip() == "FROZEN"


def freeze(folders: dict[str, str], on: bool = True, timeout: float = 5.0) -> None:
    """Freeze (or thaw) the group through the v1 freezer; FREEZING turns FROZEN when done."""
    folder = _folder(folders, "freezer", "freezing")
    files.write(folder, "freezer.state", "FROZEN" if on else "THAWED")
    deadline = time.monotonic() + timeout
    while frozen(folders) != on:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{folder} is not {'frozen' if on else 'thawed'} after {timeout:g} s")
        time.sleep(0.005)

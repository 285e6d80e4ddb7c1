"""What a limit is, checked before anything is written, and what the kernel reports back.

The same limits exist in both versions under other file names and units (v1.py and v2.py
write them); here they are checked once, in the learner's units, so that a bad value is refused
before any file is touched (R20), with the rule it broke and whose rule it is:

* the kernel's: a value must be a number the file accepts; `pids.max` may be 0 (then nothing
  may fork); the kernel has no minimum memory limit (a tiny one OOM-kills at once);
* the lab's (policy, said as such): memory at least 6 MiB, as Docker refuses below that, since
  a Python process needs more just to start; memory at most this machine's RAM; CPU at most
  the cores this machine has (a quota above them limits nothing); pids at most 4194304
  (PID_MAX_LIMIT).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .. import procfs
from ..errors import Refused

__all__ = ["Limits", "Stats", "parse_size", "check", "MEMORY_FLOOR", "PIDS_CEILING", "format_size"]

MEMORY_FLOOR = 6 * 1024 * 1024           # the lab's policy (Docker's floor), not the kernel's rule
PIDS_CEILING = 4 * 1024 * 1024           # PID_MAX_LIMIT on 64-bit (include/linux/threads.h)
CPU_PERIOD_US = 100_000                  # the period the kernel uses by default (100 ms)

_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


def parse_size(value, what: str = "a size") -> int:
    """Bytes from 67108864, "64M", "64MiB", "1.5G" (binary units, as Docker and the kernel use)."""
    if isinstance(value, bool):
        raise Refused(f"{what}: {value!r} is not a size")
    if isinstance(value, int):
        number = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(value))
        if not m:
            raise Refused(f"{what}: {value!r} is not a size such as 67108864, '64M' or '1G'")
        number = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if number < 0:
        raise Refused(f"{what}: {value!r} is negative")
    return number


def format_size(n: int | None) -> str:
    if n is None:
        return "max"
    for unit in ("G", "M", "K"):
        if n >= _UNITS[unit.lower()] and n % _UNITS[unit.lower()] == 0:
            return f"{n // _UNITS[unit.lower()]}{unit}"
    return str(n)


@dataclass(frozen=True)
class Limits:
    """Limits in the learner's units; None: no limit (the kernel's "max")."""
    memory: int | None = None        # bytes: above it, the kernel reclaims, then OOM-kills
    memory_high: int | None = None   # bytes: above it, the kernel throttles and reclaims hard (v2)
    swap: int | None = None          # bytes of swap allowed on top of memory
    cpu: float | None = None         # CPUs: 0.5 is half of one core, 2 is two cores
    cpu_weight: int | None = None    # 1..10000, 100 is the default share when CPUs are contended
    pids: int | None = None          # processes and threads
    io_read: int | None = None       # bytes per second, on ``io_device``
    io_write: int | None = None
    io_device: str | None = None     # "MAJ:MIN" of a block device

    def items(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def check(memory=None, memory_high=None, swap=None, cpu=None, cpu_weight=None, pids=None, io_read=None,
          io_write=None, io_device=None, cores: int | None = None, ram: int | None = None) -> Limits:
    """The limits, checked; Refused (nothing written) for any value that breaks a rule."""
    cores = cores or os.cpu_count() or 1
    ram = ram or procfs.meminfo_bytes("MemTotal", 1 << 62)
    mem = None if memory is None else parse_size(memory, "memory")
    high = None if memory_high is None else parse_size(memory_high, "memory_high")
    sw = None if swap is None else parse_size(swap, "swap")
    for name, value in (("memory", mem), ("memory_high", high)):
        if value is None:
            continue
        if value < MEMORY_FLOOR:
            raise Refused(f"{name} {format_size(value)} is below the lab's floor of 6M",
                          hint="the kernel itself would accept it and OOM-kill the first process at once; "
                               "the lab refuses, as Docker does below 6 MiB")
        if value > ram:
            raise Refused(f"{name} {format_size(value)} is more than this machine has ({format_size(ram)}): "
                          "such a limit limits nothing", hint="give a size below the machine's memory")
    if cpu is not None:
        if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or cpu != cpu:
            raise Refused(f"cpu {cpu!r}: a number of CPUs, such as 0.5 or 2")
        if cpu <= 0:
            raise Refused(f"cpu {cpu!r}: more than 0 (to stop a group, freeze it)")
        if cpu > cores:
            raise Refused(f"cpu {cpu:g} is more than the {cores} CPU(s) this machine has: such a quota limits nothing")
        if cpu * CPU_PERIOD_US < 1000:
            raise Refused(f"cpu {cpu:g} is below 0.01 CPU: the kernel's smallest quota is 1 ms per period")
    if cpu_weight is not None:
        if isinstance(cpu_weight, bool) or not isinstance(cpu_weight, int) or not 1 <= cpu_weight <= 10000:
            raise Refused(f"cpu_weight {cpu_weight!r}: a whole number from 1 to 10000 (100 is the default)")
    if pids is not None:
        if isinstance(pids, bool) or not isinstance(pids, int) or pids < 0:
            raise Refused(f"pids {pids!r}: a whole number, 0 or more (0 is valid: then nothing may fork)")
        if pids > PIDS_CEILING:
            raise Refused(f"pids {pids} is above the kernel's PID_MAX_LIMIT ({PIDS_CEILING})")
    rd = None if io_read is None else parse_size(io_read, "io_read")
    wr = None if io_write is None else parse_size(io_write, "io_write")
    if (rd is not None or wr is not None) and io_device is None:
        raise Refused("an I/O limit needs the device it applies to (io_device='MAJ:MIN')")
    if io_device is not None and not re.fullmatch(r"\d+:\d+", str(io_device)):
        raise Refused(f"io_device {io_device!r}: 'MAJOR:MINOR' of a block device, such as '7:0'")
    for name, value in (("io_read", rd), ("io_write", wr)):
        if value == 0:
            raise Refused(f"{name} 0: the kernel reads 0 as 'no limit'; give at least 1 byte per second")
    return Limits(mem, high, sw, None if cpu is None else float(cpu), cpu_weight, pids, rd, wr, io_device)


@dataclass(frozen=True)
class Stats:
    """What the kernel counted for a group, in the same units on v1 and v2 (None: this kernel
    or version does not count it)."""
    version: int
    memory_current: int | None = None     # bytes charged now
    memory_peak: int | None = None        # the most ever charged
    oom_kills: int | None = None          # processes the OOM killer killed in the group
    memory_max_hits: int | None = None    # times the limit was reached (v2 memory.events max; v1 failcnt)
    cpu_usage_us: int | None = None       # CPU time used, all CPUs together
    cpu_periods: int | None = None
    cpu_throttled_periods: int | None = None
    cpu_throttled_us: int | None = None
    pids_current: int | None = None
    pids_refused: int | None = None       # forks refused at pids.max (pids.events max)
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    pressure: dict = field(default_factory=dict)   # PSI (v2): {"cpu": {"some": avg10, ...}, ...}

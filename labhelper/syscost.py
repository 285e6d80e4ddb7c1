"""What a system call costs, measured: a mode switch is cheap, but not free.

A system call switches the CPU from user mode to kernel mode and back: save the user registers,
enter the kernel at a fixed entry point, check the number, run the handler, restore, return.
Some calls avoid that entirely: the kernel maps a small library, the *vDSO*, into every
process, so ``clock_gettime`` reads the clock in user mode (where the clock source allows it:
see :func:`clock_syscalls`). This module times, side by side:

==================  ==============================================================  ===========
key                 what is called                                                  where
==================  ==============================================================  ===========
``python_call``     an empty Python function (the loop's own cost, in every line)   user mode
``vdso``            ``time.clock_gettime_ns(CLOCK_MONOTONIC)``: libc -> vDSO         user mode
``getpid``          ``os.getpid()``: libc's getpid -> the getpid system call          kernel
``ctypes_noop``     libc's ``abs(nr)`` through ctypes: the ctypes boundary alone     user mode
``ctypes_getpid``   libc's ``syscall(nr)`` through ctypes, ``nr`` looked up once     kernel
``wrapper_getpid``  ``syscalls.sys_getpid()``: labhelper's wrapper around syscall(2)  kernel
``read_1``          ``os.read(/dev/zero, 1)``: a call that copies one byte           kernel
``read_64k``        ``os.read(/dev/zero, 65536)``: a call that does real work        kernel
==================  ==============================================================  ===========

``ctypes_noop`` and ``ctypes_getpid`` are a matched pair: the same ctypes call shape (one plain
int argument, no declared argument types), so their difference is the system call alone. The
wrapper adds Python work on every call (the number looked up by name, each argument converted,
the result checked for errors): its row is labhelper's convenience, not the kernel's price.

Each timing is a distribution: ``samples`` samples, each the mean of ``batch`` back-to-back
calls timed with ``time.perf_counter_ns`` (a single call is too short for the clock). Read the
*median*; p10/p90 show the spread (other processes, interrupts, frequency changes).
The numbers depend on the machine, its CPU's mitigations, and whether it is a VM: compare
rows measured in the same run, never with numbers from elsewhere. ``benchmarks/syscall_cost.py``
runs the same calls from C for reference.
"""
from __future__ import annotations

import itertools
import os
import statistics
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator, NamedTuple

from . import syscalls

__all__ = ["Cost", "Costs", "measure", "measure_all", "CALLS", "ClockCheck", "clock_syscalls"]


def _percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    if not sorted_values:
        raise ValueError("no samples")
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True)
class Cost:
    """The measured cost of one kind of call: per-call nanoseconds, one value per sample."""
    key: str
    label: str
    kernel: bool                      # does the call enter the kernel?
    samples_ns: tuple[float, ...]
    batch: int

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ns)

    @property
    def p10(self) -> float:
        return _percentile(sorted(self.samples_ns), 10)

    @property
    def p90(self) -> float:
        return _percentile(sorted(self.samples_ns), 90)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples_ns)

    def __repr__(self) -> str:
        return (f"Cost({self.key}: median {self.median:.0f} ns, p10 {self.p10:.0f} ns, "
                f"p90 {self.p90:.0f} ns; {len(self.samples_ns)} samples of {self.batch} calls)")


def measure(fn: Callable[[], object], key: str = "fn", label: str | None = None,
            kernel: bool = False, samples: int = 200, batch: int = 200,
            warmup: int = 2) -> Cost:
    """Time ``fn()``: ``samples`` times, ``batch`` calls each; per-call ns per sample."""
    if samples < 1 or batch < 1:
        raise ValueError("samples and batch must be at least 1")
    clock = time.perf_counter_ns
    repeat = itertools.repeat
    out = []
    for i in range(warmup + samples):
        t0 = clock()
        for _ in repeat(None, batch):
            fn()
        t1 = clock()
        if i >= warmup:  # the first batches warm caches and branch predictors
            out.append((t1 - t0) / batch)
    return Cost(key, label or key, kernel, tuple(out), batch)


def _empty() -> None:
    pass


#: key -> (label, enters the kernel?) in the order they are shown
CALLS: dict[str, tuple[str, bool]] = {
    "python_call": ("empty Python function call", False),
    "vdso": ("clock_gettime (vDSO, no mode switch)", False),
    "getpid": ("getpid system call (os.getpid)", True),
    "ctypes_noop": ("C function via ctypes, no syscall", False),
    "ctypes_getpid": ("syscall(SYS_getpid) via ctypes", True),
    "wrapper_getpid": ("labhelper's syscalls.sys_getpid()", True),
    "read_1": ("read 1 byte of /dev/zero", True),
    "read_64k": ("read 64 KiB of /dev/zero", True),
}


@dataclass(frozen=True)
class Costs:
    """Several Costs measured in the same run, with a table and ratios (labhelper.teach.plots
    draws them)."""
    costs: tuple[Cost, ...]

    def __iter__(self) -> Iterator[Cost]:
        return iter(self.costs)

    def __len__(self) -> int:
        return len(self.costs)

    def __getitem__(self, key: str) -> Cost:
        for c in self.costs:
            if c.key == key:
                return c
        raise KeyError(f"{key!r} was not measured (measured: {', '.join(c.key for c in self.costs)})")

    def ratio(self, key: str, to: str) -> float:
        """How many times the median of ``key`` is the median of ``to``."""
        return self[key].median / self[to].median

    def table(self) -> str:
        lines = [f"{'call':<40} {'where':<6} {'median':>9} {'p10':>9} {'p90':>9}",
                 "-" * 77]
        for c in self.costs:
            lines.append(f"{c.label:<40} {'kernel' if c.kernel else 'user':<6} "
                         f"{c.median:7.0f}ns {c.p10:7.0f}ns {c.p90:7.0f}ns")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{c.label}</td><td>{'kernel' if c.kernel else 'user'}</td>"
            f"<td style='text-align:right'>{c.median:.0f}</td><td style='text-align:right'>{c.p10:.0f}</td>"
            f"<td style='text-align:right'>{c.p90:.0f}</td></tr>" for c in self.costs)
        return ("<table><tr><th>call</th><th>mode</th><th>median ns</th><th>p10 ns</th>"
                f"<th>p90 ns</th></tr>{rows}</table>")


def _callables(read_size: int, zero_fd: int) -> dict[str, Callable[[], object]]:
    noop, getpid_by_number = syscalls.matched_ctypes_calls()
    return {
        "python_call": _empty,
        "vdso": partial(time.clock_gettime_ns, time.CLOCK_MONOTONIC),
        "getpid": os.getpid,
        "ctypes_noop": noop,
        "ctypes_getpid": getpid_by_number,
        "wrapper_getpid": syscalls.sys_getpid,
        "read_1": partial(os.read, zero_fd, 1),
        "read_64k": partial(os.read, zero_fd, read_size),
    }


def measure_all(keys: tuple[str, ...] | None = None, samples: int = 200, batch: int = 200,
                read_size: int = 65536) -> Costs:
    """Measure the calls named in ``keys`` (default: all of CALLS), interleaved sample by sample
    so that a burst of background activity hits them all alike."""
    keys = tuple(CALLS) if keys is None else tuple(keys)
    unknown = [k for k in keys if k not in CALLS]
    if unknown:
        raise ValueError(f"unknown call(s) {', '.join(unknown)}; choose from {', '.join(CALLS)}")
    zero_fd = os.open("/dev/zero", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fns = _callables(read_size, zero_fd)
        for k in keys:  # warm up each once
            measure(fns[k], samples=1, batch=batch, warmup=1)
        collected: dict[str, list[float]] = {k: [] for k in keys}
        for _ in range(samples):
            for k in keys:
                collected[k].extend(measure(fns[k], samples=1, batch=batch, warmup=0).samples_ns)
    finally:
        os.close(zero_fd)
    label_64k = f"read {read_size // 1024} KiB of /dev/zero" if read_size >= 1024 else f"read {read_size} B of /dev/zero"
    return Costs(tuple(Cost(k, label_64k if k == "read_64k" else CALLS[k][0], CALLS[k][1],
                            tuple(collected[k]), batch) for k in keys))


# --- Does clock_gettime really stay in user mode here? ---

_CLOCKSOURCE = "/sys/devices/system/clocksource/clocksource0/current_clocksource"


def _clock_name(clock: int) -> str:
    for name in dir(time):
        if name.startswith("CLOCK_") and getattr(time, name) == clock:
            return name
    return f"clock {clock}"


class ClockCheck(NamedTuple):
    """How many of ``calls`` clock_gettime calls became real system calls (seen by strace)."""
    clock: str                 # e.g. CLOCK_MONOTONIC
    calls: int                 # clock_gettime calls made by the traced function
    syscalls: int              # clock_gettime system calls strace saw
    clocksource: str | None    # the kernel's current clock source (tsc, kvm-clock, hpet, ...)

    @property
    def in_user_mode(self) -> bool:
        """True if the vDSO answered every call: strace saw no clock_gettime at all."""
        return self.syscalls == 0

    def __repr__(self) -> str:
        where = ("served by the vDSO in user mode" if self.in_user_mode
                 else "the kernel answered" + (" each one" if self.syscalls >= self.calls else " some"))
        source = f" (clocksource {self.clocksource})" if self.clocksource else ""
        return f"{self.clock}: {self.calls} calls, {self.syscalls} system calls: {where}{source}"


def clock_syscalls(clock: int = time.CLOCK_MONOTONIC, calls: int = 100) -> ClockCheck:
    """Call ``clock_gettime(clock)`` ``calls`` times under strace and count the system calls.

    strace sees only real system calls, never the vDSO's user-mode code. The vDSO reads the
    clock itself only for the clocks it knows (REALTIME, MONOTONIC, BOOTTIME, ...) and only when
    the kernel's clock source can be read from user mode (tsc, kvm-clock, arm's counter). Some
    VMs run on a clock source that cannot (hpet, acpi_pm, some Xen set-ups): there the vDSO falls
    back to the real system call, and clock_gettime costs as much as getpid. CPU-time clocks
    (CLOCK_PROCESS_CPUTIME_ID) always need the kernel's accounting. Needs strace.
    """
    if calls < 1:
        raise ValueError("calls must be at least 1")
    from . import trace as _trace  # lazy: tracing needs strace; measuring does not

    def loop() -> None:
        for _ in range(calls):
            time.clock_gettime_ns(clock)

    t = _trace.trace(loop)
    seen = sum(1 for r in t.calls if (r.syscall or "").startswith("clock_gettime"))
    try:
        with open(_CLOCKSOURCE) as f:
            source = f.read().strip() or None
    except OSError:  # no sysfs (a container without it): the count is the evidence anyway
        source = None
    return ClockCheck(_clock_name(clock), calls, seen, source)

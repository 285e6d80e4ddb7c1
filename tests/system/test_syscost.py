"""System calls made directly by number, and the cost measurements of chapter 01."""
from __future__ import annotations

import errno
import os
import platform
import time

import capabilities
import pytest

from labhelper import syscalls, syscost
from labhelper.errors import SyscallError


def test_getpid_and_uname_by_number():
    assert syscalls.sys_getpid() == os.getpid()
    u = syscalls.sys_uname()
    assert tuple(u)[:5] == tuple(os.uname())
    assert u.machine == platform.machine() and repr(u).startswith("Uname(sysname='Linux'")


def test_write_and_read_by_number():
    r, w = os.pipe()
    try:
        assert syscalls.sys_write(w, b"hello from write(2)\n") == 20
        assert syscalls.sys_read(r, 100) == b"hello from write(2)\n"
        os.close(w)
        w = -1
        assert syscalls.sys_read(r, 10) == b""  # end of file: every writer closed
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_write_to_a_closed_fd_names_the_errno():
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(SyscallError) as info:
        syscalls.sys_write(w, b"x")
    assert info.value.errno == errno.EBADF and info.value.call == "write"
    assert "EBADF" in str(info.value)


def test_libc_noop_stays_in_user_mode():
    _need_strace()
    from labhelper import trace as T
    t = T.trace(lambda: [syscalls.libc_noop() for _ in range(100)])
    assert len(t) == 0, t.lines()
    g = T.trace(lambda: [syscalls.sys_getpid() for _ in range(3)])
    assert g.count("getpid") == 3


def test_measure_gives_a_distribution():
    c = syscost.measure(os.getpid, key="getpid", kernel=True, samples=20, batch=50)
    assert len(c.samples_ns) == 20 and c.batch == 50
    assert 0 < c.p10 <= c.median <= c.p90
    assert repr(c).startswith("Cost(getpid: median ")
    with pytest.raises(ValueError):
        syscost.measure(os.getpid, samples=0)


def test_measure_all_and_plot():
    costs = syscost.measure_all(samples=15, batch=50)
    assert [c.key for c in costs] == list(syscost.CALLS)
    assert all(c.median > 0 for c in costs)
    # copying 64 KiB costs more than copying one byte, on every machine
    assert costs["read_64k"].median > costs["read_1"].median
    assert costs.ratio("read_64k", "read_1") > 1
    # the wrapper makes the same system call as the bare ctypes call, plus Python work
    assert costs["wrapper_getpid"].median > costs["ctypes_getpid"].median
    assert "getpid system call" in costs.table() and costs._repr_html_().startswith("<table>")
    with pytest.raises(KeyError, match="was not measured"):
        costs["nope"]
    with pytest.raises(ValueError, match="unknown call"):
        syscost.measure_all(keys=("teleport",))
    capabilities.need("matplotlib")
    from labhelper.teach import plots
    fig = plots.costs(costs)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[-1] == syscost.CALLS["python_call"][0] and len(labels) == len(costs)


def _need_strace() -> None:
    capabilities.need("strace")


def test_ctypes_pair_differs_only_in_the_system_call():
    """The 'where' column is true: abs() via ctypes never enters the kernel, syscall(nr) does."""
    _need_strace()
    from labhelper import trace as T
    noop, getpid = syscalls.matched_ctypes_calls()
    assert noop() == syscalls.syscall_number("getpid")  # abs(nr) == nr: it really ran abs
    assert getpid() == os.getpid()
    quiet = T.trace(lambda: [noop() for _ in range(50)])
    assert len(quiet) == 0, quiet.lines()
    loud = T.trace(lambda: [getpid() for _ in range(5)])
    assert loud.count("getpid") == 5 and len(loud) == 5, loud.lines()


def test_clock_syscalls_sees_a_clock_that_needs_the_kernel():
    _need_strace()
    cpu = syscost.clock_syscalls(time.CLOCK_PROCESS_CPUTIME_ID, calls=20)
    assert cpu.clock == "CLOCK_PROCESS_CPUTIME_ID" and cpu.calls == 20
    assert cpu.syscalls == 20 and not cpu.in_user_mode
    assert repr(cpu).startswith("CLOCK_PROCESS_CPUTIME_ID: 20 calls, 20 system calls: the kernel answered each one")
    mono = syscost.clock_syscalls(calls=20)
    # host-dependent: none where the vDSO reads the clock source, all where it falls back
    assert mono.clock == "CLOCK_MONOTONIC" and mono.syscalls in (0, 20), mono
    assert mono.in_user_mode == (mono.syscalls == 0)
    assert ("served by the vDSO" in repr(mono)) == mono.in_user_mode


def test_clock_syscalls_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 1"):
        syscost.clock_syscalls(calls=0)


def test_clock_check_repr_without_a_clocksource():
    c = syscost.ClockCheck("CLOCK_MONOTONIC", 10, 0, None)
    assert repr(c) == "CLOCK_MONOTONIC: 10 calls, 0 system calls: served by the vDSO in user mode"
    some = syscost.ClockCheck("CLOCK_MONOTONIC", 10, 3, "hpet")
    assert repr(some).endswith("the kernel answered some (clocksource hpet)") and not some.in_user_mode

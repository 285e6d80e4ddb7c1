"""The watchdog that kicks a vCPU out of KVM_RUN, with a fake vCPU: no /dev/kvm, no root.

(The real thing, a guest that never exits stopped by a timeout or an interrupt: tests/system/test_kvm.py.)
"""
from __future__ import annotations

import signal
import threading
import time

from forking import child_answer

from labhelper.kvm import watchdog
from timing import scaled


class FakeVcpu:
    def __init__(self):
        self.closed = False
        self.immediate_exit = []          # every value set, in order
        self.lock = threading.Lock()

    def set_immediate_exit(self, on: bool = True) -> None:
        if self.closed:
            raise ValueError("mmap closed or invalid")
        with self.lock:
            self.immediate_exit.append(bool(on))


def _wait_for(predicate, timeout=2.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_kicks_at_the_deadline_and_every_tick_until_disarmed():
    v = FakeVcpu()
    t0 = time.monotonic()
    armed = watchdog.arm(v, deadline=t0 + 0.03)
    try:
        assert _wait_for(lambda: armed.kicks >= 1, 1.0), "no kick at the deadline"
        assert time.monotonic() - t0 < scaled(0.5)
        assert _wait_for(lambda: armed.kicks >= 3, 1.0), "no periodic kicks after the deadline"
        assert v.immediate_exit[0] is True      # 1. immediate_exit, then 2. the signal
    finally:
        watchdog.disarm(v)
    kicks = armed.kicks
    assert v.immediate_exit[-1] is False          # disarm clears it
    time.sleep(2.5 * watchdog.TICK)
    assert armed.kicks == kicks and v.immediate_exit[-1] is False, "kicked after disarm"


def test_without_a_deadline_it_still_kicks_every_tick():
    # The periodic kick is what lets an interrupt that Python took just before KVM_RUN surface.
    v = FakeVcpu()
    armed = watchdog.arm(v)
    try:
        assert _wait_for(lambda: armed.kicks >= 2, 1.0)
    finally:
        watchdog.disarm(v)


def test_the_kick_signal_is_ours_and_nothing_process_wide_is_borrowed():
    alarm_before = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)
    v = FakeVcpu()
    watchdog.arm(v, time.monotonic() + 0.01)
    time.sleep(0.05)
    watchdog.disarm(v)
    assert signal.getsignal(watchdog.KICK_SIGNAL) is watchdog._kicked
    assert (signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)) == alarm_before
    assert watchdog.can_kick()


def test_a_stale_arm_is_replaced_by_the_next_run():
    # The review's bug: an interrupt between setup and `try` left the old ticker half-installed,
    # and later timeouts never fired. Here an arm that was never disarmed...
    stale = FakeVcpu()
    watchdog.arm(stale)
    # ...does not stop the next run's deadline from working:
    v = FakeVcpu()
    armed = watchdog.arm(v, time.monotonic() + 0.05)
    try:
        assert _wait_for(lambda: armed.kicks >= 1, 1.0)
    finally:
        watchdog.disarm(v)
        watchdog.disarm(stale)


def test_a_closed_vcpu_disarms_itself():
    v = FakeVcpu()
    armed = watchdog.arm(v)
    v.closed = True                               # e.g. the interrupt closed the VM before disarm ran
    assert _wait_for(lambda: watchdog._WATCHDOG._armed is None, 1.0)
    assert armed.kicks == 0
    watchdog.disarm(v)                            # idempotent, even on a closed vCPU


def test_another_handler_on_the_kick_signal_is_left_alone():
    def theirs(signum, frame):
        pass
    old = signal.signal(watchdog.KICK_SIGNAL, theirs)
    try:
        assert watchdog.can_kick() is False
        assert signal.getsignal(watchdog.KICK_SIGNAL) is theirs
    finally:
        signal.signal(watchdog.KICK_SIGNAL, old)


def test_from_another_thread_the_handler_is_not_installed(monkeypatch):
    monkeypatch.setattr(watchdog.signal, "getsignal", lambda s: signal.SIG_DFL)
    seen = []
    t = threading.Thread(target=lambda: seen.append(watchdog.can_kick()))
    t.start()
    t.join()
    assert seen == [False]                        # Python allows signal.signal() only in the main thread


def test_the_watchdog_thread_blocks_signals():
    v = FakeVcpu()
    watchdog.arm(v)
    watchdog.disarm(v)
    thread = watchdog._WATCHDOG._thread
    assert thread is not None and thread.daemon and thread.name == "labhelper-kvm-watchdog"
    with open(f"/proc/self/task/{thread.native_id}/status") as fh:
        blocked = int(next(l for l in fh if l.startswith("SigBlk:")).split()[1], 16)
    assert blocked & (1 << (signal.SIGINT - 1)), "SIGINT must go to the thread that runs the guest"


def test_after_fork_the_child_starts_afresh():
    v = FakeVcpu()
    watchdog.arm(v)
    try:
        answer = child_answer(lambda: b"fresh" if watchdog._WATCHDOG._thread is None
                              and watchdog._WATCHDOG._armed is None else b"inherited")
    finally:
        watchdog.disarm(v)
    assert answer == b"fresh"

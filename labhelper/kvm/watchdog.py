"""Getting the vCPU back: a watchdog thread that kicks a guest out of KVM_RUN.

``KVM_RUN`` blocks for as long as the guest runs without an exit (``jmp $`` runs forever). The
KVM API documents how a VMM gets such a vCPU back (Documentation/virt/kvm/api.rst, the
``immediate_exit`` field of ``struct kvm_run``), and this module does exactly that:

1. set ``kvm_run.immediate_exit = 1``: a KVM_RUN that has not entered the guest yet returns EINTR
   at once, instead of starting a guest that nobody would stop;
2. send a signal to the thread inside KVM_RUN (``pthread_kill``): the kernel takes the CPU away
   from the guest and KVM_RUN fails with EINTR.

Done in that order, there is no moment at which the kick can be lost: either the thread is
inside the guest (the signal gets it out) or it is about to go in (immediate_exit sends it back).
The VMM clears immediate_exit before it runs the guest again.

The signal is a real-time signal of our own, :data:`KICK_SIGNAL`, with a handler that does nothing
(only the EINTR matters). The handler is installed when this module is imported from the main
thread (or at the first run from it), and stays installed for the life of the process: it is
harmless, and putting the default back would only reopen the window in which a late kick
kills the process (the default action of a real-time signal is to terminate). Nothing
process-wide is borrowed per run: no SIGALRM, no interval timer.

Who is kicked, and when: :func:`arm` (called by ``Machine.run``/``step``) names the vCPU, the
thread that runs it and an optional deadline. While armed, the watchdog kicks

* at the deadline, so that ``run(timeout=...)`` stops a guest that never exits; and
* every :data:`TICK` seconds, so that a notebook interrupt is never stuck: Python runs its
  SIGINT handler (KeyboardInterrupt) between bytecodes, and a SIGINT that lands after Python's
  last look but before the thread enters KVM_RUN would otherwise wait for the guest's next exit
  (forever, for ``jmp $``). A periodic kick bounds that wait to TICK.

:func:`disarm` stops it. One daemon thread serves the whole process and sleeps when nothing is
armed; it blocks every signal itself, so a SIGINT goes to the thread that must raise it.
"""
from __future__ import annotations

import os
import signal
import threading
import time

__all__ = ["KICK_SIGNAL", "TICK", "arm", "disarm", "can_kick", "kick"]

KICK_SIGNAL = signal.SIGRTMAX - 3   # a real-time signal nothing else in a notebook kernel uses
TICK = 0.1                          # seconds between two kicks while a guest runs


def _kicked(signum, frame) -> None:
    """The kick's handler: nothing to do. Its existence is what makes KVM_RUN return EINTR."""


def can_kick() -> bool:
    """Install the kick's handler if we may (Python allows it only in the main thread), and say
    whether the kick signal is ours. Someone else's handler on it is left alone: then a guest
    that never exits is stopped only by a notebook interrupt, and timeouts are checked at exits."""
    current = signal.getsignal(KICK_SIGNAL)
    if current is _kicked:
        return True
    if current not in (signal.SIG_DFL, None) or threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(KICK_SIGNAL, _kicked)
    return True


class _Armed:
    """One armed run: which vCPU, which thread, until when."""
    __slots__ = ("vcpu", "thread", "ident", "deadline", "signal", "next_kick", "kicks")

    def __init__(self, vcpu, deadline: float | None, can_signal: bool):
        self.vcpu = vcpu
        self.thread = threading.current_thread()
        self.ident = threading.get_ident()
        self.deadline = deadline
        self.signal = can_signal
        self.kicks = 0
        now = time.monotonic()
        self.next_kick = now + TICK if deadline is None else min(now + TICK, deadline)


class _Watchdog:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: _Armed | None = None
        self._thread: threading.Thread | None = None
        self._sleeping_until: float | None = None   # when the thread wakes by itself (None: never)

    def arm(self, vcpu, deadline: float | None) -> _Armed:
        armed = _Armed(vcpu, deadline, can_kick())
        with self._cond:
            self._armed = armed                 # the latest run wins: a stale arm is replaced
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="labhelper-kvm-watchdog", daemon=True)
                self._thread.start()
            # Wake the thread only if it would sleep past this run's first kick: a run of a few
            # exits then costs no thread switch (the thread wakes at most once per TICK).
            if self._sleeping_until is None or self._sleeping_until > armed.next_kick:
                self._cond.notify()
        return armed

    def disarm(self, vcpu) -> None:
        with self._cond:
            if self._armed is not None and self._armed.vcpu is vcpu:
                self._armed = None
            # Under the lock: no kick can set it again after this.
            _clear(vcpu)

    def _loop(self) -> None:
        # The kicks and the notebook's SIGINT are for the thread that runs the guest, not for us.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        with self._cond:
            while True:
                armed = self._armed
                if armed is None:
                    self._sleeping_until = None
                    self._cond.wait()
                    continue
                now = time.monotonic()
                if now < armed.next_kick:
                    self._sleeping_until = armed.next_kick
                    self._cond.wait(armed.next_kick - now)
                    continue
                if not self._kick(armed):
                    self._armed = None          # its vCPU was closed, or its thread is gone
                    continue
                armed.next_kick = now + TICK if armed.deadline is None or now >= armed.deadline \
                    else min(now + TICK, armed.deadline)

    @staticmethod
    def _kick(armed: _Armed) -> bool:
        if armed.vcpu.closed or not armed.thread.is_alive():
            return False
        try:
            armed.vcpu.set_immediate_exit(True)       # 1. a KVM_RUN about to start returns at once
        except ValueError:                            # the kvm_run mapping was just closed
            return False
        if armed.signal:
            try:
                signal.pthread_kill(armed.ident, KICK_SIGNAL)   # 2. a KVM_RUN in progress returns EINTR
            except OSError:                                   # the thread has just ended
                return False
        armed.kicks += 1
        return True


def _clear(vcpu) -> None:
    if not vcpu.closed:
        try:
            vcpu.set_immediate_exit(False)
        except ValueError:
            pass


_WATCHDOG = _Watchdog()


def arm(vcpu, deadline: float | None = None) -> _Armed:
    """Kick ``vcpu``'s thread out of KVM_RUN every TICK seconds, and at ``deadline`` (a
    time.monotonic() value), until :func:`disarm`. Call it inside the ``try`` whose ``finally``
    disarms: a KeyboardInterrupt between the two must not leave it armed (and if it does, the
    next arm replaces it, and a closed vCPU disarms itself)."""
    return _WATCHDOG.arm(vcpu, deadline)


def disarm(vcpu) -> None:
    """Stop kicking ``vcpu`` and clear its immediate_exit. Idempotent."""
    _WATCHDOG.disarm(vcpu)


def kick(vcpu, thread_ident: int) -> None:
    """Get ``vcpu`` back from the thread ``thread_ident`` now (immediate_exit, then the signal),
    as the watchdog does at a deadline: for a Machine closed from another thread."""
    try:
        vcpu.set_immediate_exit(True)
        if signal.getsignal(KICK_SIGNAL) is _kicked:
            signal.pthread_kill(thread_ident, KICK_SIGNAL)
    except (ValueError, OSError):      # the vCPU or the thread is gone already: nothing to get back
        pass


def _after_fork_in_child() -> None:
    # A forked child has no watchdog thread (only the forking thread survives fork), and the
    # lock may have been held at the moment of the fork: start from scratch.
    global _WATCHDOG
    _WATCHDOG = _Watchdog()


os.register_at_fork(after_in_child=_after_fork_in_child)

# Python lets only the main thread install a signal handler. Install the kick's now if we can
# (labhelper.kvm is normally imported by the notebook's main thread), so that a guest run later
# from another thread can be kicked too: the kick goes to whichever thread runs the guest.
if threading.current_thread() is threading.main_thread():
    can_kick()

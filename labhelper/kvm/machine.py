"""A whole tiny VM in one object: memory, one vCPU, a program, and the devices it talks to.

:class:`Machine` is what a VMM like QEMU or Firecracker does, in miniature: open /dev/kvm, create
a VM, give it memory, load a program, put the vCPU in the right mode, then loop::

    while True:
        exit = vcpu.run()            # the guest runs until it needs us
        emulate what it asked for    # a byte for the serial port, a doorbell, an MMIO register
        stop at hlt

It owns its /dev/kvm handle, VM and vCPU (closed together by :meth:`Machine.close`), wires the
devices of :mod:`.devices` to the guest's ports and addresses, puts the vCPU in its program's mode
with :mod:`.modes`, and runs the loop under the :mod:`.watchdog`, so that a timeout or a notebook
interrupt always gets the vCPU back (and an interrupt closes the VM).

This is the top of :mod:`labhelper.kvm`: it imports the modules below it, and none of them
imports it.
"""
from __future__ import annotations

import collections
import contextlib
import platform
import threading
import time
from dataclasses import dataclass, field

from ..errors import LabError, RequirementError
from ..registry import fault_point   # test hook (R1): kill or raise right after a step
from . import exits as ex
from . import modes, watchdog
from .cpuid import guest_cpuid
from .devices import default_devices, wire
from .guests import MAILBOX, Program, assemble
from .modes import LongModeUnavailable
from .system import Kvm
from .vcpu import Registers
from .vm import MemoryError_, check_memory_request

__all__ = ["Machine", "RunResult", "GuestError", "LongModeUnavailable", "DEFAULT_MEMORY", "long_mode_check"]

DEFAULT_MEMORY = 64 * 1024
REPORTS_KEPT = 4096     # values a Machine keeps of what its guest reports (the oldest go first)


class Kept(collections.deque):
    """The last ``maxlen`` values appended, and how many there were in all (``total``): a guest
    that reports a number on every exit, a million times, must not fill the notebook's memory."""

    def __init__(self, maxlen: int):
        super().__init__(maxlen=maxlen)
        self.total = 0

    def append(self, value) -> None:
        super().append(value)
        self.total += 1

    def since(self, total: int) -> tuple:
        """What was appended after ``total`` values had been (as much of it as is kept)."""
        new = self.total - total
        return tuple(self)[-new:] if new > 0 else ()


class GuestError(LabError):
    """The guest stopped in a way it cannot recover from (triple fault, refused entry...)."""

    def __init__(self, message: str, hint: str | None = None, exit=None, regs=None):
        super().__init__(message, hint)
        self.exit = exit
        self.regs = regs

    def __reduce__(self):
        return (self.__class__, (self.message, self.hint, self.exit, self.regs))


# --- results ----------------------------------------------------------------------------------------

@dataclass
class RunResult:
    """What a run did. ``stopped`` is "hlt", "exit limit", "timeout" or the error exit's reason."""
    stopped: str
    exits: int
    counts: dict
    output: bytes
    reports: tuple = ()
    last: object = None
    seconds: float = field(default=0.0, repr=False, compare=False)

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in self.counts.items())
        reports = f", reports={list(self.reports)}" if self.reports else ""
        return (f"RunResult(stopped={self.stopped!r}, exits={self.exits}, counts={{{counts}}}, "
                f"output={self.output!r}{reports})")


# --- the machine --------------------------------------------------------------------------------------

class Machine:
    """One VM with one vCPU, running ``program`` (a :class:`Program`, or assembly text).

    ``with Machine(guests.SERIAL_HELLO) as m: print(m.run())``. Everything is closed by the end
    of the ``with`` block, or by :meth:`close`, or when a run is interrupted.
    """

    def __init__(self, program: Program | str, *, memory: int = DEFAULT_MEMORY, mode: str = "real",
                 devices: tuple | None = None, device: str | None = None, cpuid: bool = True):
        if isinstance(program, str):
            program = assemble(program, mode=mode)
        if not isinstance(program, Program):
            raise TypeError(f"program must be a guests.Program or assembly text, not {type(program).__name__}")
        self.program = program
        self.mode = program.mode
        if platform.machine() not in ("x86_64", "AMD64"):
            # The guests, registers and page tables here are x86's; KVM on arm64 has other ones.
            raise RequirementError(f"labhelper.kvm runs x86 guests, and this machine is {platform.machine()}",
                                   hint="use an x86_64 lab VM for chapter 02", missing=("kvm-x86",))
        # Bad input is refused before any fd is opened or any memory mapped.
        _check_layout(program, memory)
        self.devices = list(devices) if devices is not None else default_devices(memory)
        self._ports, self._mmio = wire(self.devices, memory)
        self.output = bytearray()
        self.reports = Kept(REPORTS_KEPT)       # the last values reported; a guest may report forever
        self._runner: int | None = None         # the thread inside run()/step(), if any
        self._stop_asked = False                # close() from another thread asked the run to end
        self._idle = threading.Event()
        self._idle.set()
        self.counts: dict[str, int] = {}       # guest exits by kind, over the Machine's life
        self.kvm = self.vm = self.vcpu = None
        with contextlib.ExitStack() as undo:
            undo.callback(self.close)           # any failure below closes what was opened
            self.kvm = Kvm(device)
            self.vm = self.kvm.create_vm()
            fault_point("vm-create")
            self.memory = self.vm.add_memory(memory)
            fault_point("vm-memory")
            self.vcpu = self.vm.create_vcpu(0)
            if cpuid:
                # Like QEMU's "-cpu host": offer the guest what KVM supports, including the
                # hypervisor leaves at 0x40000000 ("KVMKVMKVM").
                self.vcpu.set_cpuid(guest_cpuid(self.kvm.supported_cpuid()))
            self.memory.write(program.origin, program.code)
            if self.mode == "long":
                modes.enter_long_mode(self.vcpu, self.memory, program.origin)
            else:
                modes.enter_real_mode(self.vcpu, program.origin, memory)
            undo.pop_all()

    def page_table_base(self, memory: int | None = None) -> int:
        """Where the VMM put the page tables of a long-mode guest: the last three pages of guest
        memory (:func:`labhelper.kvm.modes.page_table_base`)."""
        return modes.page_table_base(memory or self.memory.size)

    # --- running --------------------------------------------------------------------------------

    @property
    def interruptions(self) -> int:
        """KVM_RUN calls that a signal cut short (the watchdog's kicks, an interrupt): not exits."""
        return self.vcpu.interruptions if self.vcpu is not None else 0

    @property
    def exits(self) -> int:
        """Guest exits so far, over the Machine's life (the sum of ``counts``; kicks not included)."""
        return sum(self.counts.values())

    def step(self, timeout: float | None = None):
        """Run until the next exit, emulate it (devices), and return it.

        With ``timeout``, a guest that makes no exit for that long gives Interrupted() instead
        of blocking (the watchdog kicks it out of KVM_RUN; see :mod:`.watchdog`). A notebook
        interrupt raises KeyboardInterrupt and closes the VM, as in :meth:`run`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._watched(deadline):
            while True:
                exit_ = self._step()
                if type(exit_) is not ex.Interrupted:
                    return exit_
                self._check_stop()
                if deadline is not None and time.monotonic() >= deadline:
                    return exit_

    @contextlib.contextmanager
    def _watched(self, deadline: float | None):
        """Run the block with the watchdog armed for our vCPU (kicks every TICK, and at
        ``deadline``), and disarmed after it, whatever happens. A KeyboardInterrupt closes the VM,
        wherever it lands: in the block, in arm, or in disarm itself."""
        vcpu = self.vcpu
        self._runner, self._stop_asked = threading.get_ident(), False
        self._idle.clear()
        try:
            try:
                # Inside the try: whatever happens next, the finally disarms (and if an interrupt
                # lands inside disarm itself, the VM is closed below, and a watchdog armed for a
                # closed vCPU disarms itself; the next run arms afresh in any case).
                watchdog.arm(vcpu, deadline)
                yield
            finally:
                watchdog.disarm(vcpu)
                self._runner = None
                self._idle.set()
        except KeyboardInterrupt as exc:        # wherever it lands, the disarm included
            self._interrupted(exc)
            raise

    def _check_stop(self) -> None:
        # Looked at only when a run comes back Interrupted (not on every exit): close() from
        # another thread makes sure the next KVM_RUN comes back so.
        if self._stop_asked:
            raise LabError("the VM was closed by another thread while it ran",
                           hint="a Machine belongs to the thread that runs it; close it there, or "
                                "interrupt the run first")

    def _interrupted(self, exc: KeyboardInterrupt) -> None:
        # Keep the promise of R26: an interrupted VM does not linger with its fds open.
        self.close()
        exc.add_note("labhelper.kvm: the guest was stopped by the interrupt and its VM closed")

    def _step(self):
        exit_ = self.vcpu.run()
        kind = type(exit_)
        if kind is ex.Interrupted:
            # Not the guest's doing: a signal (the watchdog's kick, an interrupt). Not counted as
            # an exit. The kick may have set immediate_exit: clear it, or the guest never runs.
            self.vcpu.set_immediate_exit(False)
            return exit_
        name = kind.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        if kind is ex.IoOut:
            device = self._ports.get(exit_.port)
            if device is not None:
                device.io_out(self, exit_.port, exit_.data)
        elif kind is ex.IoIn:
            device = self._ports.get(exit_.port)
            # An unclaimed port reads as all ones, as on a PC with nothing on the bus.
            answer = device.io_in(self, exit_.port, exit_.size) if device else b"\xff" * exit_.size
            self.vcpu.complete_io_in(answer * exit_.count)
        elif kind is ex.MmioWrite:
            device = self._mmio_device(exit_.address)
            if device is not None:
                device.mmio_write(self, exit_.address, exit_.data)
        elif kind is ex.MmioRead:
            device = self._mmio_device(exit_.address)
            answer = device.mmio_read(self, exit_.address, exit_.size) if device else b"\xff" * exit_.size
            self.vcpu.complete_mmio_read(answer)
        return exit_

    def _mmio_device(self, address: int):
        for d in self._mmio:
            if d.base <= address < d.base + d.size:
                return d
        return None

    def run(self, max_exits: int = 1_000_000, timeout: float | None = None, check: bool = True) -> RunResult:
        """Step until the guest halts, fails, makes ``max_exits`` exits, or ``timeout`` s pass.

        ``check``: raise GuestError when the guest triple-faults or the CPU refuses it (else the
        result says so). A notebook interrupt (SIGINT) raises KeyboardInterrupt and closes the VM.
        """
        start_output, start_reports = len(self.output), self.reports.total
        counts_before = dict(self.counts)
        stopped, last = "exit limit", None
        step = self._step
        exits = 0
        t0 = time.perf_counter()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._watched(deadline):
            while exits < max_exits:
                last = step()
                kind = type(last)
                if kind is ex.Interrupted:
                    self._check_stop()
                    if deadline is not None and time.monotonic() >= deadline:
                        stopped = "timeout"
                        break
                    continue
                exits += 1
                if kind is ex.Hlt:
                    stopped = "hlt"
                    break
                if ex.is_error(last):
                    stopped = last.reason
                    break
        seconds = time.perf_counter() - t0
        counts = {k: v - counts_before.get(k, 0) for k, v in self.counts.items() if v - counts_before.get(k, 0)}
        result = RunResult(stopped, exits, counts, bytes(self.output[start_output:]),
                           self.reports.since(start_reports), last, seconds)
        if check and ex.is_error(last):
            regs = self.vcpu.regs()
            raise GuestError(f"the guest stopped with {last.reason}: {last.describe()}",
                             hint=f"at {regs!r}", exit=last, regs=regs)
        return result

    # --- looking inside ---------------------------------------------------------------------------

    def regs(self) -> Registers:
        return self.vcpu.regs()

    def sregs(self):
        return self.vcpu.sregs()

    def read(self, address: int, length: int) -> bytes:
        return self.vm.read(address, length)

    def write(self, address: int, data: bytes) -> None:
        self.vm.write(address, data)

    def device(self, name: str):
        return next(d for d in self.devices if d.name == name)

    # --- teardown -----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.vm is None or self.vm.closed

    def close(self, wait: float = 2.0) -> None:
        """Close the vCPU, the VM (and its memory) and /dev/kvm. Idempotent.

        From another thread while a run is in progress: first get the vCPU back (the watchdog's
        kick: immediate_exit, then a signal to the running thread), let that run end with a
        clear LabError, and only then close: the running thread must not find its kvm_run page
        gone under it. ``wait``: how long to wait for that, in seconds.
        """
        runner = self._runner
        if runner is not None and runner != threading.get_ident() and not self.closed:
            self._stop_asked = True
            watchdog.kick(self.vcpu, runner)
            self._idle.wait(wait)
        if self.vm is not None:
            self.vm.close()
        if self.kvm is not None:
            self.kvm.close()

    def __enter__(self) -> "Machine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"Machine({self.program!r}, {self.mode} mode, {state}, {self.exits} exits)"


def _check_layout(program: Program, memory: int) -> None:
    check_memory_request(memory)
    limit = modes.page_table_base(memory) if program.mode == "long" else memory
    if program.end > limit:
        where = "below the page tables at the top of memory" if program.mode == "long" else "in guest memory"
        raise MemoryError_(
            f"the guest code ({len(program.code)} bytes at {program.origin:#x}, ending at {program.end:#x}) "
            f"does not fit {where} (memory ends at {memory:#x}{', page tables at %#x' % limit if program.mode == 'long' else ''})",
            hint="give the Machine more memory= (a multiple of 4096), or make the program smaller")
    if program.origin < MAILBOX + 4 and program.end > MAILBOX:
        raise MemoryError_(f"the program overlaps the paravirtual console's mailbox at {MAILBOX:#x}")


def long_mode_check(device: str | None = None) -> tuple[bool, str]:
    """Can this host run a 64-bit guest? (True, "") or (False, the reason, in words)."""
    probe = "    mov eax, 0x64\n    out 0x10, eax\n    hlt\n"
    try:
        with Machine(assemble(probe, mode="long"), device=device) as m:
            r = m.run(max_exits=10, timeout=2.0, check=False)
    except LongModeUnavailable as exc:
        return False, exc.message
    except RequirementError as exc:
        return False, exc.message
    if r.stopped == "hlt" and r.reports == (0x64,):
        return True, ""
    return False, f"a 64-bit probe guest did not run to hlt here (it stopped with {r.stopped})"

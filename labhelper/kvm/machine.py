"""A whole tiny VM in one object: memory, one vCPU, a program, and the devices it talks to.

:class:`Machine` is what a VMM like QEMU or Firecracker does, in miniature: open /dev/kvm, create
a VM, give it memory, load a program, put the vCPU in the right mode, then loop::

    while True:
        exit = vcpu.run()            # the guest runs until it needs us
        emulate what it asked for    # a byte for the serial port, a doorbell, an MMIO register
        stop at hlt

Devices (each one small and readable):

* :class:`SerialPort`: COM1 at port 0x3f8. Each byte is one ``out``, one exit: *full
  virtualization* of a real device by trap-and-emulate (the guest needs no change).
* :class:`PvConsole`: a *paravirtual* console. The guest leaves the message in memory, writes its
  address and length into a mailbox, and rings a doorbell port: one exit per message.
* :class:`MmioUart`: a device at an address with no memory behind it (MMIO), like the UARTs of
  ARM boards: DATA (+0, write), ID (+4, read), COUNT (+8, read).
* :class:`ReportPort`: port 0x10, where a guest reports numbers (``out 0x10, ax``).

A VMM must not trust its guest: the paravirtual console checks the buffer the guest describes
before it reads it.
"""
from __future__ import annotations

import contextlib
import platform
import struct
import time
from dataclasses import dataclass, field

from ..errors import LabError, RequirementError, SyscallError
from . import exits as ex
from . import watchdog
from .guests import (DOORBELL_PORT, MAILBOX, MMIO_BASE, REPORT_PORT, SERIAL_PORT, Program,
                     assemble)
from .system import Kvm
from .vcpu import Registers, Segment
from .vm import PAGE_SIZE, MemoryError_, check_memory_request

__all__ = ["Machine", "RunResult", "GuestError", "LongModeUnavailable", "SerialPort", "PvConsole",
           "MmioUart", "ReportPort", "DEFAULT_MEMORY", "long_mode_check"]

DEFAULT_MEMORY = 64 * 1024


class GuestError(LabError):
    """The guest stopped in a way it cannot recover from (triple fault, refused entry...)."""

    def __init__(self, message: str, hint: str | None = None, exit=None, regs=None):
        super().__init__(message, hint)
        self.exit = exit
        self.regs = regs

    def __reduce__(self):
        return (self.__class__, (self.message, self.hint, self.exit, self.regs))


class LongModeUnavailable(RequirementError):
    """This host's KVM would not put a vCPU in 64-bit long mode."""


# --- devices ---------------------------------------------------------------------------------------

class SerialPort:
    """COM1 (a 16550 UART), reduced to what a guest needs to print."""
    name = "serial"

    def __init__(self, base: int = SERIAL_PORT):
        self.base = base
        self.ports = range(base, base + 8)
        self.output = bytearray()

    def io_out(self, machine, port: int, data: bytes) -> None:
        if port == self.base:                 # THR: transmit holding register
            self.output += data
            machine.output += data

    def io_in(self, machine, port: int, size: int) -> bytes:
        if port == self.base + 5:             # LSR: "transmitter empty", so a polling driver goes on
            return bytes([0x60]) * size
        return bytes(size)


class ReportPort:
    """Port 0x10: each ``out`` appends the value written to ``machine.reports``."""
    name = "report"

    def __init__(self, port: int = REPORT_PORT):
        self.ports = range(port, port + 1)

    def io_out(self, machine, port: int, data: bytes) -> None:
        machine.reports.append(int.from_bytes(data, "little"))

    def io_in(self, machine, port: int, size: int) -> bytes:
        return bytes(size)


class PvConsole:
    """A paravirtual console: mailbox at MAILBOX (u16 address, u16 length), doorbell port."""
    name = "pv-console"

    def __init__(self, doorbell: int = DOORBELL_PORT, mailbox: int = MAILBOX):
        self.ports = range(doorbell, doorbell + 1)
        self.mailbox = mailbox
        self.output = bytearray()
        self.rings = 0
        self.refused: list[str] = []          # descriptors that pointed outside guest memory

    def io_out(self, machine, port: int, data: bytes) -> None:
        self.rings += 1
        address, length = struct.unpack("<HH", machine.vm.read(self.mailbox, 4))
        try:
            text = machine.vm.read(address, length)   # checked: must lie inside guest memory
        except MemoryError_ as exc:
            self.refused.append(f"buffer [{address:#x}, +{length}) refused: {exc.message}")
            return
        self.output += text
        machine.output += text

    def io_in(self, machine, port: int, size: int) -> bytes:
        return bytes(size)


class MmioUart:
    """A UART at an MMIO address: DATA at +0 (write a byte), ID at +4 ("LHUA"), COUNT at +8."""
    name = "mmio-uart"

    def __init__(self, base: int = MMIO_BASE, size: int = 0x1000):
        self.base, self.size = base, size
        self.output = bytearray()
        self.accesses = 0

    def mmio_write(self, machine, address: int, data: bytes) -> None:
        self.accesses += 1
        if address == self.base:
            self.output += data[:1]
            machine.output += data[:1]

    def mmio_read(self, machine, address: int, size: int) -> bytes:
        self.accesses += 1
        offset = address - self.base
        if offset == 4:
            value = b"LHUA"
        elif offset == 8:
            value = len(self.output).to_bytes(8, "little")
        else:
            value = bytes(8)
        return value[:size].ljust(size, b"\0")


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

# Control register and EFER bits for long mode (Intel SDM vol. 3, 2.5 and 9.8.5).
CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_AM, CR0_PG = 1, 2, 0x10, 0x20, 1 << 16, 1 << 18, 1 << 31
CR4_PAE = 1 << 5
EFER_LME, EFER_LMA = 1 << 8, 1 << 10
PTE_P, PTE_RW, PTE_PS = 1, 2, 0x80


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
        self.devices = list(devices) if devices is not None else [SerialPort(), ReportPort(), PvConsole(), MmioUart()]
        self._ports = {}
        self._mmio = []
        for d in self.devices:
            for p in getattr(d, "ports", ()):
                self._ports[p] = d
            if hasattr(d, "mmio_write"):
                if d.base < memory:
                    raise MemoryError_(f"{d.name} at {d.base:#x} lies inside guest memory (which ends at {memory:#x}): "
                                       "MMIO needs an address with no memory behind it")
                self._mmio.append(d)
        self.output = bytearray()
        self.reports: list[int] = []
        self.counts: dict[str, int] = {}       # guest exits by kind, over the Machine's life
        self.kvm = self.vm = self.vcpu = None
        with contextlib.ExitStack() as undo:
            undo.callback(self.close)           # any failure below closes what was opened
            from ..registry import fault_point  # test hook (R1): kill or raise right after a step
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
                self._enter_long_mode(memory)
            else:
                self._enter_real_mode(memory)
            undo.pop_all()

    # --- modes ----------------------------------------------------------------------------------

    def _enter_real_mode(self, memory: int) -> None:
        # After reset a vCPU executes at CS:IP = f000:fff0 (the BIOS). We have no BIOS: point
        # every segment at 0, so that guest addresses are physical addresses, and IP at origin.
        s = self.vcpu.sregs()
        for name in ("cs", "ds", "es", "fs", "gs", "ss"):
            setattr(s, name, getattr(s, name)._replace(selector=0, base=0))
        self.vcpu.set_sregs(s)
        self.vcpu.set_regs(Registers(rip=self.program.origin, rsp=min(memory, 0x10000) - 0x10, rflags=0x2))

    def page_table_base(self, memory: int | None = None) -> int:
        """Where the VMM puts the page tables: the last three pages of guest memory."""
        return (memory or self.memory.size) - 3 * PAGE_SIZE

    def _enter_long_mode(self, memory: int) -> None:
        # 64-bit mode needs paging. Build an identity map of the first GiB with 2 MiB pages:
        # PML4[0] -> PDPT[0] -> PD[0..511], each PD entry a 2 MiB page (PS bit). Guest virtual
        # address == guest physical address, which keeps the listing's addresses true.
        base = self.page_table_base(memory)
        pml4, pdpt, pd = base, base + 0x1000, base + 0x2000
        self.memory.write(pml4, struct.pack("<Q", pdpt | PTE_P | PTE_RW))
        self.memory.write(pdpt, struct.pack("<Q", pd | PTE_P | PTE_RW))
        self.memory.write(pd, b"".join(struct.pack("<Q", (i << 21) | PTE_P | PTE_RW | PTE_PS) for i in range(512)))
        s = self.vcpu.sregs()
        s.cr3 = pml4
        s.cr4 = CR4_PAE
        s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG
        s.efer = EFER_LME | EFER_LMA
        # No GDT is needed while the guest does not reload a segment: KVM takes the hidden parts.
        s.cs = Segment(selector=0x8, base=0, limit=0xFFFFFFFF, type=11, present=1, dpl=0, db=0, s=1, l=1, g=1)
        data = Segment(selector=0x10, base=0, limit=0xFFFFFFFF, type=3, present=1, dpl=0, db=1, s=1, l=0, g=1)
        s.ds = s.es = s.fs = s.gs = s.ss = data
        try:
            self.vcpu.set_sregs(s)
        except SyscallError as exc:
            raise LongModeUnavailable(
                f"this host's KVM refused the long-mode register state ({exc.errno_name})",
                hint="the guests of this chapter also run in real mode; the lab VM (kvm_intel/kvm_amd) runs long mode",
                missing=("kvm-long-mode",)) from exc
        self.vcpu.set_regs(Registers(rip=self.program.origin, rsp=base, rflags=0x2))

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
        vcpu = self.vcpu
        try:
            try:
                watchdog.arm(vcpu, deadline)    # inside the try: the finally always disarms
                while True:
                    exit_ = self._step()
                    if type(exit_) is not ex.Interrupted or (deadline is not None and time.monotonic() >= deadline):
                        return exit_
            finally:
                watchdog.disarm(vcpu)
        except KeyboardInterrupt as exc:        # wherever it lands, the disarm included
            self._interrupted(exc)
            raise

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
        start_output, start_reports = len(self.output), len(self.reports)
        counts_before = dict(self.counts)
        stopped, last = "exit limit", None
        step = self._step
        vcpu = self.vcpu
        exits = 0
        t0 = time.perf_counter()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            try:
                # Inside the try: whatever happens next, the finally disarms (and if an interrupt
                # lands inside disarm itself, the VM is closed below, and a watchdog armed for a
                # closed vCPU disarms itself; the next run arms afresh in any case).
                watchdog.arm(vcpu, deadline)
                while exits < max_exits:
                    last = step()
                    kind = type(last)
                    if kind is ex.Interrupted:
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
            finally:
                watchdog.disarm(vcpu)
        except KeyboardInterrupt as exc:        # wherever it lands, the disarm included
            self._interrupted(exc)
            raise
        seconds = time.perf_counter() - t0
        counts = {k: v - counts_before.get(k, 0) for k, v in self.counts.items() if v - counts_before.get(k, 0)}
        result = RunResult(stopped, exits, counts, bytes(self.output[start_output:]),
                           tuple(self.reports[start_reports:]), last, seconds)
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

    def close(self) -> None:
        """Close the vCPU, the VM (and its memory) and /dev/kvm. Idempotent."""
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


CPUID_HYPERVISOR = 1 << 31   # leaf 1, ECX bit 31: "you are running on a hypervisor"


def guest_cpuid(supported) -> tuple:
    """The CPUID table a guest gets: what KVM supports, plus the hypervisor bit.

    KVM_GET_SUPPORTED_CPUID leaves bit 31 of leaf 1's ECX to the VMM: telling the guest that it
    is a guest is a choice, and QEMU (like us) makes it. With the bit set, a guest kernel looks
    at leaf 0x40000000 for the hypervisor's name ("KVMKVMKVM") and its paravirtual features.
    """
    return tuple(e._replace_ecx(e.ecx | CPUID_HYPERVISOR) if e.function == 1 else e for e in supported)


def _check_layout(program: Program, memory: int) -> None:
    check_memory_request(memory)
    limit = memory - (3 * PAGE_SIZE if program.mode == "long" else 0)
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

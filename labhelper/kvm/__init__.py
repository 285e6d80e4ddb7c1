"""A small virtual machine monitor (VMM) over the KVM ioctl API, for chapter 02.

Laid out like rust-vmm's kvm-ioctls, one module per level:

=============  =================================================================================
``structs``    ctypes mirrors of the kernel's structures (kvm_regs, kvm_sregs, kvm_run, ...)
``ioctls``     the ioctl numbers, computed as <linux/kvm.h> does, in one table
``exits``      the typed exits: IoOut, IoIn, MmioWrite, MmioRead, Hlt, Shutdown, FailEntry, ...
``fds``        who owns which KVM fd and mapping: :func:`close_all`, :func:`open_fds`, the fork hook
``cpuid``      CPUID: what KVM supports, the guest's table (hypervisor bit), struct kvm_cpuid2
``vcpu``       a vCPU fd (:class:`Vcpu`): registers, special registers, run() -> typed exit
``vm``         a VM fd (:class:`Vm`): guest memory slots, create_vcpu()
``system``     the /dev/kvm fd (:class:`Kvm`): version, capabilities, CPUID, create_vm()
``guests``     guest programs in assembly, assembled by GNU as, with listings
``devices``    the emulated devices: serial port, report port, paravirtual console, MMIO UART
``modes``      a vCPU put in real mode or 64-bit long mode (segments, page tables, CR0/CR4/EFER)
``watchdog``   the thread that kicks a vCPU out of KVM_RUN (timeouts, interrupts), as KVM documents
``machine``    :class:`Machine`: a VM with memory, one vCPU, devices and a watchdog, and the run loop
=============  =================================================================================

Each module imports only the ones above it in this table (``system`` -> ``vm`` -> ``vcpu``,
never back); ``tests/unit/test_kvm_imports.py`` checks it.

Chapter 02's pictures and its step-by-step panel are on the teaching side:
:mod:`labhelper.teach.diagrams` and :mod:`labhelper.teach.stepper`.

Quick start::

    from labhelper import kvm
    with kvm.Machine(kvm.guests.SERIAL_HELLO) as m:
        print(m.run())

Every ioctl goes through :func:`labhelper.syscalls.ioctl`, except KVM_RUN, which runs once per
exit and takes the shorter :func:`labhelper.syscalls.ioctl_noarg`. A teardown cell calls
:func:`close_all`. ``LABHELPER_KVM_DEVICE`` points at another device path (``/nonexistent``
pretends there is no KVM).
"""
from __future__ import annotations

from . import cpuid, devices, exits, fds, guests, ioctls, modes, structs, watchdog
from .exits import (FailEntry, Hlt, InternalError, Interrupted, IoIn, IoOut, MmioRead, MmioWrite,
                    Shutdown)
from .fds import Closed, close_all, open_fds
from .guests import Program, assemble
from .machine import GuestError, Machine, RunResult, long_mode_check
from .modes import LongModeUnavailable
from .system import DEVICE_ENV, Kvm, KvmUnavailable, device_path
from .vcpu import Registers, RegisterError, Segment, SpecialRegisters, Vcpu
from .vm import MEMORY_CAP, GuestMemory, MemoryError_, Vm

__all__ = [
    "exits", "guests", "ioctls", "structs", "watchdog", "cpuid", "devices", "fds", "modes",
    "close_all", "Closed", "Kvm", "Vm", "Vcpu", "Machine", "RunResult", "Program",
    "assemble", "GuestError", "LongModeUnavailable", "KvmUnavailable", "MemoryError_", "RegisterError",
    "Registers", "Segment", "SpecialRegisters", "GuestMemory", "MEMORY_CAP", "DEVICE_ENV",
    "device_path", "open_fds", "available", "long_mode_check",
    "IoOut", "IoIn", "MmioWrite", "MmioRead", "Hlt", "Shutdown", "FailEntry", "InternalError", "Interrupted",
]


def available(device: str | None = None) -> tuple[bool, str]:
    """(True, "") if a VM can be made here, else (False, why): notebooks explain and skip."""
    try:
        with Kvm(device):
            return True, ""
    except KvmUnavailable as exc:
        return False, exc.message

"""A small virtual machine monitor (VMM) over the KVM ioctl API, for chapter 02.

Laid out like rust-vmm's kvm-ioctls, one module per level:

=============  =================================================================================
``ioctls``     the ioctl numbers, computed as <linux/kvm.h> does, in one table
``structs``    ctypes mirrors of the kernel's structures (kvm_regs, kvm_sregs, kvm_run, ...)
``system``     the /dev/kvm fd (:class:`Kvm`): version, capabilities, CPUID, create_vm()
``vm``         a VM fd (:class:`Vm`): guest memory slots, create_vcpu()
``vcpu``       a vCPU fd (:class:`Vcpu`): registers, special registers, run() -> typed exit
``exits``      the typed exits: IoOut, IoIn, MmioWrite, MmioRead, Hlt, Shutdown, FailEntry, ...
``guests``     guest programs in assembly, assembled by GNU as, with listings
``machine``    :class:`Machine`: all of the above plus devices (serial port, paravirtual console,
               MMIO UART) and the run loop
``watchdog``   the thread that kicks a vCPU out of KVM_RUN (timeouts, interrupts), as KVM documents
=============  =================================================================================

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

from . import exits, guests, ioctls, structs, watchdog
from .exits import (FailEntry, Hlt, InternalError, Interrupted, IoIn, IoOut, MmioRead, MmioWrite,
                    Shutdown)
from .guests import Program, assemble
from .machine import GuestError, LongModeUnavailable, Machine, RunResult, long_mode_check
from .system import DEVICE_ENV, Closed, Kvm, KvmUnavailable, close_all, device_path, open_fds
from .vcpu import Registers, RegisterError, Segment, SpecialRegisters, Vcpu
from .vm import MEMORY_CAP, GuestMemory, MemoryError_, Vm

__all__ = [
    "exits", "guests", "ioctls", "structs", "watchdog", "close_all", "Closed", "Kvm", "Vm", "Vcpu", "Machine", "RunResult", "Program",
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

"""Typed VM exits, decoded from the kvm_run page.

When ``KVM_RUN`` returns, the guest has stopped because it did something the kernel did not finish
by itself: an ``out`` to an I/O port, a load or store to an address with no memory behind it
(MMIO), ``hlt``, a triple fault... The kernel writes the reason and its details into the vCPU's
``kvm_run`` page, which the VMM has mmap()ed. :func:`decode` reads that page and returns one of
the small typed values below, e.g. ``IoOut(port=0x3f8, size=1, data=b'H')``.

Reading uses :mod:`struct` at the offsets that the ctypes mirror in :mod:`.structs` computes, so
it works on any buffer: the live mmap, or fake bytes in a unit test.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from . import structs

__all__ = [
    "EXIT_NAMES", "INTERNAL_ERRORS", "IoOut", "IoIn", "MmioWrite", "MmioRead", "Hlt", "Shutdown",
    "FailEntry", "InternalError", "Interrupted", "SystemEvent", "Unhandled", "decode",
    "EXIT_TYPES", "KVM_EXIT_IO", "KVM_EXIT_HLT", "KVM_EXIT_MMIO", "KVM_EXIT_SHUTDOWN",
    "KVM_EXIT_FAIL_ENTRY", "KVM_EXIT_INTR", "KVM_EXIT_INTERNAL_ERROR", "KVM_EXIT_SYSTEM_EVENT",
    "is_error", "IO",
]

EXIT_NAMES: dict[int, str] = {
    0: "KVM_EXIT_UNKNOWN", 1: "KVM_EXIT_EXCEPTION", 2: "KVM_EXIT_IO", 3: "KVM_EXIT_HYPERCALL",
    4: "KVM_EXIT_DEBUG", 5: "KVM_EXIT_HLT", 6: "KVM_EXIT_MMIO", 7: "KVM_EXIT_IRQ_WINDOW_OPEN",
    8: "KVM_EXIT_SHUTDOWN", 9: "KVM_EXIT_FAIL_ENTRY", 10: "KVM_EXIT_INTR", 11: "KVM_EXIT_SET_TPR",
    12: "KVM_EXIT_TPR_ACCESS", 16: "KVM_EXIT_NMI", 17: "KVM_EXIT_INTERNAL_ERROR",
    24: "KVM_EXIT_SYSTEM_EVENT", 29: "KVM_EXIT_X86_RDMSR", 30: "KVM_EXIT_X86_WRMSR",
    33: "KVM_EXIT_X86_BUS_LOCK", 37: "KVM_EXIT_NOTIFY",
}
KVM_EXIT_UNKNOWN, KVM_EXIT_IO, KVM_EXIT_HLT, KVM_EXIT_MMIO = 0, 2, 5, 6
KVM_EXIT_SHUTDOWN, KVM_EXIT_FAIL_ENTRY, KVM_EXIT_INTR = 8, 9, 10
KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_SYSTEM_EVENT = 17, 24
KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT = 0, 1

INTERNAL_ERRORS = {
    1: ("KVM_INTERNAL_ERROR_EMULATION", "KVM had to emulate an instruction and could not"),
    2: ("KVM_INTERNAL_ERROR_SIMUL_EX", "an exception happened while delivering another one"),
    3: ("KVM_INTERNAL_ERROR_DELIVERY_EV", "an event could not be delivered to the guest"),
    4: ("KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON", "the hardware gave an exit reason KVM does not know"),
}


def _hex(data: bytes) -> str:
    return data.hex(" ") if data else ""


class IoOut(NamedTuple):
    """The guest wrote to an I/O port (``out``): port, access size, and the bytes written."""
    port: int
    size: int
    data: bytes
    count: int = 1

    reason = "KVM_EXIT_IO"

    def __repr__(self) -> str:
        extra = f", count={self.count}" if self.count != 1 else ""
        return f"IoOut(port={self.port:#x}, size={self.size}, data={self.data!r}{extra})"

    @property
    def value(self) -> int:
        """The (first) value written, as a little-endian integer."""
        return int.from_bytes(self.data[:self.size], "little")

    def describe(self) -> str:
        return f"out to port {self.port:#x}: {_hex(self.data)}"


class IoIn(NamedTuple):
    """The guest read an I/O port (``in``): the VMM must supply ``size * count`` bytes before
    the next KVM_RUN (see :meth:`labhelper.kvm.vcpu.Vcpu.complete_io_in`)."""
    port: int
    size: int
    count: int = 1

    reason = "KVM_EXIT_IO"

    def __repr__(self) -> str:
        extra = f", count={self.count}" if self.count != 1 else ""
        return f"IoIn(port={self.port:#x}, size={self.size}{extra})"

    def describe(self) -> str:
        return f"in from port {self.port:#x} ({self.size} byte{'s' * (self.size > 1)})"


class MmioWrite(NamedTuple):
    """The guest stored to a guest physical address with no memory slot behind it."""
    address: int
    size: int
    data: bytes

    reason = "KVM_EXIT_MMIO"

    def __repr__(self) -> str:
        return f"MmioWrite(address={self.address:#x}, size={self.size}, data={self.data!r})"

    @property
    def value(self) -> int:
        return int.from_bytes(self.data, "little")

    def describe(self) -> str:
        return f"store to {self.address:#x}: {_hex(self.data)}"


class MmioRead(NamedTuple):
    """The guest loaded from an address with no memory behind it: the VMM supplies the value
    (:meth:`labhelper.kvm.vcpu.Vcpu.complete_mmio_read`)."""
    address: int
    size: int

    reason = "KVM_EXIT_MMIO"

    def __repr__(self) -> str:
        return f"MmioRead(address={self.address:#x}, size={self.size})"

    def describe(self) -> str:
        return f"load from {self.address:#x} ({self.size} bytes)"


class Hlt(NamedTuple):
    """The guest executed ``hlt`` with nothing to wake it (no interrupt controller here)."""
    reason = "KVM_EXIT_HLT"

    def __repr__(self) -> str:
        return "Hlt()"

    def describe(self) -> str:
        return "hlt: the guest stopped"


class Shutdown(NamedTuple):
    """The guest triple-faulted: an exception while delivering a double fault. A real PC resets."""
    reason = "KVM_EXIT_SHUTDOWN"

    def __repr__(self) -> str:
        return "Shutdown()"

    def describe(self) -> str:
        return ("shutdown: the guest triple-faulted (an exception it could not handle, e.g. no "
                "valid interrupt table); a real PC would reset here")


class FailEntry(NamedTuple):
    """The hardware refused to enter the guest: the register state is invalid for VT-x/AMD-V."""
    hardware_reason: int
    cpu: int

    reason = "KVM_EXIT_FAIL_ENTRY"

    def __repr__(self) -> str:
        return f"FailEntry(hardware_reason={self.hardware_reason:#x}, cpu={self.cpu})"

    def describe(self) -> str:
        return (f"fail-entry: the CPU refused to enter the guest (hardware reason "
                f"{self.hardware_reason:#x}): the register state is not valid")


class InternalError(NamedTuple):
    """KVM itself could not go on (often: it had to emulate an instruction and could not)."""
    suberror: int
    data: tuple[int, ...] = ()

    reason = "KVM_EXIT_INTERNAL_ERROR"

    @property
    def name(self) -> str:
        return INTERNAL_ERRORS.get(self.suberror, (f"suberror {self.suberror}", ""))[0]

    def __repr__(self) -> str:
        data = ", ".join(f"{d:#x}" for d in self.data)
        return f"InternalError({self.name}, data=({data}))"

    def describe(self) -> str:
        text = INTERNAL_ERRORS.get(self.suberror, ("", "unknown internal error"))[1]
        return f"internal error {self.name}: {text}"


class Interrupted(NamedTuple):
    """KVM_RUN came back early because a signal arrived (SIGINT from a notebook interrupt) or
    immediate_exit was set. The guest is intact and can be run again."""
    reason = "KVM_EXIT_INTR"

    def __repr__(self) -> str:
        return "Interrupted()"

    def describe(self) -> str:
        return "interrupted: a signal arrived (or immediate_exit was set); the guest can go on"


class SystemEvent(NamedTuple):
    """The guest asked for a shutdown, reset or crash through a paravirtual interface (PSCI, ...)."""
    type: int
    data: tuple[int, ...] = ()

    reason = "KVM_EXIT_SYSTEM_EVENT"

    def describe(self) -> str:
        return f"system event {self.type}"


class Unhandled(NamedTuple):
    """An exit this small VMM does not decode; ``number`` is the raw exit_reason."""
    number: int

    @property
    def reason(self) -> str:  # type: ignore[override]
        return EXIT_NAMES.get(self.number, f"exit {self.number}")

    def __repr__(self) -> str:
        return f"Unhandled({self.reason})"

    def describe(self) -> str:
        return f"{self.reason}: not handled by this VMM"


EXIT_TYPES = (IoOut, IoIn, MmioWrite, MmioRead, Hlt, Shutdown, FailEntry, InternalError,
              Interrupted, SystemEvent, Unhandled)


def _eq(self, other) -> bool:
    # NamedTuples compare as plain tuples, so Hlt() == Shutdown() (both empty). Exits compare by type too.
    return type(self) is type(other) and tuple.__eq__(self, other)


def _ne(self, other) -> bool:
    return not _eq(self, other)


def _hash(self) -> int:
    return hash((type(self).__name__, tuple(self)))


for _cls in EXIT_TYPES:
    _cls.__eq__, _cls.__ne__, _cls.__hash__ = _eq, _ne, _hash


def is_error(exit_) -> bool:
    """True for exits after which this VMM cannot let the guest go on: a triple fault, a refused
    entry, KVM's own failure, a shutdown/reset/crash the guest asked for (SystemEvent: this small
    VMM implements no reset), or an exit it does not decode."""
    return isinstance(exit_, (Shutdown, FailEntry, InternalError, SystemEvent, Unhandled))


# Offsets come from the ctypes layout, so there is one source of truth for the ABI.
_OFF_REASON = structs.kvm_run.exit_reason.offset
_OFF_UNION = structs.kvm_run.exit.offset
# The union's io member, public: the vCPU reads it again to answer an `in` (Vcpu.complete_io_in).
IO = struct.Struct("<BBHIQ")            # direction, size, port, count, data_offset
_MMIO = struct.Struct("<Q8sIB")         # phys_addr, data[8], len, is_write
_FAIL = struct.Struct("<QI")            # hardware_entry_failure_reason, cpu
_INTERNAL = struct.Struct("<II16Q")     # suberror, ndata, data[16]
# exit_reason and the I/O member of the union in one read: most exits are I/O, and one unpack
# is cheaper than two. (For other exits the I/O fields are just other bytes, unused.)
_HEAD = struct.Struct(f"<{_OFF_REASON}xI{_OFF_UNION - _OFF_REASON - 4}x" + IO.format[1:])
# (tests/unit/test_kvm_exits.py checks these formats against the ctypes member offsets)

_HLT, _SHUTDOWN, _INTR = Hlt(), Shutdown(), Interrupted()
_new = tuple.__new__  # building the NamedTuple without its Python-level __new__: faster on the hot path
_head = _HEAD.unpack_from


def decode(run) -> object:
    """Decode the exit described in ``run``: the kvm_run mapping, or a ``bytes`` copy of it
    (anything whose slices are ``bytes``).

    This runs once per exit, so it reads only what the exit needs: exit_reason and the I/O member
    of the union first, and for other exits the one member of the union that the reason uses.
    """
    reason, direction, size, port, count, data_offset = _head(run)
    if reason == KVM_EXIT_IO:
        if direction == KVM_EXIT_IO_OUT:
            # The bytes lie in the same mapping, at data_offset from its start (a slice of an
            # mmap is already a bytes copy).
            return _new(IoOut, (port, size, run[data_offset:data_offset + size * count], count))
        return _new(IoIn, (port, size, count))
    if reason == KVM_EXIT_MMIO:
        address, data, length, is_write = _MMIO.unpack_from(run, _OFF_UNION)
        if is_write:
            return _new(MmioWrite, (address, length, data[:length]))
        return _new(MmioRead, (address, length))
    if reason == KVM_EXIT_HLT:
        return _HLT
    if reason == KVM_EXIT_INTR:
        return _INTR
    if reason == KVM_EXIT_SHUTDOWN:
        return _SHUTDOWN
    if reason == KVM_EXIT_FAIL_ENTRY:
        return FailEntry(*_FAIL.unpack_from(run, _OFF_UNION))
    if reason == KVM_EXIT_INTERNAL_ERROR:
        suberror, ndata, *data = _INTERNAL.unpack_from(run, _OFF_UNION)
        return InternalError(suberror, tuple(data[:min(ndata, 16)]))
    if reason == KVM_EXIT_SYSTEM_EVENT:
        type_, ndata, *data = _INTERNAL.unpack_from(run, _OFF_UNION)
        return SystemEvent(type_, tuple(data[:min(ndata, 16)]))
    return Unhandled(reason)

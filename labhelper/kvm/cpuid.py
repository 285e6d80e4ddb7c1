"""CPUID: what the guest's ``cpuid`` instruction answers, from KVM's offer to the vCPU's table.

On x86 a program asks the CPU who it is with the ``cpuid`` instruction (leaf in eax, sub-leaf in
ecx; the answer in eax, ebx, ecx, edx). In a guest the VMM decides the answers, in three steps,
each here:

1. **what the host can offer**: ``KVM_GET_SUPPORTED_CPUID`` on the /dev/kvm fd
   (:func:`supported`, behind :meth:`labhelper.kvm.system.Kvm.supported_cpuid`), a list of
   :class:`CpuidEntry`;
2. **what this guest gets**: a VMM's choice. We offer what KVM supports and set the hypervisor
   bit (:func:`guest_cpuid`), like QEMU's ``-cpu host``;
3. **telling the vCPU**: ``KVM_SET_CPUID2`` on the vCPU fd with a ``struct kvm_cpuid2``
   (:func:`kvm_cpuid2` builds it; :meth:`labhelper.kvm.vcpu.Vcpu.set_cpuid` passes it).

Both ``struct kvm_cpuid2`` buffers end in a C flexible array (``entries[]``): the caller says
how many entries there are room for in ``nent``.
"""
from __future__ import annotations

import ctypes
import errno
import functools

from .. import syscalls
from ..errors import SyscallError
from . import ioctls, structs

__all__ = ["CpuidEntry", "CPUID_HYPERVISOR", "supported", "ask_supported", "guest_cpuid", "kvm_cpuid2"]

CPUID_HYPERVISOR = 1 << 31   # leaf 1, ECX bit 31: "you are running on a hypervisor"
_FIRST_GUESS = 64            # entries offered to KVM_GET_SUPPORTED_CPUID at first
_MOST = 4096                 # ...doubled on E2BIG up to this many


class CpuidEntry(tuple):
    """One CPUID leaf as KVM offers it: (function, index, flags, eax, ebx, ecx, edx)."""
    __slots__ = ()

    def __new__(cls, function, index, flags, eax, ebx, ecx, edx):
        return super().__new__(cls, (function, index, flags, eax, ebx, ecx, edx))

    function = property(lambda self: self[0])
    index = property(lambda self: self[1])
    flags = property(lambda self: self[2])
    eax = property(lambda self: self[3])
    ebx = property(lambda self: self[4])
    ecx = property(lambda self: self[5])
    edx = property(lambda self: self[6])

    def _replace_ecx(self, ecx: int) -> "CpuidEntry":
        return CpuidEntry(self.function, self.index, self.flags, self.eax, self.ebx, ecx, self.edx)

    def __repr__(self) -> str:
        return (f"CpuidEntry({self.function:#x}.{self.index}: eax={self.eax:#x} ebx={self.ebx:#x} "
                f"ecx={self.ecx:#x} edx={self.edx:#x})")


# --- 1. what the host can offer ---------------------------------------------------------------

_SUPPORTED: dict[str, tuple[CpuidEntry, ...]] = {}   # device path -> KVM_GET_SUPPORTED_CPUID


def supported(fd: int, path: str) -> tuple[CpuidEntry, ...]:
    """KVM_GET_SUPPORTED_CPUID on the /dev/kvm fd ``fd``, opened from ``path``.

    The answer depends only on the host's CPU and KVM module, so it is asked once per process
    (per device path) and kept: every Machine needs it, and asking costs about as much as
    creating the VM.
    """
    cached = _SUPPORTED.get(path)
    if cached is None:
        cached = _SUPPORTED[path] = ask_supported(fd)
    return cached


def ask_supported(fd: int) -> tuple[CpuidEntry, ...]:
    """KVM_GET_SUPPORTED_CPUID, asked now (no cache).

    The array has no fixed size: we offer room for n entries; the kernel answers E2BIG if that
    is too few, and we try again with more.
    """
    n = _FIRST_GUESS
    while True:
        buf = structs.cpuid2_with(n)()
        buf.nent = n
        try:
            syscalls.ioctl(fd, ioctls.KVM_GET_SUPPORTED_CPUID, buf, name="KVM_GET_SUPPORTED_CPUID")
        except SyscallError as exc:
            if exc.errno == errno.E2BIG and n < _MOST:
                n *= 2
                continue
            raise
        return tuple(CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
                     for e in buf.entries[:buf.nent])


# --- 2. what this guest gets ------------------------------------------------------------------

def guest_cpuid(entries) -> tuple:
    """The CPUID table a guest gets: what KVM supports, plus the hypervisor bit.

    KVM_GET_SUPPORTED_CPUID leaves bit 31 of leaf 1's ECX to the VMM: telling the guest that it
    is a guest is a choice, and QEMU (like us) makes it. With the bit set, a guest kernel looks
    at leaf 0x40000000 for the hypervisor's name ("KVMKVMKVM") and its paravirtual features.
    """
    return tuple(e._replace_ecx(e.ecx | CPUID_HYPERVISOR) if e.function == 1 else e for e in entries)


# --- 3. telling the vCPU ----------------------------------------------------------------------

def kvm_cpuid2(entries) -> ctypes.Structure:
    """struct kvm_cpuid2 with ``entries`` (anything with the fields of :class:`CpuidEntry`),
    for KVM_SET_CPUID2."""
    entries = tuple(entries)
    try:
        return _kvm_cpuid2(entries)
    except TypeError:                     # an unhashable entry: build it without the cache
        return _kvm_cpuid2.__wrapped__(entries)


@functools.lru_cache(maxsize=8)
def _kvm_cpuid2(entries: tuple) -> ctypes.Structure:
    # Cached: every Machine sets the same table (the host's), and filling ~60 entries field by
    # field costs more than the ioctl. The kernel only reads it (KVM_SET_CPUID2 is _IOW), so one
    # buffer can be passed again and again.
    buf = structs.cpuid2_with(len(entries))()
    buf.nent = len(entries)
    for slot, e in zip(buf.entries, entries):
        slot.function, slot.index, slot.flags = e.function, e.index, e.flags
        slot.eax, slot.ebx, slot.ecx, slot.edx = e.eax, e.ebx, e.ecx, e.edx
    return buf

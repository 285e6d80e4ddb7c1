"""The KVM ioctl numbers, in one table, computed the way <linux/kvm.h> computes them.

KVM has no system calls of its own: a virtual machine monitor (VMM) talks to it with ioctl(2) on
three kinds of file descriptor, exactly as rust-vmm's kvm-ioctls crate is laid out:

* the **system** fd, from ``open("/dev/kvm")``: version, capabilities, ``KVM_CREATE_VM``;
* a **VM** fd, returned by ``KVM_CREATE_VM``: guest memory slots, ``KVM_CREATE_VCPU``;
* a **vCPU** fd, returned by ``KVM_CREATE_VCPU``: registers, and ``KVM_RUN``, which runs the guest
  until it does something the kernel hands back to us (an *exit*).

An ioctl request number packs four fields (include/uapi/asm-generic/ioctl.h, used by x86 and
arm64): the direction of the data (none, write to the kernel, read from it), the size of the
structure passed, a "type" byte (0xAE for KVM) and a command number::

    bits 31..30  direction   (_IOC_NONE=0, _IOC_WRITE=1, _IOC_READ=2)
    bits 29..16  size of the argument structure (14 bits)
    bits 15..8   type ("magic"), KVMIO = 0xAE
    bits  7..0   number

So ``KVM_GET_REGS = _IOR(KVMIO, 0x81, struct kvm_regs)`` is 2<<30 | 144<<16 | 0xAE<<8 | 0x81 =
0x8090AE81: the size of the structure is part of the number, which is how the kernel notices a
VMM built against a different layout.
"""
from __future__ import annotations

import ctypes
from typing import NamedTuple

from . import structs

__all__ = [
    "IOC_NONE", "IOC_WRITE", "IOC_READ", "KVMIO", "ioc", "io", "ior", "iow", "iowr", "decode",
    "Ioctl", "IOCTLS", "CAPS", "cap_name",
]

_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

IOC_NONE, IOC_WRITE, IOC_READ = 0, 1, 2
KVMIO = 0xAE


def ioc(direction: int, type_: int, nr: int, size: int) -> int:
    """_IOC(dir, type, nr, size) from asm-generic/ioctl.h."""
    if not 0 <= size < (1 << _IOC_SIZEBITS):
        # A programming error in the table (a structure too big for the number), found when this
        # module is imported: a plain ValueError, not a Refused (no learner's input is refused).
        raise ValueError(f"ioctl argument size {size} does not fit in {_IOC_SIZEBITS} bits")
    return ((direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT)
            | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT))


def _size(ctype) -> int:
    return ctype if isinstance(ctype, int) else ctypes.sizeof(ctype)


def io(type_: int, nr: int) -> int:
    """_IO: no argument structure (an integer argument, or none)."""
    return ioc(IOC_NONE, type_, nr, 0)


def ior(type_: int, nr: int, ctype) -> int:
    """_IOR: the kernel writes a structure that we read ("read" is from user space's side)."""
    return ioc(IOC_READ, type_, nr, _size(ctype))


def iow(type_: int, nr: int, ctype) -> int:
    """_IOW: we write a structure that the kernel reads."""
    return ioc(IOC_WRITE, type_, nr, _size(ctype))


def iowr(type_: int, nr: int, ctype) -> int:
    """_IOWR: both ways (e.g. KVM_TRANSLATE: a linear address in, a physical address out)."""
    return ioc(IOC_READ | IOC_WRITE, type_, nr, _size(ctype))


class Decoded(NamedTuple):
    direction: str
    type: int
    nr: int
    size: int

    def __repr__(self) -> str:
        return f"Decoded(direction={self.direction!r}, type={self.type:#04x}, nr={self.nr:#04x}, size={self.size})"


_DIRECTIONS = {IOC_NONE: "none", IOC_WRITE: "write", IOC_READ: "read", IOC_READ | IOC_WRITE: "read|write"}


def decode(number: int) -> Decoded:
    """Split a request number back into its four fields (the inverse of :func:`ioc`)."""
    return Decoded(
        _DIRECTIONS[(number >> _IOC_DIRSHIFT) & 3],
        (number >> _IOC_TYPESHIFT) & ((1 << _IOC_TYPEBITS) - 1),
        (number >> _IOC_NRSHIFT) & ((1 << _IOC_NRBITS) - 1),
        (number >> _IOC_SIZESHIFT) & ((1 << _IOC_SIZEBITS) - 1),
    )


class Ioctl(NamedTuple):
    """One row of the table: the name from <linux/kvm.h>, which fd it goes to, and its number."""
    name: str
    level: str          # "system", "vm" or "vcpu": the fd the kernel expects it on
    number: int
    argument: str       # what the third ioctl argument is, for the reader

    def __repr__(self) -> str:
        return f"Ioctl({self.name}, level={self.level}, number={self.number:#010x})"


def _table() -> dict[str, Ioctl]:
    s = structs
    rows = [
        # name, level, number, argument
        ("KVM_GET_API_VERSION", "system", io(KVMIO, 0x00), "none; returns 12"),
        ("KVM_CREATE_VM", "system", io(KVMIO, 0x01), "machine type (0); returns a VM fd"),
        ("KVM_CHECK_EXTENSION", "system", io(KVMIO, 0x03), "a KVM_CAP_* number; returns 0 or a value"),
        ("KVM_GET_VCPU_MMAP_SIZE", "system", io(KVMIO, 0x04), "none; returns the size of the kvm_run mapping"),
        ("KVM_GET_SUPPORTED_CPUID", "system", iowr(KVMIO, 0x05, s.kvm_cpuid2), "struct kvm_cpuid2 + entries"),
        ("KVM_CREATE_VCPU", "vm", io(KVMIO, 0x41), "vCPU id; returns a vCPU fd"),
        ("KVM_SET_USER_MEMORY_REGION", "vm", iow(KVMIO, 0x46, s.kvm_userspace_memory_region),
         "struct kvm_userspace_memory_region"),
        ("KVM_SET_TSS_ADDR", "vm", io(KVMIO, 0x47), "a guest physical address (Intel real mode needs it)"),
        ("KVM_SET_IDENTITY_MAP_ADDR", "vm", iow(KVMIO, 0x48, 8), "pointer to a __u64 guest address"),
        ("KVM_REGISTER_COALESCED_MMIO", "vm", iow(KVMIO, 0x67, s.kvm_coalesced_mmio_zone),
         "struct kvm_coalesced_mmio_zone"),
        ("KVM_IOEVENTFD", "vm", iow(KVMIO, 0x79, s.kvm_ioeventfd), "struct kvm_ioeventfd"),
        ("KVM_RUN", "vcpu", io(KVMIO, 0x80), "none; the exit is described in the kvm_run mapping"),
        ("KVM_GET_REGS", "vcpu", ior(KVMIO, 0x81, s.kvm_regs), "struct kvm_regs"),
        ("KVM_SET_REGS", "vcpu", iow(KVMIO, 0x82, s.kvm_regs), "struct kvm_regs"),
        ("KVM_GET_SREGS", "vcpu", ior(KVMIO, 0x83, s.kvm_sregs), "struct kvm_sregs"),
        ("KVM_SET_SREGS", "vcpu", iow(KVMIO, 0x84, s.kvm_sregs), "struct kvm_sregs"),
        ("KVM_TRANSLATE", "vcpu", iowr(KVMIO, 0x85, s.kvm_translation), "struct kvm_translation"),
        ("KVM_SET_CPUID2", "vcpu", iow(KVMIO, 0x90, s.kvm_cpuid2), "struct kvm_cpuid2 + entries"),
    ]
    return {name: Ioctl(name, level, number, arg) for name, level, number, arg in rows}


IOCTLS: dict[str, Ioctl] = _table()

# Module-level names for the code that calls them (ioctl(fd, KVM_RUN, 0, name="KVM_RUN")).
KVM_GET_API_VERSION = IOCTLS["KVM_GET_API_VERSION"].number
KVM_CREATE_VM = IOCTLS["KVM_CREATE_VM"].number
KVM_CHECK_EXTENSION = IOCTLS["KVM_CHECK_EXTENSION"].number
KVM_GET_VCPU_MMAP_SIZE = IOCTLS["KVM_GET_VCPU_MMAP_SIZE"].number
KVM_GET_SUPPORTED_CPUID = IOCTLS["KVM_GET_SUPPORTED_CPUID"].number
KVM_CREATE_VCPU = IOCTLS["KVM_CREATE_VCPU"].number
KVM_SET_USER_MEMORY_REGION = IOCTLS["KVM_SET_USER_MEMORY_REGION"].number
KVM_SET_TSS_ADDR = IOCTLS["KVM_SET_TSS_ADDR"].number
KVM_SET_IDENTITY_MAP_ADDR = IOCTLS["KVM_SET_IDENTITY_MAP_ADDR"].number
KVM_REGISTER_COALESCED_MMIO = IOCTLS["KVM_REGISTER_COALESCED_MMIO"].number
KVM_IOEVENTFD = IOCTLS["KVM_IOEVENTFD"].number
KVM_RUN = IOCTLS["KVM_RUN"].number
KVM_GET_REGS = IOCTLS["KVM_GET_REGS"].number
KVM_SET_REGS = IOCTLS["KVM_SET_REGS"].number
KVM_GET_SREGS = IOCTLS["KVM_GET_SREGS"].number
KVM_SET_SREGS = IOCTLS["KVM_SET_SREGS"].number
KVM_TRANSLATE = IOCTLS["KVM_TRANSLATE"].number
KVM_SET_CPUID2 = IOCTLS["KVM_SET_CPUID2"].number

KVM_API_VERSION = 12  # the only version there has ever been since Linux 2.6.22

# Capabilities asked with KVM_CHECK_EXTENSION (the numbers from <linux/kvm.h>).
CAPS: dict[str, int] = {
    "KVM_CAP_IRQCHIP": 0,
    "KVM_CAP_HLT": 1,
    "KVM_CAP_USER_MEMORY": 3,
    "KVM_CAP_SET_TSS_ADDR": 4,
    "KVM_CAP_EXT_CPUID": 7,
    "KVM_CAP_NR_VCPUS": 9,
    "KVM_CAP_NR_MEMSLOTS": 10,
    "KVM_CAP_COALESCED_MMIO": 15,
    "KVM_CAP_SET_GUEST_DEBUG": 23,
    "KVM_CAP_IOEVENTFD": 36,
    "KVM_CAP_SET_IDENTITY_MAP_ADDR": 37,
    "KVM_CAP_MAX_VCPUS": 66,
    "KVM_CAP_SYNC_REGS": 74,
    "KVM_CAP_READONLY_MEM": 81,
    "KVM_CAP_IMMEDIATE_EXIT": 136,
    "KVM_CAP_NESTED_STATE": 157,
}
globals().update(CAPS)

_CAP_NAMES = {v: k for k, v in CAPS.items()}


def cap_name(number: int) -> str:
    return _CAP_NAMES.get(number, f"KVM_CAP_{number}")

"""ctypes mirrors of the structures in <linux/kvm.h> (x86_64) that this VMM passes to the kernel.

Field names, order and types are copied from the header, so ``ctypes.sizeof`` and each field's
``offset`` match the C compiler's: the unit tests check them against the values the header
gives (and, where gcc is installed, against a C program that prints ``sizeof``/``offsetof``).

Only layout lives here. Nothing in this module calls the kernel; the ioctls go through
:func:`labhelper.syscalls.ioctl`.
"""
from __future__ import annotations

import ctypes
import functools

u8, u16, u32, u64, s32 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int32

__all__ = [
    "kvm_userspace_memory_region", "kvm_regs", "kvm_segment", "kvm_dtable", "kvm_sregs",
    "kvm_run", "kvm_run_io", "kvm_run_mmio", "kvm_run_fail_entry", "kvm_run_internal",
    "kvm_run_system_event", "kvm_run_hw", "kvm_run_ex", "kvm_translation", "kvm_cpuid_entry2",
    "kvm_cpuid2", "cpuid2_with", "kvm_coalesced_mmio_zone", "kvm_ioeventfd", "KVM_MEM_READONLY",
    "REGISTER_NAMES",
]

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_NR_INTERRUPTS = 256


class kvm_userspace_memory_region(ctypes.Structure):
    """One memory slot: guest physical [guest_phys_addr, +memory_size) is backed by our
    virtual memory at userspace_addr. The kernel keeps only the *address*: the mapping must stay
    alive (and mapped) as long as the slot exists."""
    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),       # bytes
        ("userspace_addr", u64),    # start of the userspace allocated memory
    ]


REGISTER_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
                  "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")


class kvm_regs(ctypes.Structure):
    """The general purpose registers (arch/x86/include/uapi/asm/kvm.h)."""
    _fields_ = [(name, u64) for name in REGISTER_NAMES]


class kvm_segment(ctypes.Structure):
    """A segment register as the CPU caches it: not just the selector the program loaded, but
    the base, limit and attributes read from the descriptor table (the "hidden part")."""
    _fields_ = [
        ("base", u64),
        ("limit", u32),
        ("selector", u16),
        ("type", u8),
        ("present", u8), ("dpl", u8), ("db", u8), ("s", u8), ("l", u8), ("g", u8), ("avl", u8),
        ("unusable", u8),
        ("padding", u8),
    ]


class kvm_dtable(ctypes.Structure):
    """A descriptor table register (GDTR, IDTR): base and limit."""
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


class kvm_sregs(ctypes.Structure):
    """The "special" registers: segments, descriptor tables, control registers, EFER."""
    _fields_ = [
        ("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment), ("fs", kvm_segment),
        ("gs", kvm_segment), ("ss", kvm_segment), ("tr", kvm_segment), ("ldt", kvm_segment),
        ("gdt", kvm_dtable), ("idt", kvm_dtable),
        ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64), ("cr8", u64),
        ("efer", u64),
        ("apic_base", u64),
        ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


# --- struct kvm_run: the page shared between the kernel and the VMM for each vCPU ------------
# After KVM_RUN returns, exit_reason says why, and one member of the union below says the rest.

class kvm_run_hw(ctypes.Structure):          # KVM_EXIT_UNKNOWN
    _fields_ = [("hardware_exit_reason", u64)]


class kvm_run_fail_entry(ctypes.Structure):  # KVM_EXIT_FAIL_ENTRY
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class kvm_run_ex(ctypes.Structure):          # KVM_EXIT_EXCEPTION
    _fields_ = [("exception", u32), ("error_code", u32)]


class kvm_run_io(ctypes.Structure):          # KVM_EXIT_IO
    # The data is not here: it sits at data_offset bytes from the start of kvm_run (in the same
    # mapping), count * size bytes, so that string instructions (rep outsb) fit.
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32), ("data_offset", u64)]


class kvm_run_mmio(ctypes.Structure):        # KVM_EXIT_MMIO
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class kvm_run_internal(ctypes.Structure):    # KVM_EXIT_INTERNAL_ERROR
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_system_event(ctypes.Structure):  # KVM_EXIT_SYSTEM_EVENT
    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class _kvm_run_exit(ctypes.Union):
    _fields_ = [
        ("hw", kvm_run_hw), ("fail_entry", kvm_run_fail_entry), ("ex", kvm_run_ex),
        ("io", kvm_run_io), ("mmio", kvm_run_mmio), ("internal", kvm_run_internal),
        ("system_event", kvm_run_system_event),
        ("padding", ctypes.c_char * 256),   # the union is fixed at 256 bytes in the ABI
    ]


class kvm_run(ctypes.Structure):
    _anonymous_ = ("exit",)
    _fields_ = [
        # in: set by us before KVM_RUN
        ("request_interrupt_window", u8),
        ("immediate_exit", u8),             # 1: KVM_RUN returns EINTR at once, without entering
        ("padding1", u8 * 6),
        # out: set by the kernel
        ("exit_reason", u32),
        ("ready_for_interrupt_injection", u8),
        ("if_flag", u8),
        ("flags", u16),
        ("cr8", u64),
        ("apic_base", u64),
        ("exit", _kvm_run_exit),
        ("kvm_valid_regs", u64),
        ("kvm_dirty_regs", u64),
        ("s", ctypes.c_char * 2048),        # kvm_sync_regs, padded to 2 KiB
    ]


class kvm_translation(ctypes.Structure):
    """KVM_TRANSLATE: walk the guest's page tables for one linear address."""
    _fields_ = [
        ("linear_address", u64),
        ("physical_address", u64),
        ("valid", u8), ("writeable", u8), ("usermode", u8), ("pad", u8 * 5),
    ]


class kvm_cpuid_entry2(ctypes.Structure):
    _fields_ = [("function", u32), ("index", u32), ("flags", u32),
                ("eax", u32), ("ebx", u32), ("ecx", u32), ("edx", u32), ("padding", u32 * 3)]


class kvm_cpuid2(ctypes.Structure):
    """A header followed by ``nent`` entries (a C flexible array): see :func:`cpuid2_with`."""
    _fields_ = [("nent", u32), ("padding", u32)]


@functools.lru_cache(maxsize=16)
def cpuid2_with(n: int) -> type[ctypes.Structure]:
    """A kvm_cpuid2 type with room for ``n`` entries (C's ``entries[]`` has no size). One type
    per n, made once: building a ctypes type costs more than the ioctl that uses it."""
    class kvm_cpuid2_n(ctypes.Structure):
        _fields_ = [("nent", u32), ("padding", u32), ("entries", kvm_cpuid_entry2 * n)]
    return kvm_cpuid2_n


class kvm_coalesced_mmio_zone(ctypes.Structure):
    _fields_ = [("addr", u64), ("size", u32), ("pio", u32)]


class kvm_ioeventfd(ctypes.Structure):
    _fields_ = [("datamatch", u64), ("addr", u64), ("len", u32), ("fd", s32), ("flags", u32),
                ("pad", u8 * 36)]

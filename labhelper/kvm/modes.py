"""Putting a fresh vCPU in the mode its program was written for: real mode or 64-bit long mode.

A vCPU starts as a PC does after reset: in 16-bit real mode, at CS:IP = f000:fff0, where a BIOS
would be. We have no BIOS and no boot loader, so the VMM does their work before the first
KVM_RUN, with nothing but register writes (and, for long mode, page tables in guest memory):

* :func:`enter_real_mode`: every segment at 0 (guest address == physical address), IP at the
  program's origin;
* :func:`enter_long_mode`: an identity map of the first GiB in the last
  :data:`PAGE_TABLE_PAGES` pages of guest memory (:func:`page_table_base`), CR3 pointing at it,
  CR0.PE+PG, CR4.PAE, EFER.LME+LMA and a 64-bit code segment, all at once. A real boot loader
  climbs there through protected mode; KVM lets us set the end state directly.

Each function takes the vCPU (and the guest memory) it works on: the Machine calls them.
"""
from __future__ import annotations

import struct

from ..errors import RequirementError, SyscallError
from .vcpu import Registers, Segment
from .vm import PAGE_SIZE

__all__ = ["LongModeUnavailable", "enter_real_mode", "enter_long_mode", "page_table_base",
           "PAGE_TABLE_PAGES", "CR0_PE", "CR0_MP", "CR0_ET", "CR0_NE", "CR0_WP", "CR0_AM", "CR0_PG",
           "CR4_PAE", "EFER_LME", "EFER_LMA", "PTE_P", "PTE_RW", "PTE_US", "PTE_PS"]

# Control register and EFER bits for long mode (Intel SDM vol. 3, 2.5 and 9.8.5).
CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_AM, CR0_PG = 1, 2, 0x10, 0x20, 1 << 16, 1 << 18, 1 << 31
CR4_PAE = 1 << 5
EFER_LME, EFER_LMA = 1 << 8, 1 << 10
PTE_P, PTE_RW, PTE_US, PTE_PS = 1, 2, 4, 0x80

PAGE_TABLE_PAGES = 3         # PML4, PDPT, one page directory


class LongModeUnavailable(RequirementError):
    """This host's KVM would not put a vCPU in 64-bit long mode."""


def enter_real_mode(vcpu, origin: int, memory: int) -> None:
    """Real mode without a BIOS: run the program at ``origin``, with the stack under 64 KiB
    (or under the end of ``memory`` bytes of guest memory, if that is less)."""
    # After reset a vCPU executes at CS:IP = f000:fff0 (the BIOS). We have no BIOS: point
    # every segment at 0, so that guest addresses are physical addresses, and IP at origin.
    s = vcpu.sregs()
    for name in ("cs", "ds", "es", "fs", "gs", "ss"):
        setattr(s, name, getattr(s, name)._replace(selector=0, base=0))
    vcpu.set_sregs(s)
    vcpu.set_regs(Registers(rip=origin, rsp=min(memory, 0x10000) - 0x10, rflags=0x2))


def page_table_base(memory: int) -> int:
    """Where the VMM puts the page tables: the last three pages of ``memory`` bytes of guest memory."""
    return memory - PAGE_TABLE_PAGES * PAGE_SIZE


def enter_long_mode(vcpu, memory, origin: int) -> None:
    """64-bit mode: page tables in ``memory`` (the guest memory slot at guest physical 0), then
    the special registers; the program runs at ``origin`` with its stack under the page tables.

    Raises :class:`LongModeUnavailable` if this host's KVM refuses the register state.
    """
    # 64-bit mode needs paging. Build an identity map of the first GiB with 2 MiB pages:
    # PML4[0] -> PDPT[0] -> PD[0..511], each PD entry a 2 MiB page (PS bit). Guest virtual
    # address == guest physical address, which keeps the listing's addresses true. US: user mode
    # (ring 3) may use the pages too, as a guest's own kernel allows its processes
    # (guests.syscall_loop_source drops to ring 3 and makes system calls to ring 0).
    base = page_table_base(memory.size)
    pml4, pdpt, pd = base, base + 0x1000, base + 0x2000
    memory.write(pml4, struct.pack("<Q", pdpt | PTE_P | PTE_RW | PTE_US))
    memory.write(pdpt, struct.pack("<Q", pd | PTE_P | PTE_RW | PTE_US))
    memory.write(pd, b"".join(struct.pack("<Q", (i << 21) | PTE_P | PTE_RW | PTE_US | PTE_PS) for i in range(512)))
    s = vcpu.sregs()
    s.cr3 = pml4
    s.cr4 = CR4_PAE
    s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG
    s.efer = EFER_LME | EFER_LMA
    # No GDT is needed while the guest does not reload a segment: KVM takes the hidden parts.
    s.cs = Segment(selector=0x8, base=0, limit=0xFFFFFFFF, type=11, present=1, dpl=0, db=0, s=1, l=1, g=1)
    data = Segment(selector=0x10, base=0, limit=0xFFFFFFFF, type=3, present=1, dpl=0, db=1, s=1, l=0, g=1)
    s.ds = s.es = s.fs = s.gs = s.ss = data
    try:
        vcpu.set_sregs(s)
    except SyscallError as exc:
        raise LongModeUnavailable(
            f"this host's KVM refused the long-mode register state ({exc.errno_name})",
            hint="the guests of this chapter also run in real mode; the lab VM (kvm_intel/kvm_amd) runs long mode",
            missing=("kvm-long-mode",)) from exc
    vcpu.set_regs(Registers(rip=origin, rsp=base, rflags=0x2))

"""labhelper.kvm.modes without /dev/kvm: the register state and page tables each mode needs,
written to a fake vCPU and to real (anonymous) guest memory."""
from __future__ import annotations

import errno
import struct

import pytest

from labhelper import syscalls
from labhelper.errors import RequirementError
from labhelper.kvm import modes
from labhelper.kvm.vcpu import DescriptorTable, Registers, Segment, SpecialRegisters
from labhelper.kvm.vm import GuestMemory


def reset_sregs() -> SpecialRegisters:
    """A vCPU's special registers after reset: CS = f000 with base ffff0000, real mode."""
    seg = Segment(selector=0, base=0, limit=0xFFFF, type=3)
    return SpecialRegisters(cs=Segment(selector=0xF000, base=0xFFFF0000, limit=0xFFFF, type=11),
                            ds=seg, es=seg, fs=seg, gs=seg, ss=seg, tr=Segment(type=11), ldt=Segment(type=2),
                            gdt=DescriptorTable(0, 0xFFFF), idt=DescriptorTable(0, 0xFFFF),
                            cr0=0x60000010, cr2=0, cr3=0, cr4=0, cr8=0, efer=0, apic_base=0xFEE00900)


class FakeVcpu:
    def __init__(self, refuse: int | None = None):
        self.sregs_set: list[SpecialRegisters] = []
        self.regs_set: list[Registers] = []
        self.refuse = refuse

    def sregs(self) -> SpecialRegisters:
        return reset_sregs()

    def set_sregs(self, s: SpecialRegisters) -> None:
        s._to()                                          # what the kernel would be given
        if self.refuse:
            raise syscalls.error("ioctl", {"fd": 9, "request": "KVM_SET_SREGS"}, self.refuse)
        self.sregs_set.append(s)

    def set_regs(self, regs: Registers) -> None:
        regs.validate()
        self.regs_set.append(regs)


def test_real_mode_flattens_the_segments_and_starts_at_origin():
    v = FakeVcpu()
    modes.enter_real_mode(v, 0x1000, 0x10000)
    (s,), (r,) = v.sregs_set, v.regs_set
    for name in ("cs", "ds", "es", "fs", "gs", "ss"):
        seg = getattr(s, name)
        assert (seg.selector, seg.base) == (0, 0), name
    assert s.mode == "real" and s.cs.type == 11          # the rest of the reset state is kept
    assert (r.rip, r.rsp, r.rflags) == (0x1000, 0x10000 - 0x10, 0x2)
    modes.enter_real_mode(v, 0x1000, 0x100000)            # the stack stays under 64 KiB
    assert v.regs_set[-1].rsp == 0x10000 - 0x10
    modes.enter_real_mode(v, 0x1000, 0x8000)              # or under the end of a smaller memory
    assert v.regs_set[-1].rsp == 0x8000 - 0x10


def test_long_mode_builds_an_identity_map_and_sets_the_mode_bits():
    mem = GuestMemory(0, 0, 0x10000)
    v = FakeVcpu()
    modes.enter_long_mode(v, mem, 0x1000)
    base = modes.page_table_base(0x10000)
    assert base == 0x10000 - modes.PAGE_TABLE_PAGES * 4096 == 0xD000
    pml4, pdpt = (struct.unpack("<Q", mem.read(base + i * 0x1000, 8))[0] for i in range(2))
    assert pml4 == (base + 0x1000) | modes.PTE_P | modes.PTE_RW | modes.PTE_US
    assert pdpt == (base + 0x2000) | modes.PTE_P | modes.PTE_RW | modes.PTE_US
    pd = struct.unpack("<512Q", mem.read(base + 0x2000, 4096))
    assert all(e == (i << 21) | modes.PTE_P | modes.PTE_RW | modes.PTE_US | modes.PTE_PS for i, e in enumerate(pd))
    (s,), (r,) = v.sregs_set, v.regs_set
    assert s.mode == "long" and s.paging and s.cr3 == base
    assert s.cr4 & modes.CR4_PAE and s.efer == modes.EFER_LME | modes.EFER_LMA
    assert s.cr0 & (modes.CR0_PE | modes.CR0_PG) == modes.CR0_PE | modes.CR0_PG
    assert s.cs.l == 1 and s.cs.db == 0 and s.ds.db == 1 and s.ss is s.ds
    assert (r.rip, r.rsp) == (0x1000, base)               # the stack grows down from the tables
    mem.close()


def test_a_refused_long_mode_state_is_a_requirement_with_a_reason():
    mem = GuestMemory(0, 0, 0x10000)
    with pytest.raises(modes.LongModeUnavailable, match=r"refused the long-mode register state \(EINVAL\)") as info:
        modes.enter_long_mode(FakeVcpu(refuse=errno.EINVAL), mem, 0x1000)
    assert isinstance(info.value, RequirementError) and info.value.missing == ("kvm-long-mode",)
    assert "hint:" in str(info.value)
    mem.close()

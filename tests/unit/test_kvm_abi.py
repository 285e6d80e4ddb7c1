"""labhelper.kvm's ABI: ioctl numbers and structure layouts, checked against <linux/kvm.h>.

No root and no /dev/kvm needed. The hard-coded values are the header's (x86_64); where gcc and
the kernel headers are installed, a small C program prints sizeof/offsetof/the request numbers
and every one is compared, so a typo in a ctypes field cannot hide.
"""
from __future__ import annotations

import ctypes
import subprocess

import capabilities
import pytest

from labhelper.kvm import ioctls, structs

# From <linux/kvm.h> on x86_64 (gcc -E / printf of each macro).
KNOWN_NUMBERS = {
    "KVM_GET_API_VERSION": 0xAE00, "KVM_CREATE_VM": 0xAE01, "KVM_CHECK_EXTENSION": 0xAE03,
    "KVM_GET_VCPU_MMAP_SIZE": 0xAE04, "KVM_GET_SUPPORTED_CPUID": 0xC008AE05, "KVM_CREATE_VCPU": 0xAE41,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46, "KVM_SET_TSS_ADDR": 0xAE47,
    "KVM_SET_IDENTITY_MAP_ADDR": 0x4008AE48, "KVM_REGISTER_COALESCED_MMIO": 0x4010AE67,
    "KVM_IOEVENTFD": 0x4040AE79, "KVM_RUN": 0xAE80, "KVM_GET_REGS": 0x8090AE81,
    "KVM_SET_REGS": 0x4090AE82, "KVM_GET_SREGS": 0x8138AE83, "KVM_SET_SREGS": 0x4138AE84,
    "KVM_TRANSLATE": 0xC018AE85, "KVM_SET_CPUID2": 0x4008AE90,
}

KNOWN_SIZES = {
    "kvm_userspace_memory_region": 32, "kvm_regs": 144, "kvm_segment": 24, "kvm_dtable": 16,
    "kvm_sregs": 312, "kvm_run": 2352, "kvm_translation": 24, "kvm_cpuid_entry2": 40, "kvm_cpuid2": 8,
    "kvm_coalesced_mmio_zone": 16, "kvm_ioeventfd": 64,
}

# (structure, C member path, offset)
KNOWN_OFFSETS = [
    ("kvm_run", "immediate_exit", 1), ("kvm_run", "exit_reason", 8), ("kvm_run", "cr8", 16),
    ("kvm_run", "io", 32), ("kvm_run", "mmio", 32), ("kvm_run", "kvm_valid_regs", 288), ("kvm_run", "s", 304),
    ("kvm_sregs", "gdt", 192), ("kvm_sregs", "cr0", 224), ("kvm_sregs", "efer", 264),
    ("kvm_sregs", "interrupt_bitmap", 280), ("kvm_regs", "rip", 128), ("kvm_regs", "rflags", 136),
    ("kvm_segment", "selector", 12), ("kvm_segment", "unusable", 22),
    ("kvm_userspace_memory_region", "userspace_addr", 24),
]

# Members of kvm_run's exit union: (ctypes struct, field, offset inside the member)
UNION_OFFSETS = [
    ("kvm_run_io", "direction", 0), ("kvm_run_io", "size", 1), ("kvm_run_io", "port", 2),
    ("kvm_run_io", "count", 4), ("kvm_run_io", "data_offset", 8),
    ("kvm_run_mmio", "phys_addr", 0), ("kvm_run_mmio", "data", 8), ("kvm_run_mmio", "len", 16),
    ("kvm_run_mmio", "is_write", 20), ("kvm_run_fail_entry", "cpu", 8),
    ("kvm_run_internal", "ndata", 4), ("kvm_run_internal", "data", 8),
]
C_MEMBER = {"kvm_run_io": "io", "kvm_run_mmio": "mmio", "kvm_run_fail_entry": "fail_entry",
            "kvm_run_internal": "internal"}
C_FIELD = {("kvm_run_fail_entry", "cpu"): "cpu"}


def _offset(struct_name: str, member: str) -> int:
    cls = getattr(structs, struct_name)
    if struct_name == "kvm_run" and member in ("io", "mmio"):
        return cls.exit.offset + getattr(structs._kvm_run_exit, member).offset
    return getattr(cls, member).offset


def test_ioctl_encoding_matches_asm_generic():
    # _IOR(KVMIO, 0x81, struct kvm_regs): read=2 in bits 31-30, size 144 in 29-16, 0xAE, 0x81
    assert ioctls.ior(0xAE, 0x81, 144) == (2 << 30) | (144 << 16) | (0xAE << 8) | 0x81
    assert ioctls.io(0xAE, 0x80) == 0xAE80
    assert ioctls.iowr(0xAE, 0x85, structs.kvm_translation) == 0xC018AE85
    d = ioctls.decode(0x4138AE84)
    assert (d.direction, d.type, d.nr, d.size) == ("write", 0xAE, 0x84, 312)
    assert repr(d) == "Decoded(direction='write', type=0xae, nr=0x84, size=312)"
    with pytest.raises(ValueError):
        ioctls.ioc(ioctls.IOC_READ, 0xAE, 1, 1 << 14)


@pytest.mark.parametrize("name", sorted(KNOWN_NUMBERS))
def test_ioctl_numbers_are_the_headers(name):
    assert ioctls.IOCTLS[name].number == KNOWN_NUMBERS[name]
    assert getattr(ioctls, name) == KNOWN_NUMBERS[name]


def test_every_table_row_is_known_and_leveled():
    assert set(ioctls.IOCTLS) == set(KNOWN_NUMBERS)
    assert {i.level for i in ioctls.IOCTLS.values()} == {"system", "vm", "vcpu"}
    assert ioctls.IOCTLS["KVM_RUN"].level == "vcpu"
    assert repr(ioctls.IOCTLS["KVM_RUN"]) == "Ioctl(KVM_RUN, level=vcpu, number=0x0000ae80)"
    assert ioctls.cap_name(136) == "KVM_CAP_IMMEDIATE_EXIT" and ioctls.cap_name(9999) == "KVM_CAP_9999"


@pytest.mark.parametrize("name", sorted(KNOWN_SIZES))
def test_structure_sizes(name):
    assert ctypes.sizeof(getattr(structs, name)) == KNOWN_SIZES[name]


@pytest.mark.parametrize("struct_name,member,offset", KNOWN_OFFSETS)
def test_structure_offsets(struct_name, member, offset):
    assert _offset(struct_name, member) == offset


@pytest.mark.parametrize("cls,field,offset", UNION_OFFSETS)
def test_exit_union_members(cls, field, offset):
    assert getattr(getattr(structs, cls), field).offset == offset
    assert ctypes.sizeof(structs._kvm_run_exit) == 256


def test_cpuid2_flexible_array():
    t = structs.cpuid2_with(3)
    assert ctypes.sizeof(t) == 8 + 3 * 40
    assert t.entries.offset == 8


_C_PROGRAM = r"""
#include <stddef.h>
#include <stdio.h>
#include <linux/kvm.h>
#define N(x) printf("number %s %lu\n", #x, (unsigned long)(x));
#define S(x) printf("size %s %zu\n", #x, sizeof(struct x));
#define O(s, m) printf("offset %s.%s %zu\n", #s, #m, offsetof(struct s, m));
int main(void) {
BODY
    return 0;
}
"""


@capabilities.needs("gcc")
@capabilities.needs("kvm-header", "<linux/kvm.h> is not installed")
def test_everything_against_the_c_compiler(tmp_path):
    lines = [f"N({n})" for n in KNOWN_NUMBERS]
    lines += [f"S({n})" for n in KNOWN_SIZES]
    lines += [f"O({s}, {m})" for s, m, _ in KNOWN_OFFSETS]
    lines += [f"O(kvm_run, {C_MEMBER[c]}.{f})" for c, f, _ in UNION_OFFSETS]
    src = tmp_path / "abi.c"
    src.write_text(_C_PROGRAM.replace("BODY", "\n".join("    " + l for l in lines)))
    exe = tmp_path / "abi"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    seen = 0
    for line in out.splitlines():
        kind, name, value = line.split()
        value = int(value)
        if kind == "number":
            assert ioctls.IOCTLS[name].number == value, name
        elif kind == "size":
            assert ctypes.sizeof(getattr(structs, name)) == value, name
        else:
            s, member = name.split(".", 1)
            if "." in member:  # kvm_run.io.port: the union's offset plus the member's
                m, f = member.split(".")
                cls = next(c for c, n in C_MEMBER.items() if n == m)
                ours = structs.kvm_run.exit.offset + getattr(getattr(structs, cls), f).offset
            else:
                ours = _offset(s, member)
            assert ours == value, name
        seen += 1
    assert seen == len(lines)


def test_sregs_struct_format_round_trips_through_ctypes():
    from labhelper.kvm import vcpu
    assert vcpu._SREGS.size == ctypes.sizeof(structs.kvm_sregs)
    raw = structs.kvm_sregs()
    raw.cs.base, raw.cs.limit, raw.cs.selector, raw.cs.type, raw.cs.l = 0xFFFF0000, 0xFFFF, 0xF000, 11, 1
    raw.tr.unusable, raw.ldt.avl = 1, 1
    raw.gdt.base, raw.idt.limit = 0x1234, 0x3FF
    raw.cr0, raw.cr3, raw.efer, raw.apic_base = 0x80050033, 0xD000, 0x500, 0xFEE00900
    raw.interrupt_bitmap[3] = 7
    s = vcpu.SpecialRegisters._from(raw)
    assert (s.cs.selector, s.cs.base, s.cs.limit, s.cs.type, s.cs.l) == (0xF000, 0xFFFF0000, 0xFFFF, 11, 1)
    assert s.tr.unusable == 1 and s.ldt.avl == 1 and s.gdt.base == 0x1234 and s.idt.limit == 0x3FF
    assert (s.cr0, s.cr3, s.efer, s.apic_base, s.interrupt_bitmap) == (0x80050033, 0xD000, 0x500, 0xFEE00900, (0, 0, 0, 7))
    assert bytes(s._to()) == bytes(raw)
    s.cs = s.cs._replace(selector=1 << 16)                 # does not fit a u16
    with pytest.raises(vcpu.RegisterError, match="does not fit"):
        s._to()

"""labhelper.kvm.cpuid without /dev/kvm: KVM_GET_SUPPORTED_CPUID asked with a growing buffer and
kept per device, the guest's table with the hypervisor bit, and struct kvm_cpuid2 as the kernel
reads it."""
from __future__ import annotations

import ctypes
import errno
from types import SimpleNamespace

import pytest

from labhelper import syscalls
from labhelper.errors import SyscallError
from labhelper.kvm import cpuid, ioctls, structs
from labhelper.kvm.cpuid import CPUID_HYPERVISOR, CpuidEntry, guest_cpuid

HOST = (CpuidEntry(0, 0, 0, 0xD, 1, 2, 3), CpuidEntry(1, 0, 0, 0x906EA, 0, 0x7FFAFBFF, 0),
        CpuidEntry(7, 1, 1, 0, 0, 0, 0x10), CpuidEntry(0x40000000, 0, 0, 0x40000001, 0x4B4D564B, 0x564B4D56, 0x4D))


def test_guest_cpuid_adds_the_hypervisor_bit_to_leaf_1_only():
    supported = [CpuidEntry(0, 0, 0, 0xD, 1, 2, 3), CpuidEntry(1, 0, 0, 0x906EA, 0, 0x7FFAFBFF, 0),
                 CpuidEntry(0x40000000, 0, 0, 0x40000001, 0x4B4D564B, 0x564B4D56, 0x4D)]
    offered = guest_cpuid(supported)
    assert offered[1].ecx == 0x7FFAFBFF | CPUID_HYPERVISOR and offered[1].eax == 0x906EA
    assert offered[0] == supported[0] and offered[2] == supported[2]
    assert supported[1].ecx == 0x7FFAFBFF              # the cached table itself is untouched


def test_the_hypervisor_bit_is_ecx_bit_31_and_set_only_once():
    assert CPUID_HYPERVISOR == 0x80000000
    twice = guest_cpuid(guest_cpuid(HOST))
    assert twice == guest_cpuid(HOST) and twice[1].ecx == 0xFFFAFBFF
    assert all(isinstance(e, CpuidEntry) for e in twice)


def test_entry_fields_and_repr():
    e = CpuidEntry(0x40000000, 2, 1, 0xA, 0xB, 0xC, 0xD)
    assert (e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx) == (0x40000000, 2, 1, 0xA, 0xB, 0xC, 0xD)
    assert repr(e) == "CpuidEntry(0x40000000.2: eax=0xa ebx=0xb ecx=0xc edx=0xd)"
    assert e == (0x40000000, 2, 1, 0xA, 0xB, 0xC, 0xD) and hash(e) == hash(tuple(e))


def test_kvm_cpuid2_is_the_kernels_layout():
    buf = cpuid.kvm_cpuid2(HOST)
    assert buf.nent == len(HOST) == len(buf.entries)
    assert ctypes.sizeof(buf) == ctypes.sizeof(structs.kvm_cpuid2) + len(HOST) * ctypes.sizeof(structs.kvm_cpuid_entry2)
    for slot, e in zip(buf.entries, HOST):
        assert (slot.function, slot.index, slot.flags, slot.eax, slot.ebx, slot.ecx, slot.edx) == tuple(e)
        assert list(slot.padding) == [0, 0, 0]
    # The header the kernel reads: nent, then padding, then the entries at offset 8.
    raw = bytes(buf)
    assert int.from_bytes(raw[:4], "little") == len(HOST) and raw[4:8] == bytes(4)
    assert int.from_bytes(raw[8 + 40 + 20:8 + 40 + 24], "little") == 0x7FFAFBFF   # entries[1].ecx


def test_kvm_cpuid2_is_built_once_per_table():
    # Every Machine sets the same table: the buffer is cached (the kernel only reads it).
    assert cpuid.kvm_cpuid2(list(HOST)) is cpuid.kvm_cpuid2(HOST)
    assert cpuid.kvm_cpuid2(HOST[:2]) is not cpuid.kvm_cpuid2(HOST)
    assert cpuid.kvm_cpuid2(()).nent == 0


def test_kvm_cpuid2_takes_unhashable_entries_too():
    entries = [SimpleNamespace(function=1, index=0, flags=0, eax=2, ebx=3, ecx=4, edx=5)]
    with pytest.raises(TypeError):
        hash(entries[0])
    buf = cpuid.kvm_cpuid2(entries)
    assert buf.nent == 1 and (buf.entries[0].function, buf.entries[0].edx) == (1, 5)


class FakeKvm:
    """KVM_GET_SUPPORTED_CPUID as the kernel answers it: E2BIG while nent is too small."""

    def __init__(self, table, err: int | None = None):
        self.table = table
        self.err = err
        self.offered: list[int] = []

    def ioctl(self, fd, request, arg=0, name=None):
        assert request == ioctls.KVM_GET_SUPPORTED_CPUID and name == "KVM_GET_SUPPORTED_CPUID"
        self.offered.append(arg.nent)
        if self.err is not None:
            raise syscalls.error("ioctl", {"fd": fd, "request": name}, self.err)
        if arg.nent < len(self.table):
            raise syscalls.error("ioctl", {"fd": fd, "request": name}, errno.E2BIG)
        arg.nent = len(self.table)
        for slot, e in zip(arg.entries, self.table):
            slot.function, slot.index, slot.flags = e.function, e.index, e.flags
            slot.eax, slot.ebx, slot.ecx, slot.edx = e.eax, e.ebx, e.ecx, e.edx
        return 0


def test_supported_cpuid_grows_the_buffer_on_e2big(monkeypatch):
    table = tuple(CpuidEntry(i, 0, 0, i, 0, 0, 0) for i in range(150))
    fake = FakeKvm(table)
    monkeypatch.setattr(syscalls, "ioctl", fake.ioctl)
    assert cpuid.ask_supported(3) == table
    assert fake.offered == [64, 128, 256]              # doubled on each E2BIG, by name


def test_supported_cpuid_gives_up_and_other_errors_pass_through(monkeypatch):
    fake = FakeKvm((), err=errno.E2BIG)
    monkeypatch.setattr(syscalls, "ioctl", fake.ioctl)
    with pytest.raises(SyscallError) as info:
        cpuid.ask_supported(3)
    assert info.value.errno == errno.E2BIG and fake.offered[-1] == 4096 and len(fake.offered) == 7
    fake = FakeKvm((), err=errno.ENOTTY)
    monkeypatch.setattr(syscalls, "ioctl", fake.ioctl)
    with pytest.raises(SyscallError, match="KVM_GET_SUPPORTED_CPUID") as info:
        cpuid.ask_supported(3)
    assert info.value.errno == errno.ENOTTY and fake.offered == [64]   # not retried


def test_supported_cpuid_is_asked_once_per_device(monkeypatch):
    fake = FakeKvm(HOST)
    monkeypatch.setattr(syscalls, "ioctl", fake.ioctl)
    monkeypatch.setattr(cpuid, "_SUPPORTED", {})
    first = cpuid.supported(3, "/fake/kvm")
    assert first == HOST and cpuid.supported(4, "/fake/kvm") is first
    assert len(fake.offered) == 1
    cpuid.supported(5, "/other/kvm")                   # another device is asked on its own
    assert len(fake.offered) == 2

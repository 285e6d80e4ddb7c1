"""Bad input to labhelper.kvm is refused with a clear error, before anything is opened or mapped.

No root and no /dev/kvm: LABHELPER_KVM_DEVICE points at paths that are not KVM, and the checks
that must come *before* the device is opened are shown to do so (a missing device would
otherwise be the error).
"""
from __future__ import annotations

import os

import pytest

from labhelper import kvm
from labhelper.errors import RequirementError
from labhelper.kvm import guests, system
from labhelper.kvm.machine import Machine, MmioUart
from labhelper.kvm.vcpu import Registers, RegisterError, Segment, SpecialRegisters
from labhelper.kvm.vm import MEMORY_CAP, MemoryError_, check_memory_request

NOWHERE = "/nonexistent/kvm"
HAVE_BINUTILS = all(guests.tools().values())
needs_as = pytest.mark.skipif(not HAVE_BINUTILS, reason="GNU binutils is not installed")


def fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("size", [0, -4096, 4095, 4096 + 1, "64k", 1.5, True, None])
def test_bad_memory_sizes(size):
    with pytest.raises(MemoryError_):
        check_memory_request(size)


def test_memory_over_the_cap_names_the_cap():
    with pytest.raises(MemoryError_, match="over the lab's cap of 256 MiB"):
        check_memory_request(MEMORY_CAP + 4096)
    with pytest.raises(MemoryError_, match="over the lab's cap"):   # the total counts, not one slot
        check_memory_request(4096, 0x10000000, taken=[(0, MEMORY_CAP)])
    check_memory_request(MEMORY_CAP)                                    # exactly the cap is fine


def test_overlapping_and_odd_addresses():
    with pytest.raises(MemoryError_, match="overlaps"):
        check_memory_request(0x2000, 0x1000, taken=[(0, 0x2000)])
    check_memory_request(0x2000, 0x2000, taken=[(0, 0x2000)])          # adjacent is fine
    with pytest.raises(MemoryError_, match="page size"):
        check_memory_request(0x1000, 0x800)
    with pytest.raises(MemoryError_):
        check_memory_request(0x1000, -0x1000)
    with pytest.raises(MemoryError_, match="physical address space"):
        check_memory_request(0x1000, 1 << 52)


def test_absent_device_is_a_requirement_and_leaves_nothing(monkeypatch):
    monkeypatch.setenv("LABHELPER_KVM_DEVICE", NOWHERE)
    before = fds()
    with pytest.raises(kvm.KvmUnavailable) as info:
        kvm.Kvm()
    assert isinstance(info.value, RequirementError) and info.value.missing == ("kvm",)
    assert NOWHERE in str(info.value) and "hint:" in str(info.value)
    ok, why = kvm.available()
    assert ok is False and "does not exist" in why
    assert fds() == before


def test_a_file_that_is_not_kvm_is_refused_and_closed(tmp_path):
    fake = tmp_path / "kvm"
    fake.write_bytes(b"")
    before = fds()
    with pytest.raises(kvm.KvmUnavailable, match="not a KVM device"):
        kvm.Kvm(str(fake))
    with pytest.raises(kvm.KvmUnavailable, match="cannot be opened"):
        kvm.Kvm(str(tmp_path))                               # a directory: EISDIR
    assert fds() == before


@needs_as
def test_machine_checks_memory_before_opening_the_device():
    # With the device absent, reaching the open would raise KvmUnavailable instead.
    prog = guests.assemble(guests.SERIAL_HELLO)
    with pytest.raises(MemoryError_, match="over the lab's cap"):
        Machine(prog, memory=MEMORY_CAP * 2, device=NOWHERE)
    with pytest.raises(MemoryError_, match="multiples of the page size"):
        Machine(prog, memory=1000, device=NOWHERE)


@needs_as
def test_code_larger_than_memory_is_refused_before_opening():
    big = guests.assemble("    hlt\n    .fill 8192, 1, 0x90\n", name="big")
    with pytest.raises(MemoryError_, match=r"does not fit in guest memory") as info:
        Machine(big, memory=8192, device=NOWHERE)
    assert "8193 bytes at 0x1000" in str(info.value) and "hint:" in str(info.value)
    long_prog = guests.assemble("    hlt\n    .fill 4000, 1, 0x90\n", mode="long")
    with pytest.raises(MemoryError_, match="below the page tables"):
        Machine(long_prog, memory=4 * 4096, device=NOWHERE)


@needs_as
def test_mmio_device_inside_memory_is_refused():
    with pytest.raises(MemoryError_, match="inside guest memory"):
        Machine(guests.assemble("    hlt\n"), memory=1 << 20, devices=[MmioUart(0x8000)], device=NOWHERE)


@needs_as
def test_absent_device_after_good_input(monkeypatch):
    monkeypatch.setenv("LABHELPER_KVM_DEVICE", NOWHERE)
    before = fds()
    with pytest.raises(kvm.KvmUnavailable):
        Machine(guests.SERIAL_HELLO)                 # assembly text is accepted too
    assert fds() == before


def test_machine_rejects_a_non_program():
    with pytest.raises(TypeError, match="Program"):
        Machine(b"\xf4", device=NOWHERE)


@pytest.mark.parametrize("changes,match", [
    ({"rax": -1}, "64-bit unsigned"), ({"rip": 1 << 64}, "64-bit unsigned"),
    ({"rbx": "0x10"}, "64-bit unsigned"), ({"rcx": True}, "64-bit unsigned"),
    ({"rflags": 0}, "bit 1"),
])
def test_invalid_register_values(changes, match):
    with pytest.raises(RegisterError, match=match):
        Registers(**changes).validate()


def test_registers_repr_and_round_trip():
    r = Registers(rip=0x1000, rax=0x41)
    assert repr(r) == "Registers(rip=0x1000, rflags=0x2, rax=0x41)"
    assert Registers._from(r._to()) == r
    r.validate()


def _sregs(**changes) -> SpecialRegisters:
    seg = Segment()
    base = dict(cs=seg, ds=seg, es=seg, fs=seg, gs=seg, ss=seg, tr=seg, ldt=seg,
                gdt=(0, 0), idt=(0, 0), cr0=0x60000010, cr2=0, cr3=0, cr4=0, cr8=0, efer=0, apic_base=0)
    base.update(changes)
    return SpecialRegisters(**base)


def test_invalid_special_registers():
    with pytest.raises(RegisterError, match="cr3"):
        _sregs(cr3=-1)._to()
    with pytest.raises(RegisterError, match="Segment"):
        _sregs(cs=(0, 0))._to()
    s = _sregs(efer=0x500, cr0=0x80000011)
    assert s.mode == "long" and s.paging
    assert _sregs().mode == "real" and _sregs(cr0=1).mode == "protected"
    raw = s._to()
    assert raw.efer == 0x500 and SpecialRegisters._from(raw).cr0 == 0x80000011


def test_fork_hook_closes_our_fds_in_the_child():
    class Fake(system._Owner):
        pass
    owner = Fake()
    owner._adopt(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    fd = owner.fd
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.fstat(fd)
            os.write(w, b"open")
        except OSError:
            os.write(w, b"closed" if owner.closed else b"closed-but-not-marked")
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    answer = os.read(r, 100)
    os.close(r)
    assert answer == b"closed"
    assert not owner.closed and os.fstat(fd)          # the parent keeps its own
    owner.close()
    owner.close()                                      # idempotent
    with pytest.raises(Exception, match="closed"):
        owner.fd


def test_other_architectures_are_told_why(monkeypatch):
    import platform
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    with pytest.raises(RequirementError, match="x86 guests, and this machine is aarch64"):
        Machine(guests.Program("p", "real", 0x1000, b"\xf4"), device=NOWHERE)

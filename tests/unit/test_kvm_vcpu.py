"""labhelper.kvm.vcpu without /dev/kvm: register values refused before the kernel sees them, the
answers to I/O and MMIO reads checked, and a failed kvm_run mapping that closes its fd."""
from __future__ import annotations

import os

import pytest

from labhelper.errors import Refused
from labhelper.kvm.vcpu import Registers, RegisterError, Segment, SpecialRegisters


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


# --- answers to the guest's reads, and failures: typed, with nothing left behind ----------------

def _fake_vcpu_with_page(size: int, count: int, offset: int = 4096):
    from labhelper.kvm import structs
    from labhelper.kvm.vcpu import Vcpu
    run = structs.kvm_run()
    run.exit_reason = 2
    run.io.direction, run.io.size, run.io.port, run.io.count, run.io.data_offset = 0, size, 0x3FD, count, offset
    page = bytearray(3 * 4096)
    page[:len(bytes(run))] = bytes(run)
    v = Vcpu.__new__(Vcpu)
    v._run = page
    return v, page


def test_complete_io_in_wants_size_times_count_bytes():
    v, page = _fake_vcpu_with_page(size=2, count=3)
    with pytest.raises(ValueError, match=r"reads 6 bytes \(3 x 2\); got 2") as info:
        v.complete_io_in(b"ab")
    assert isinstance(info.value, Refused)            # a refusal of bad input, still a ValueError
    assert page[4096:4102] == bytes(6)                # nothing written
    v.complete_io_in(b"abcdef")
    assert page[4096:4102] == b"abcdef"


def test_complete_mmio_read_carries_at_most_8_bytes():
    from labhelper.kvm import structs
    v, page = _fake_vcpu_with_page(size=1, count=1)
    at = structs.kvm_run.exit.offset + structs.kvm_run_mmio.data.offset
    before = bytes(page)
    with pytest.raises(Refused, match="at most 8 bytes"):
        v.complete_mmio_read(b"123456789")
    assert bytes(page) == before                      # nothing written
    with pytest.raises(ValueError):                   # `except ValueError` still catches it
        v.complete_mmio_read(bytes(9))
    v.complete_mmio_read(b"LHUA")
    assert page[at:at + 4] == b"LHUA"


def test_kvm_run_mmap_failure_is_a_syscall_error_and_closes_the_fd(monkeypatch):
    import errno
    import mmap as mmap_module
    from labhelper.errors import SyscallError
    from labhelper.kvm.vcpu import Vcpu

    def refuse(*args, **kwargs):
        raise OSError(errno.EINVAL, "Invalid argument")
    fd = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    monkeypatch.setattr(mmap_module, "mmap", refuse)
    with pytest.raises(SyscallError) as info:
        Vcpu(None, fd, 0, 3 * 4096)
    assert info.value.errno == errno.EINVAL and "kvm_run" in str(info.value)
    with pytest.raises(OSError):
        os.fstat(fd)                                  # the vCPU fd it was given is closed

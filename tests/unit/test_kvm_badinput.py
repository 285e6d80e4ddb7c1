"""Bad input to labhelper.kvm is refused with a clear error, before anything is opened or mapped.

No root and no /dev/kvm: LABHELPER_KVM_DEVICE points at paths that are not KVM, and the checks
that must come *before* the device is opened are shown to do so (a missing device would
otherwise be the error).
"""
from __future__ import annotations

import os

import pytest
from forking import child_answer

from labhelper import kvm
from labhelper.errors import RequirementError
from labhelper.kvm import guests
from labhelper.kvm.devices import MmioUart
from labhelper.kvm.fds import Owner
from labhelper.kvm.machine import Machine
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
    class Fake(Owner):
        pass
    owner = Fake()
    owner.adopt(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    fd = owner.fd

    def child() -> bytes:
        try:
            os.fstat(fd)
            return b"open"
        except OSError:
            return b"closed" if owner.closed else b"closed-but-not-marked"
    answer = child_answer(child)
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


# --- failures the kernel or the VMM reports: typed, with nothing left behind --------------------

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
    with pytest.raises(ValueError, match=r"reads 6 bytes \(3 x 2\); got 2"):
        v.complete_io_in(b"ab")
    assert page[4096:4102] == bytes(6)                # nothing written
    v.complete_io_in(b"abcdef")
    assert page[4096:4102] == b"abcdef"


def test_guest_memory_mmap_failure_is_a_syscall_error(monkeypatch):
    import errno
    import mmap as mmap_module
    from labhelper.errors import SyscallError
    from labhelper.kvm.vm import GuestMemory

    def refuse(*args, **kwargs):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")
    monkeypatch.setattr(mmap_module, "mmap", refuse)
    with pytest.raises(SyscallError) as info:
        GuestMemory(0, 0, 0x10000)
    assert info.value.errno == errno.ENOMEM and info.value.call == "mmap"
    assert "mmap(addr=NULL, length=65536, prot=PROT_READ|PROT_WRITE, flags=MAP_SHARED|MAP_ANONYMOUS" in str(info.value)


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


def _adopted(cls, **attrs):
    obj = cls.__new__(cls)
    obj.adopt(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    for k, v in attrs.items():
        setattr(obj, k, v)
    return obj


def test_close_all_closes_vcpus_then_vms_then_systems():
    from labhelper.kvm.system import Kvm
    from labhelper.kvm.vcpu import Vcpu
    from labhelper.kvm.vm import Vm
    order = []
    system = _adopted(Kvm)
    vm = _adopted(Vm, memory=[], vcpus=[])
    vcpu = _adopted(Vcpu)
    vm.vcpus.append(vcpu)
    for obj in (system, vm, vcpu):
        close = obj.close
        obj.close = (lambda close=close, name=type(obj).__name__: (order.append(name), close()))
    fds = [o._fd for o in (system, vm, vcpu)]
    closed = kvm.close_all()
    assert list(dict.fromkeys(order)) == ["Vcpu", "Vm", "Kvm"]     # (a VM also closes its vCPUs: idempotent)
    assert (closed.vcpus, closed.vms, closed.systems) >= (1, 1, 1)
    assert repr(closed).startswith("Closed(") and "vCPU(s)" in repr(closed)
    assert system.closed and vm.closed and vcpu.closed
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert kvm.close_all() == kvm.Closed(0, 0, 0)      # nothing left: idempotent


def test_stepper_after_close_refuses_instead_of_opening_a_new_vm():
    from types import SimpleNamespace
    from labhelper.errors import LabError
    from labhelper.teach.stepper import Stepper
    s = Stepper(guests.Program("p", "real", 0x1000, b"\xf4"))
    s.machine = SimpleNamespace(closed=True, close=lambda: None)
    with pytest.raises(LabError, match=r"closed: call reset\(\)"):
        s.step()
    assert s.machine.closed and s.history == []


def test_guest_cpuid_adds_the_hypervisor_bit_to_leaf_1_only():
    from labhelper.kvm.cpuid import CPUID_HYPERVISOR, CpuidEntry, guest_cpuid
    supported = [CpuidEntry(0, 0, 0, 0xD, 1, 2, 3), CpuidEntry(1, 0, 0, 0x906EA, 0, 0x7FFAFBFF, 0),
                 CpuidEntry(0x40000000, 0, 0, 0x40000001, 0x4B4D564B, 0x564B4D56, 0x4D)]
    offered = guest_cpuid(supported)
    assert offered[1].ecx == 0x7FFAFBFF | CPUID_HYPERVISOR and offered[1].eax == 0x906EA
    assert offered[0] == supported[0] and offered[2] == supported[2]
    assert supported[1].ecx == 0x7FFAFBFF              # the cached table itself is untouched

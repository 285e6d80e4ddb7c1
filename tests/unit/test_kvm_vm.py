"""labhelper.kvm.vm without /dev/kvm: bad guest memory requests are refused before anything is
mapped, and a failed mapping is a SyscallError that names mmap and its arguments."""
from __future__ import annotations

import pytest

from labhelper.kvm.vm import MEMORY_CAP, MemoryError_, check_memory_request


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

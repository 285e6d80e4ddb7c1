"""The VM level: guest memory slots and vCPUs.

Guest memory is ordinary memory of *this* process. We mmap() an anonymous shared region and tell
KVM, with KVM_SET_USER_MEMORY_REGION, "guest physical addresses [G, G+size) are the bytes at our
virtual address A". The guest then reads and writes those bytes at full speed, no exit; and we
can read and write them too (that is how a program is loaded, and how a paravirtual device
shares a buffer with the guest).

Who keeps the mapping alive: the kernel keeps only the *address* A, not a reference to our
mapping. So a :class:`GuestMemory` owns its mmap, the :class:`Vm` keeps every GuestMemory in
``vm.memory`` for as long as the VM exists, and :meth:`Vm.close` unmaps guest memory only
*after* the VM fd is closed (and with it the slots). An address with no slot behind it is not
an error for the guest: its loads and stores become MMIO exits for the VMM to emulate.

A :class:`Vm` owns its VM fd (an :class:`~labhelper.kvm.fds.Owner`), its guest memory, and the
vCPUs it created: :meth:`Vm.create_vcpu` hands each vCPU fd to a
:class:`~labhelper.kvm.vcpu.Vcpu` at once. This module imports :mod:`.vcpu`, never the other
way round.
"""
from __future__ import annotations

import mmap

from .. import syscalls
from ..errors import LabError, Shown
from . import ioctls, structs
from .fds import VM, Owner
from .vcpu import Vcpu

__all__ = ["MEMORY_CAP", "PAGE_SIZE", "GuestMemory", "Vm", "MemoryError_", "check_memory_request"]

PAGE_SIZE = mmap.PAGESIZE
MEMORY_CAP = 256 * 1024 * 1024   # the most guest memory one lab VM may have (R26): 256 MiB
TSS_ADDRESS = 0xFFFBD000         # 3 pages just under 4 GiB that Intel's real-mode emulation needs (as QEMU)


class MemoryError_(LabError):
    """Bad guest memory request: refused before anything is mapped."""


def check_memory_request(size, guest_address: int = 0, taken: list[tuple[int, int]] = (),
                         cap: int = MEMORY_CAP) -> None:
    """Refuse a bad guest memory request with a clear message, before anything is mapped.

    ``taken`` lists the [start, end) ranges of the VM's existing slots.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise MemoryError_(f"guest memory size must be a positive integer, not {size!r}")
    if not isinstance(guest_address, int) or guest_address < 0:
        raise MemoryError_(f"guest address must be a non-negative integer, not {guest_address!r}")
    if size % PAGE_SIZE or guest_address % PAGE_SIZE:
        raise MemoryError_(f"guest memory size ({size:#x}) and address ({guest_address:#x}) must be "
                           f"multiples of the page size ({PAGE_SIZE:#x}): KVM maps whole pages")
    total = sum(end - start for start, end in taken) + size
    if total > cap:
        raise MemoryError_(
            f"{total // 1024} KiB of guest memory is over the lab's cap of {cap // 2**20} MiB",
            hint="the guests of this chapter need kilobytes; the cap protects the notebook kernel")
    if guest_address + size > 1 << 52:
        raise MemoryError_(f"guest address {guest_address:#x} is outside the guest's physical address space")
    for start, end in taken:
        if guest_address < end and start < guest_address + size:
            raise MemoryError_(f"[{guest_address:#x}, {guest_address + size:#x}) overlaps the slot "
                               f"[{start:#x}, {end:#x})")


class GuestMemory:
    """One memory slot: guest physical [guest_address, guest_address + size) backed by an
    anonymous shared mapping that this object owns."""

    def __init__(self, slot: int, guest_address: int, size: int, readonly: bool = False):
        self.slot = slot
        self.guest_address = guest_address
        self.size = size
        self.readonly = readonly
        # MAP_SHARED | MAP_ANONYMOUS, zero-filled; Python gives us no fd for it, so none can leak.
        try:
            self._map = mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS,
                                  prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            # ENOMEM: this process may not map that much (ulimit -v, a cgroup memory limit).
            raise syscalls.error("mmap", {"addr": Shown("NULL"), "length": size,
                                          "prot": Shown("PROT_READ|PROT_WRITE"),
                                          "flags": Shown("MAP_SHARED|MAP_ANONYMOUS"), "fd": -1, "offset": 0},
                                 exc.errno or 0, hint=f"guest memory for slot {slot} could not be mapped") from None
        # The address for the kernel. address_of() borrows the buffer only for the duration of
        # the call, so the mmap can still be closed later (a live ctypes view would pin it).
        self.host_address = syscalls.address_of(self._map)

    def __repr__(self) -> str:
        end = self.guest_address + self.size
        state = " closed" if self._map.closed else ""
        return (f"GuestMemory(slot={self.slot}, guest=[{self.guest_address:#x}, {end:#x}), "
                f"{self.size // 1024} KiB{', read-only' if self.readonly else ''}{state})")

    @property
    def end(self) -> int:
        return self.guest_address + self.size

    def contains(self, address: int, length: int = 1) -> bool:
        return self.guest_address <= address and address + length <= self.end

    def _offset(self, address: int, length: int, verb: str) -> int:
        if self._map.closed:
            raise LabError("this guest memory is unmapped (its VM was closed)")
        if length < 0 or not self.contains(address, length):
            raise MemoryError_(
                f"cannot {verb} {length} bytes at guest address {address:#x}: this slot covers "
                f"[{self.guest_address:#x}, {self.end:#x}) ({self.size} bytes)",
                hint="give the VM more memory, or use a smaller program/buffer or a lower address")
        return address - self.guest_address

    def write(self, address: int, data: bytes) -> None:
        """Write ``data`` at guest physical ``address`` (the guest sees it at once)."""
        data = bytes(data)
        off = self._offset(address, len(data), "write")
        self._map[off:off + len(data)] = data

    def read(self, address: int, length: int) -> bytes:
        off = self._offset(address, length, "read")
        return self._map[off:off + length]

    def close(self) -> None:
        """Unmap. Only the Vm calls this, after the kernel has forgotten the slot."""
        if not self._map.closed:
            self._map.close()


class Vm(Owner):
    """A VM fd (from :meth:`labhelper.kvm.system.Kvm.create_vm`)."""

    what = "VM"
    close_order = VM

    def __init__(self, fd: int, kvm):
        self.adopt(fd)
        self.kvm = kvm                      # the Kvm it came from: for vcpu_mmap_size and capabilities
        self.memory: list[GuestMemory] = []
        self.vcpus: list[Vcpu] = []
        self.tss_address = None
        # Intel VT-x without "unrestricted guest" runs real mode in a vm86 trick that needs a TSS
        # in guest physical space; KVM wants to be told where (AMD and PVM ignore it).
        try:
            if kvm.check_extension("KVM_CAP_SET_TSS_ADDR"):
                syscalls.ioctl(fd, ioctls.KVM_SET_TSS_ADDR, TSS_ADDRESS, name="KVM_SET_TSS_ADDR")
                self.tss_address = TSS_ADDRESS
        except BaseException:
            self.release()
            raise

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        total = sum(m.size for m in self.memory)
        return f"Vm({state}, {len(self.memory)} slot(s), {total // 1024} KiB, {len(self.vcpus)} vCPU(s))"

    # --- memory ----------------------------------------------------------------------------------

    def add_memory(self, size: int, guest_address: int = 0, readonly: bool = False) -> GuestMemory:
        """Back guest physical [guest_address, +size) with fresh zeroed memory (one slot).

        Checked before anything is mapped: the size is a positive multiple of the page size,
        the VM's total stays within :data:`MEMORY_CAP`, and the range overlaps no other slot.
        """
        fd = self.fd
        check_memory_request(size, guest_address, [(m.guest_address, m.end) for m in self.memory])
        slot = len(self.memory)
        mem = GuestMemory(slot, guest_address, size, readonly)
        region = structs.kvm_userspace_memory_region(
            slot=slot, flags=structs.KVM_MEM_READONLY if readonly else 0,
            guest_phys_addr=guest_address, memory_size=size, userspace_addr=mem.host_address)
        try:
            syscalls.ioctl(fd, ioctls.KVM_SET_USER_MEMORY_REGION, region, name="KVM_SET_USER_MEMORY_REGION")
        except BaseException:
            mem.close()                     # the kernel did not take it: nothing else refers to it
            raise
        self.memory.append(mem)             # from here on the VM keeps the mapping alive
        return mem

    def memory_at(self, address: int, length: int = 1) -> GuestMemory:
        for m in self.memory:
            if m.contains(address, length):
                return m
        raise MemoryError_(f"no memory slot covers guest address {address:#x} (+{length})",
                           hint=f"slots: {', '.join(repr(m) for m in self.memory) or 'none'}")

    def write(self, address: int, data: bytes) -> None:
        self.memory_at(address, max(len(data), 1)).write(address, data)

    def read(self, address: int, length: int) -> bytes:
        return self.memory_at(address, max(length, 1)).read(address, length)

    # --- vCPUs -----------------------------------------------------------------------------------

    def create_vcpu(self, index: int = 0) -> Vcpu:
        """KVM_CREATE_VCPU: a vCPU in its reset state (real mode, CS:IP = f000:fff0)."""
        fd = syscalls.ioctl(self.fd, ioctls.KVM_CREATE_VCPU, index, name="KVM_CREATE_VCPU")
        vcpu = Vcpu(self, fd, index, self.kvm.vcpu_mmap_size)   # owns fd from here, even if it fails
        self.vcpus.append(vcpu)
        return vcpu

    # --- teardown ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the vCPUs, then the VM fd (the kernel drops the slots), then unmap guest memory.
        Idempotent."""
        for vcpu in self.vcpus:
            vcpu.close()
        self.release()
        for m in self.memory:
            m.close()

    def drop_in_child(self) -> None:
        for vcpu in self.vcpus:
            vcpu.drop_in_child()
        self.release()
        for m in self.memory:
            m.close()


"""The system level: the /dev/kvm file descriptor, and who owns which KVM fd.

``open("/dev/kvm")`` gives the *system* fd. It answers questions (API version, capabilities, the
size of the per-vCPU kvm_run mapping, the CPUID the host can offer) and creates VMs. Each VM fd
then creates vCPU fds. These fds are the whole VM: when the last reference to them goes, the
kernel frees the VM, so nothing outlives the process that made it (R25: no leak "after a kernel
restart" is automatic; what we must get right is fds leaking into *children*).

fd hygiene (R25):

* every fd is close-on-exec: /dev/kvm is opened with O_CLOEXEC, and KVM_CREATE_VM/VCPU return
  fds the kernel already marks close-on-exec (anon_inode_getfd(..., O_RDWR | O_CLOEXEC)); the
  tests check FD_CLOEXEC on each;
* ``os.fork()`` copies fds whatever their flags: a hook registered with ``os.register_at_fork``
  closes, in the child, every KVM fd and mapping this process holds. A VM belongs to the
  process that created it (KVM even refuses its ioctls from another process: EIO).
"""
from __future__ import annotations

import ctypes
import functools
import os
import weakref
from typing import NamedTuple

from .. import syscalls
from ..errors import LabError, RequirementError, SyscallError
from . import ioctls, structs
from .ioctls import CAPS

__all__ = ["DEVICE_ENV", "device_path", "KvmUnavailable", "Kvm", "CpuidEntry", "open_fds", "close_all", "Closed"]

DEVICE_ENV = "LABHELPER_KVM_DEVICE"


def device_path() -> str:
    """/dev/kvm, or what LABHELPER_KVM_DEVICE says (tests set /nonexistent to pretend it is absent)."""
    return os.environ.get(DEVICE_ENV) or "/dev/kvm"


class KvmUnavailable(RequirementError):
    """/dev/kvm is absent or cannot be opened: chapter 02's live cells explain and skip."""


# --- ownership of fds and mappings -----------------------------------------------------------

_LIVE: "weakref.WeakSet[_Owner]" = weakref.WeakSet()


class _Owner:
    """Something that holds one KVM fd (and maybe mappings). ``close()`` is idempotent; a
    finalizer closes the fd if the object is garbage-collected without close()."""

    _what = "KVM object"
    _fd = -1
    _finalizer = None

    def _adopt(self, fd: int) -> None:
        self._fd = fd
        self._finalizer = weakref.finalize(self, os.close, fd)
        _LIVE.add(self)

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise LabError(f"this {self._what} is closed",
                           hint="create a new one (each `with` block closes its VM at the end)")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _release(self) -> None:
        """Close our own fd (subclasses first close what depends on it)."""
        if self._finalizer is not None:
            self._finalizer()          # runs os.close(fd) once, never twice
        self._fd = -1
        _LIVE.discard(self)

    def close(self) -> None:
        self._release()

    def _drop_in_child(self) -> None:
        """After fork, in the child: forget this object without touching the parent's VM."""
        self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Closed(NamedTuple):
    """What :func:`close_all` closed."""
    vcpus: int
    vms: int
    systems: int

    def __repr__(self) -> str:
        return f"Closed({self.vcpus} vCPU(s), {self.vms} VM(s), {self.systems} /dev/kvm handle(s))"


def close_all() -> Closed:
    """Close every KVM object this process still holds: vCPUs, then VMs (and their guest
    memory), then /dev/kvm handles -- the order in which each depends on the next.

    For a teardown cell: a Machine, a Stepper or a bare Vm left open by an earlier cell (or by
    a variable still pointing at it) is closed here, so that no fd is left behind.
    """
    from .vcpu import Vcpu
    from .vm import Vm
    live = list(_LIVE)
    counts = []
    for kind in (Vcpu, Vm, Kvm):
        objs = [o for o in live if isinstance(o, kind) and not o.closed]
        for o in objs:
            o.close()
        counts.append(len(objs))
    return Closed(*counts)


def _after_fork_in_child() -> None:
    # Runs in the child right after os.fork(). The child gets copies of our fds and mappings;
    # close them so that no KVM fd leaks into children (and from them into containers).
    for owner in list(_LIVE):
        try:
            owner._drop_in_child()
        except Exception:  # never let cleanup of a copy break the child
            pass


os.register_at_fork(after_in_child=_after_fork_in_child)


def open_fds(pid: int | str = "self") -> list[tuple[int, str]]:
    """(fd, target) for every fd of ``pid`` that is /dev/kvm or a KVM anonymous inode."""
    found = []
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return []
    for name in names:
        try:
            target = os.readlink(f"{base}/{name}")
        except OSError:
            continue
        if target == "/dev/kvm" or target.startswith("anon_inode:kvm"):
            found.append((int(name), target))
    return sorted(found)


# --- the system fd ------------------------------------------------------------------------------

class CpuidEntry(tuple):
    """One CPUID leaf as KVM offers it: (function, index, flags, eax, ebx, ecx, edx)."""
    __slots__ = ()

    def __new__(cls, function, index, flags, eax, ebx, ecx, edx):
        return super().__new__(cls, (function, index, flags, eax, ebx, ecx, edx))

    function = property(lambda self: self[0])
    index = property(lambda self: self[1])
    flags = property(lambda self: self[2])
    eax = property(lambda self: self[3])
    ebx = property(lambda self: self[4])
    ecx = property(lambda self: self[5])
    edx = property(lambda self: self[6])

    def _replace_ecx(self, ecx: int) -> "CpuidEntry":
        return CpuidEntry(self.function, self.index, self.flags, self.eax, self.ebx, ecx, self.edx)

    def __repr__(self) -> str:
        return (f"CpuidEntry({self.function:#x}.{self.index}: eax={self.eax:#x} ebx={self.ebx:#x} "
                f"ecx={self.ecx:#x} edx={self.edx:#x})")


_CPUID_CACHE: dict[str, tuple[CpuidEntry, ...]] = {}   # device path -> KVM_GET_SUPPORTED_CPUID


class Kvm(_Owner):
    """The system fd: ``with Kvm() as kvm: vm = kvm.create_vm()``."""

    _what = "/dev/kvm handle"

    def __init__(self, path: str | None = None):
        self.path = path or device_path()
        try:
            # O_CLOEXEC: an exec()ed program (a container, strace, a subprocess) never inherits it.
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailable(
                f"{self.path} does not exist: this machine offers no KVM",
                hint="inside the lab VM, enable nested virtualization in the VM's provider (README, "
                     "troubleshooting); on bare metal, `modprobe kvm_intel` or `modprobe kvm_amd`",
                missing=("kvm",)) from None
        except PermissionError:
            raise KvmUnavailable(f"{self.path} exists but cannot be opened read-write (permission denied)",
                                 hint="run as root, or join the group that owns /dev/kvm (often `kvm`)",
                                 missing=("kvm",)) from None
        except OSError as exc:
            raise KvmUnavailable(f"{self.path} cannot be opened: {exc.strerror}", missing=("kvm",)) from None
        self._adopt(fd)
        self.api_version = None
        try:
            self.api_version = syscalls.ioctl(fd, ioctls.KVM_GET_API_VERSION, 0, name="KVM_GET_API_VERSION")
            if self.api_version != ioctls.KVM_API_VERSION:
                raise LabError(f"KVM API version {self.api_version}, this VMM speaks {ioctls.KVM_API_VERSION}")
            self.vcpu_mmap_size = syscalls.ioctl(fd, ioctls.KVM_GET_VCPU_MMAP_SIZE, 0, name="KVM_GET_VCPU_MMAP_SIZE")
        except SyscallError as exc:
            self.close()
            raise KvmUnavailable(f"{self.path} is not a KVM device: {exc}", missing=("kvm",)) from None
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"Kvm({self.path}, api={self.api_version}, {state})"

    def check_extension(self, cap: str | int) -> int:
        """KVM_CHECK_EXTENSION: 0 if absent; otherwise 1 or a value (e.g. the number of slots)."""
        number = CAPS[cap] if isinstance(cap, str) else cap
        return syscalls.ioctl(self.fd, ioctls.KVM_CHECK_EXTENSION, number, name="KVM_CHECK_EXTENSION")

    def capabilities(self) -> dict[str, int]:
        """Every capability in :data:`labhelper.kvm.ioctls.CAPS`, with the value KVM answers."""
        return {name: self.check_extension(number) for name, number in CAPS.items()}

    def supported_cpuid(self) -> list[CpuidEntry]:
        """KVM_GET_SUPPORTED_CPUID: the CPUID leaves this host can offer a guest.

        The array has no fixed size: we offer room for n entries; the kernel answers E2BIG if
        that is too few, and we try again with more. The answer depends only on the host's CPU
        and KVM module, so it is asked once per process (per device path) and kept: every
        Machine needs it, and asking costs about as much as creating the VM.
        """
        cached = _CPUID_CACHE.get(self.path)
        if cached is None:
            cached = _CPUID_CACHE[self.path] = self._ask_supported_cpuid()
        return list(cached)

    def _ask_supported_cpuid(self) -> tuple[CpuidEntry, ...]:
        n = 64
        while True:
            buf = structs.cpuid2_with(n)()
            buf.nent = n
            try:
                syscalls.ioctl(self.fd, ioctls.KVM_GET_SUPPORTED_CPUID, buf, name="KVM_GET_SUPPORTED_CPUID")
            except SyscallError as exc:
                if exc.errno == 7 and n < 4096:  # E2BIG
                    n *= 2
                    continue
                raise
            return tuple(CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
                         for e in buf.entries[:buf.nent])

    def create_vm(self):
        """KVM_CREATE_VM: a new, empty VM (no memory, no vCPU)."""
        from .vm import Vm
        fd = syscalls.ioctl(self.fd, ioctls.KVM_CREATE_VM, 0, name="KVM_CREATE_VM")
        return Vm(fd, self)


def _cpuid_bytes(entries) -> ctypes.Structure:
    """struct kvm_cpuid2 with ``entries``, for KVM_SET_CPUID2."""
    entries = tuple(entries)
    try:
        return _cpuid_struct(entries)
    except TypeError:                     # an unhashable entry: build it without the cache
        return _cpuid_struct.__wrapped__(entries)


@functools.lru_cache(maxsize=8)
def _cpuid_struct(entries: tuple) -> ctypes.Structure:
    # Cached: every Machine sets the same table (the host's), and filling ~60 entries field by
    # field costs more than the ioctl. The kernel only reads it (KVM_SET_CPUID2 is _IOW), so one
    # buffer can be passed again and again.
    buf = structs.cpuid2_with(len(entries))()
    buf.nent = len(entries)
    for slot, e in zip(buf.entries, entries):
        slot.function, slot.index, slot.flags = e.function, e.index, e.flags
        slot.eax, slot.ebx, slot.ecx, slot.edx = e.eax, e.ebx, e.ecx, e.edx
    return buf

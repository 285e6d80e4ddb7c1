"""The system level: the /dev/kvm file descriptor.

``open("/dev/kvm")`` gives the *system* fd. It answers questions (API version, capabilities, the
size of the per-vCPU kvm_run mapping, the CPUID the host can offer) and creates VMs: a
:class:`Kvm` owns that fd (see :mod:`.fds` for who owns what, and for the fd hygiene rules),
and :meth:`Kvm.create_vm` hands each new VM fd to a :class:`~labhelper.kvm.vm.Vm` at once.

Levels only look down: this module imports :mod:`.vm`, which imports :mod:`.vcpu`; neither
imports this one.
"""
from __future__ import annotations

import os

from .. import syscalls
from ..errors import LabError, RequirementError, SyscallError
from . import cpuid, ioctls
from .cpuid import CpuidEntry
from .fds import SYSTEM, Owner
from .ioctls import CAPS
from .vm import Vm

__all__ = ["DEVICE_ENV", "device_path", "KvmUnavailable", "Kvm"]

DEVICE_ENV = "LABHELPER_KVM_DEVICE"


def device_path() -> str:
    """/dev/kvm, or what LABHELPER_KVM_DEVICE says (tests set /nonexistent to pretend it is absent)."""
    return os.environ.get(DEVICE_ENV) or "/dev/kvm"


class KvmUnavailable(RequirementError):
    """/dev/kvm is absent or cannot be opened: chapter 02's live cells explain and skip."""


# --- the system fd ------------------------------------------------------------------------------

class Kvm(Owner):
    """The system fd: ``with Kvm() as kvm: vm = kvm.create_vm()``."""

    what = "/dev/kvm handle"
    close_order = SYSTEM

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
        self.adopt(fd)
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

        Asked once per process and device path, then kept (see :func:`.cpuid.supported`).
        """
        return list(cpuid.supported(self.fd, self.path))

    def create_vm(self) -> Vm:
        """KVM_CREATE_VM: a new, empty VM (no memory, no vCPU)."""
        fd = syscalls.ioctl(self.fd, ioctls.KVM_CREATE_VM, 0, name="KVM_CREATE_VM")
        return Vm(fd, self)

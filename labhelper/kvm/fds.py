"""Who owns which KVM file descriptor and mapping, and how every one of them gets closed.

``open("/dev/kvm")`` gives the *system* fd; ``KVM_CREATE_VM`` on it gives a VM fd, and
``KVM_CREATE_VCPU`` on that a vCPU fd (with its kvm_run mapping). These fds are the whole VM:
when the last reference to them goes, the kernel frees the VM, so nothing outlives the process
that made it (R25: no leak "after a kernel restart" is automatic; what we must get right is fds
leaking into *children*).

Each of :class:`~labhelper.kvm.system.Kvm`, :class:`~labhelper.kvm.vm.Vm` and
:class:`~labhelper.kvm.vcpu.Vcpu` is an :class:`Owner`: it holds exactly one fd, adopted the
moment the kernel returns it, and closes it once (``close()`` is idempotent; a finalizer closes
it if the object is garbage-collected without ``close()``). This module keeps a weak set of every
live owner, for :func:`close_all` and for the fork hook below. It knows no owner class by name:
each class says where it stands in the closing order (:attr:`Owner.close_order`).

fd hygiene (R25):

* every fd is close-on-exec: /dev/kvm is opened with O_CLOEXEC, and KVM_CREATE_VM/VCPU return
  fds the kernel already marks close-on-exec (anon_inode_getfd(..., O_RDWR | O_CLOEXEC)); the
  tests check FD_CLOEXEC on each;
* ``os.fork()`` copies fds whatever their flags: a hook registered with ``os.register_at_fork``
  closes, in the child, every KVM fd and mapping this process holds. A VM belongs to the
  process that created it (KVM even refuses its ioctls from another process: EIO).
"""
from __future__ import annotations

import os
import weakref
from typing import NamedTuple

from ..errors import LabError

__all__ = ["Owner", "VCPU", "VM", "SYSTEM", "Closed", "close_all", "open_fds"]

# The order in which close_all() closes owners, one step per field of Closed: a vCPU belongs to
# its VM, and a VM was made through a /dev/kvm handle, so each is closed before the next.
VCPU, VM, SYSTEM = 0, 1, 2

_LIVE: "weakref.WeakSet[Owner]" = weakref.WeakSet()


class Owner:
    """Something that holds one KVM fd (and maybe mappings). ``close()`` is idempotent; a
    finalizer closes the fd if the object is garbage-collected without close().

    A subclass sets :attr:`what` (its name in messages) and :attr:`close_order`, and calls
    :meth:`adopt` as soon as the kernel has given it its fd. If it holds more than the fd (a
    mapping, objects that depend on it), it overrides :meth:`close` and :meth:`drop_in_child`
    to release those first and then call :meth:`release`.

    ``_fd`` is the fd itself (-1 once closed). Subclasses may read it directly where the
    checking :attr:`fd` property would cost too much (``Vcpu.run``, once per VM exit).
    """

    what = "KVM object"
    close_order = VCPU        # a class that does not say is closed first: nothing depends on it
    _fd = -1
    _finalizer = None

    def adopt(self, fd: int) -> None:
        """Own ``fd`` from now on: it is closed by :meth:`release`, or when this object dies."""
        self._fd = fd
        self._finalizer = weakref.finalize(self, os.close, fd)
        _LIVE.add(self)

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise LabError(f"this {self.what} is closed",
                           hint="create a new one (each `with` block closes its VM at the end)")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def release(self) -> None:
        """Close our own fd (subclasses first close what depends on it). Idempotent."""
        if self._finalizer is not None:
            self._finalizer()          # runs os.close(fd) once, never twice
        self._fd = -1
        _LIVE.discard(self)

    def close(self) -> None:
        self.release()

    def drop_in_child(self) -> None:
        """After fork, in the child: forget this object without touching the parent's VM."""
        self.release()

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
    live = list(_LIVE)
    counts = [0] * len(Closed._fields)
    for order in range(len(counts)):
        objs = [o for o in live if o.close_order == order and not o.closed]
        for o in objs:
            o.close()
        counts[order] = len(objs)
    return Closed(*counts)


def _after_fork_in_child() -> None:
    # Runs in the child right after os.fork(). The child gets copies of our fds and mappings;
    # close them so that no KVM fd leaks into children (and from them into containers).
    for owner in list(_LIVE):
        try:
            owner.drop_in_child()
        except Exception:  # never let cleanup of a copy break the child
            pass


os.register_at_fork(after_in_child=_after_fork_in_child)


def open_fds(pid: int | str = "self", proc: str = "/proc") -> list[tuple[int, str]]:
    """(fd, target) for every fd of ``pid`` that is /dev/kvm or a KVM anonymous inode.

    ``proc`` is where procfs is mounted (a fake tree in the unit tests).
    """
    found = []
    base = f"{proc}/{pid}/fd"
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

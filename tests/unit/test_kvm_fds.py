"""labhelper.kvm.fds without /dev/kvm: who owns a KVM fd, how it is closed (once), in which order
close_all() closes them, and what a forked child keeps (nothing).

Owners adopt /dev/null fds here: what is tested is the ownership, not KVM.
"""
from __future__ import annotations

import gc
import mmap
import os

import pytest
from forking import child_answer

from labhelper import kvm
from labhelper.errors import LabError
from labhelper.kvm import fds
from labhelper.kvm.system import Kvm
from labhelper.kvm.vcpu import Vcpu
from labhelper.kvm.vm import GuestMemory, Vm


@pytest.fixture(autouse=True)
def _nothing_live_before():
    fds.close_all()              # the counts asserted below are this test's owners only


def null_fd() -> int:
    return os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_fork_hook_closes_our_fds_in_the_child():
    class Fake(fds.Owner):
        pass
    owner = Fake()
    owner.adopt(null_fd())
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


def _adopted(cls, **attrs):
    obj = cls.__new__(cls)
    obj.adopt(null_fd())
    for k, v in attrs.items():
        setattr(obj, k, v)
    return obj


def test_close_all_closes_vcpus_then_vms_then_systems():
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


def test_each_owner_class_says_where_it_is_closed():
    assert (Vcpu.close_order, Vm.close_order, Kvm.close_order) == (fds.VCPU, fds.VM, fds.SYSTEM)
    assert fds.VCPU < fds.VM < fds.SYSTEM
    assert (Vcpu.what, Vm.what, Kvm.what) == ("vCPU", "VM", "/dev/kvm handle")
    assert fds.Closed._fields[fds.VCPU:fds.SYSTEM + 1] == ("vcpus", "vms", "systems")


def test_close_all_goes_by_close_order_not_by_class():
    # fds knows no owner class by name: any Owner is closed at its close_order, and counted there.
    order = []

    def owner_class(name: str, close_order: int):
        def close(self):
            order.append(name)
            self.release()
        return type(name, (fds.Owner,), {"close_order": close_order, "close": close})
    made = [owner_class(name, level)() for name, level in
            (("Top", fds.SYSTEM), ("Bottom", fds.VCPU), ("Middle", fds.VM), ("Bottom2", fds.VCPU))]
    for owner in made:
        owner.adopt(null_fd())
    closed = fds.close_all()
    assert order[:2] in (["Bottom", "Bottom2"], ["Bottom2", "Bottom"]) and order[2:] == ["Middle", "Top"]
    assert closed == fds.Closed(2, 1, 1)
    assert all(o.closed for o in made)


def test_closed_owner_refuses_with_its_name_and_a_hint():
    owner = _adopted(Vm, memory=[], vcpus=[])
    with owner as same:                                # a context manager that closes at the end
        assert same is owner and owner.fd >= 0 and not owner.closed
    assert owner.closed
    with pytest.raises(LabError, match="this VM is closed") as info:
        owner.fd
    assert "hint:" in str(info.value)
    owner.close()                                      # idempotent
    owner.release()


def test_a_forgotten_owner_closes_its_fd_when_collected():
    owner = fds.Owner()
    owner.adopt(null_fd())
    fd = owner.fd
    assert is_open(fd)
    del owner
    gc.collect()
    assert not is_open(fd)                             # the finalizer closed it, once
    assert fds.close_all() == fds.Closed(0, 0, 0)      # and it is not "live" any more


def test_release_closes_the_fd_exactly_once():
    owner = fds.Owner()
    fd = null_fd()
    owner.adopt(fd)
    owner.release()
    assert not is_open(fd)
    reused = null_fd()                                 # the kernel gives the same number again...
    try:
        owner.release()                                # ...and a second release must not close it
        owner.close()
        assert is_open(reused)
    finally:
        os.close(reused)


def test_a_forked_child_keeps_no_fd_and_no_mapping():
    # A VM with guest memory and a vCPU with its (here anonymous) kvm_run mapping: in a child
    # made by a plain fork(), every fd and mapping is closed; in the parent, nothing is.
    vm = _adopted(Vm, memory=[GuestMemory(0, 0, 0x4000)], vcpus=[])
    vcpu = _adopted(Vcpu, vm=vm, _run=mmap.mmap(-1, 4096))
    vm.vcpus.append(vcpu)
    system = _adopted(Kvm, path="/dev/null", api_version=12)
    numbers = (system.fd, vm.fd, vcpu.fd)

    def child() -> bytes:
        state = (
            [is_open(fd) for fd in numbers],
            [o.closed for o in (system, vm, vcpu)],
            [vm.memory[0]._map.closed, vcpu._run.closed],
            fds.close_all(),
        )
        return repr(state).encode()
    answer = child_answer(child)
    assert answer == repr(([False] * 3, [True] * 3, [True, True], fds.Closed(0, 0, 0))).encode()
    assert all(is_open(fd) for fd in numbers) and not vm.closed and not vcpu._run.closed
    vm.write(0x1000, b"still mine")
    assert vm.read(0x1000, 10) == b"still mine"
    assert fds.close_all() == fds.Closed(1, 1, 1)
    assert vm.memory[0]._map.closed and vcpu._run.closed


def test_open_fds_lists_only_kvm_fds(tmp_path):
    fd_dir = tmp_path / "4242" / "fd"
    fd_dir.mkdir(parents=True)
    for number, target in ((3, "/dev/kvm"), (4, "anon_inode:kvm-vm"), (5, "anon_inode:kvm-vcpu:0"),
                           (6, "/dev/null"), (7, "anon_inode:[eventfd]"), (10, "/dev/kvmish")):
        os.symlink(target, fd_dir / str(number))
    assert fds.open_fds(4242, proc=str(tmp_path)) == [
        (3, "/dev/kvm"), (4, "anon_inode:kvm-vm"), (5, "anon_inode:kvm-vcpu:0")]
    assert fds.open_fds(4243, proc=str(tmp_path)) == []          # no such process: nothing, no error
    assert kvm.open_fds is fds.open_fds and kvm.close_all is fds.close_all

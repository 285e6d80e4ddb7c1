"""labhelper.kvm.machine without /dev/kvm: bad input to a Machine is refused with a clear error,
before anything is opened or mapped; and the watchdog wrapper of step() and run() disarms and
closes the VM wherever an interrupt lands.

No root and no /dev/kvm: LABHELPER_KVM_DEVICE points at paths that are not KVM, and the checks
that must come *before* the device is opened are shown to do so (a missing device would
otherwise be the error).
"""
from __future__ import annotations

import os
import threading

import capabilities
import pytest

from labhelper import kvm
from labhelper.errors import RequirementError
from labhelper.kvm import exits, guests, watchdog
from labhelper.kvm import machine as machine_module
from labhelper.kvm.devices import MmioUart
from labhelper.kvm.machine import Machine
from labhelper.kvm.vm import MEMORY_CAP, MemoryError_

NOWHERE = "/nonexistent/kvm"
HAVE_BINUTILS = capabilities.have("binutils")
needs_as = capabilities.needs("binutils", "GNU binutils is not installed")


def fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))



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


def test_other_architectures_are_told_why(monkeypatch):
    import platform
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    with pytest.raises(RequirementError, match="x86 guests, and this machine is aarch64"):
        Machine(guests.Program("p", "real", 0x1000, b"\xf4"), device=NOWHERE)


# --- the watchdog around step() and run(): armed, always disarmed, the VM closed on interrupt -----

class FakeVcpu:
    """A vCPU whose run() plays a script: exits to return, or exceptions to raise."""

    def __init__(self, *script):
        self.script = list(script)
        self.closed = False
        self.interruptions = 0

    def run(self):
        what = self.script.pop(0)
        if isinstance(what, BaseException) or (isinstance(what, type) and issubclass(what, BaseException)):
            raise what
        return what

    def set_immediate_exit(self, on: bool = True) -> None:
        pass


@pytest.fixture
def fake_machine(monkeypatch):
    """A Machine around a FakeVcpu, with watchdog.arm/disarm and Machine.close recorded."""
    events = []
    monkeypatch.setattr(watchdog, "arm", lambda vcpu, deadline=None: events.append(("arm", vcpu, deadline)))
    monkeypatch.setattr(watchdog, "disarm", lambda vcpu: events.append(("disarm", vcpu)))

    def make(*script):
        m = Machine.__new__(Machine)
        m.vcpu = FakeVcpu(*script)
        m.kvm = m.vm = None
        m.devices, m._ports, m._mmio = [], {}, []
        m.output, m.reports, m.counts = bytearray(), machine_module.Kept(8), {}
        m._runner, m._stop_asked, m._idle = None, False, threading.Event()
        m.close = lambda: events.append(("close",))
        return m
    make.events = events
    return make


@pytest.mark.parametrize("how", ["step", "run"])
def test_a_normal_return_disarms_and_leaves_the_vm_open(fake_machine, how):
    m = fake_machine(exits.Hlt())
    result = m.step(timeout=5) if how == "step" else m.run(timeout=5)
    assert (result if how == "step" else result.last) == exits.Hlt()
    (arm, vcpu, deadline), disarm = fake_machine.events
    assert arm == "arm" and vcpu is m.vcpu and deadline is not None
    assert disarm == ("disarm", m.vcpu)                # no close: the Machine stays usable


@pytest.mark.parametrize("how", ["step", "run"])
def test_an_interrupt_in_the_guest_disarms_then_closes(fake_machine, how):
    m = fake_machine(exits.Interrupted(), KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt) as info:
        m.step() if how == "step" else m.run()
    assert [e[0] for e in fake_machine.events] == ["arm", "disarm", "close"]
    assert "VM closed" in "".join(info.value.__notes__)


@pytest.mark.parametrize("how", ["step", "run"])
@pytest.mark.parametrize("where", ["after arm", "in disarm"])
def test_an_interrupt_at_the_worst_moment_still_closes_the_vm(fake_machine, monkeypatch, how, where):
    events = fake_machine.events
    if where == "after arm":
        def arm(vcpu, deadline=None):
            events.append(("arm", vcpu, deadline))
            raise KeyboardInterrupt
        monkeypatch.setattr(watchdog, "arm", arm)
    else:
        def disarm(vcpu):
            events.append(("disarm", vcpu))
            raise KeyboardInterrupt
        monkeypatch.setattr(watchdog, "disarm", disarm)
    m = fake_machine(exits.Hlt())
    with pytest.raises(KeyboardInterrupt) as info:
        m.step() if how == "step" else m.run()
    assert [e[0] for e in events] == ["arm", "disarm", "close"]   # armed: always disarmed; always closed
    assert "VM closed" in "".join(info.value.__notes__)


@pytest.mark.parametrize("how", ["step", "run"])
def test_other_errors_disarm_without_closing(fake_machine, how):
    m = fake_machine(TimeoutError("someone else's alarm"))
    with pytest.raises(TimeoutError):
        m.step() if how == "step" else m.run()
    assert [e[0] for e in fake_machine.events] == ["arm", "disarm"]


def test_page_tables_are_placed_by_modes():
    m = Machine.__new__(Machine)
    assert m.page_table_base(0x10000) == 0x10000 - 3 * 4096

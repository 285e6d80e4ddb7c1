"""Chapter 02's stepper and its panel, without /dev/kvm."""
from __future__ import annotations

import capabilities
import pytest

from labhelper.kvm import guests
from labhelper.teach.stepper import Stepper

needs_as = capabilities.needs("binutils", "GNU binutils is not installed")


@needs_as
def test_stepper_before_the_first_step_opens_nothing(monkeypatch):
    monkeypatch.setenv("LABHELPER_KVM_DEVICE", "/nonexistent")
    s = Stepper(guests.SERIAL_HELLO)
    assert repr(s) == "Stepper(Program('guest', mode=real, origin=0x1000, 44 bytes), not started)"
    page = s.panel_html()
    assert "ready" in page and "=&gt;" in page and "0x1000" in page and "(nothing yet)" in page
    assert s.machine is None and not s.done
    from labhelper.kvm import KvmUnavailable
    with pytest.raises(KvmUnavailable):
        s.step()
    s.close()


def test_stepper_after_close_refuses_instead_of_opening_a_new_vm():
    from types import SimpleNamespace
    from labhelper.errors import LabError
    from labhelper.teach.stepper import Stepper
    s = Stepper(guests.Program("p", "real", 0x1000, b"\xf4"))
    s.machine = SimpleNamespace(closed=True, close=lambda: None)
    with pytest.raises(LabError, match=r"closed: call reset\(\)"):
        s.step()
    assert s.machine.closed and s.history == []

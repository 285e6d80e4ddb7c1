"""Chapter 02's diagrams and the stepper's panel, without /dev/kvm."""
from __future__ import annotations

import sys

import pytest

from labhelper.kvm import diagrams, guests
from labhelper.kvm.stepper import Stepper

needs_as = pytest.mark.skipif(not all(guests.tools().values()), reason="GNU binutils is not installed")


def test_diagrams_are_dot_sources_with_the_words_that_teach():
    t = diagrams.hypervisor_types()
    assert "type 1" in t.source and "type 2" in t.source and t.source.startswith("digraph")
    assert repr(t) == "<diagram: hypervisor types>"
    pvm = diagrams.nesting("kvm_pvm")
    assert "PVM" in pvm.source and "outer hypervisor" in pvm.source
    assert "type 2 (VirtualBox, VMware Workstation/Fusion" in pvm.source and "type 1 (Hyper-V, KVM)" in pvm.source
    bare = diagrams.nesting("kvm_intel", in_vm=False)
    assert '"outer"' not in bare.source and "VT-x" in bare.source and "nested" not in bare.source
    assert "nested" in diagrams.nesting("kvm_amd").source
    assert "no KVM here" in diagrams.nesting("none").source
    assert "KVM_EXIT_IO" in diagrams.exit_round_trip().source
    ev = diagrams.emulated_vs_paravirtual(3)
    assert ev.source.count('label=" 1"') == 1 and '" 3"' in ev.source and "1 doorbell" in ev.source


def test_importing_the_views_does_not_import_widgets_or_graphviz():
    import subprocess
    code = ("import sys, labhelper.kvm, labhelper.kvm.stepper, labhelper.kvm.diagrams; "
            "print(sorted(m for m in ('ipywidgets', 'graphviz', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


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

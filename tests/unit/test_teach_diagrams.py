"""The course's diagrams, as DOT sources: no drawing, no root, no /dev/kvm."""
from __future__ import annotations

import subprocess
import sys

import capabilities
import pytest

from labhelper.teach import chapters, diagrams


def test_course_map_follows_the_chapter_table():
    m = diagrams.course_map(done={"00"})
    for c in chapters.CHAPTERS:
        assert f"{c.number} {c.slug}" in m.source
    assert m.source.count("#d4f4dd") == 1   # one chapter done
    assert m.source.count(" -> ") == len(chapters.CHAPTERS) - 1


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


def test_layers_diagram_highlights_a_path():
    capabilities.need("graphviz")
    g = diagrams.layers_diagram("open")
    src = g.source
    for layer in ("application", "C library", "system call interface", "VFS", "disk driver", "disk"):
        assert layer in src
    assert src.count("#d62728") >= 2 * (len(diagrams.LAYER_PATHS["open"][0]) - 1)
    assert "#d62728" not in diagrams.layers_diagram(None).source
    with pytest.raises(ValueError, match="highlight must be one of"):
        diagrams.layers_diagram("teleport")


def test_importing_the_teaching_side_does_not_import_widgets_graphviz_or_matplotlib():
    code = ("import sys, labhelper.kvm, labhelper.teach.stepper, labhelper.teach.diagrams, labhelper.teach.plots, labhelper.teach.widgets, labhelper.teach.lab; "
            "print(sorted(m for m in ('ipywidgets', 'graphviz', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"




def test_namespaces_diagram_joins_processes_to_what_they_share():
    host = {"uts": 1, "pid": 2, "net": 3}
    d = diagrams.namespaces_diagram({"a": host, "b": dict(host, uts=9), "c": {"uts": 9}})
    assert d.source.count('shape="ellipse"') == 4            # uts 1, uts 9, pid 2, net 3
    assert d.source.count(" -> ") == 3 + 3 + 1
    assert '"ns:uts:9"' in d.source and "cluster_uts" in d.source and "time" not in d.source

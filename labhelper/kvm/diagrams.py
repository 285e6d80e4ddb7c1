"""Chapter 02's pictures, as graphviz diagrams (:class:`labhelper.viz.Diagram`; graphviz itself is
imported only when a diagram is drawn).

* :func:`hypervisor_types`: type 1 (on the hardware) next to type 2 (an application of a host OS)
* :func:`nesting`: where this very lab sits, from the laptop down to our tiny VM, labelled with
  what this machine reports (the KVM module, the hypervisor flag)
* :func:`exit_round_trip`: one VM exit, from the guest's ``out`` to the VMM and back
* :func:`emulated_vs_paravirtual`: N exits for a trapped device, one for a paravirtual one
"""
from __future__ import annotations

from ..viz import Diagram, digraph

__all__ = ["hypervisor_types", "nesting", "exit_round_trip", "emulated_vs_paravirtual"]

_HW = {"fillcolor": "#e1e4e8"}
_HV = {"fillcolor": "#ffe8b3"}
_OS = {"fillcolor": "#dbeafe"}
_GUEST = {"fillcolor": "#d4f4dd"}
_US = {"fillcolor": "#fde2e4"}


def hypervisor_types() -> Diagram:
    """Type 1 (bare metal: Xen, ESXi, Hyper-V) vs type 2 (hosted: VirtualBox, VMware Workstation).
    KVM blurs the line: a Linux kernel module that turns Linux itself into a type 1 hypervisor."""
    nodes = {
        "hw1": {"label": "hardware (CPU with VT-x / AMD-V)", **_HW},
        "hv1": {"label": "type 1 hypervisor\n(Xen, ESXi, Hyper-V; KVM = Linux + kvm.ko)", **_HV},
        "g1a": {"label": "VM: guest OS + apps", **_GUEST},
        "g1b": {"label": "VM: guest OS + apps", **_GUEST},
        "hw2": {"label": "hardware", **_HW},
        "os2": {"label": "host operating system\n(Windows, macOS, Linux)", **_OS},
        "hv2": {"label": "type 2 hypervisor: an application\n(VirtualBox, VMware Workstation)", **_HV},
        "app2": {"label": "ordinary apps", **_OS},
        "g2": {"label": "VM: guest OS + apps", **_GUEST},
    }
    edges = [("hw1", "hv1", {}), ("hv1", "g1a", {}), ("hv1", "g1b", {}),
             ("hw2", "os2", {}), ("os2", "hv2", {}), ("os2", "app2", {}), ("hv2", "g2", {})]
    return digraph("hypervisor types", nodes, edges, rankdir="BT",
                   clusters={"t1": ("type 1: runs on the hardware", ["hw1", "hv1", "g1a", "g1b"]),
                             "t2": ("type 2: runs on a host OS", ["hw2", "os2", "hv2", "app2", "g2"])})


def nesting(flavour: str = "kvm_intel", in_vm: bool = True) -> Diagram:
    """This lab, layer by layer. ``flavour`` is the KVM module that drives /dev/kvm here
    (host.kvm_info().flavour); ``in_vm`` whether the CPU reports a hypervisor above us."""
    nested = ", nested (the outer hypervisor\nlets this VM use it itself)" if in_vm else ""
    how = {
        "kvm_intel": f"kvm_intel: VT-x{nested}",
        "kvm_amd": f"kvm_amd: AMD-V (SVM){nested}",
        "kvm_pvm": "kvm_pvm: PVM, no VT-x/AMD-V needed;\nthe host kernel switches to the guest in software",
    }.get(flavour, f"{flavour}: no KVM here (our VM cannot run)")
    nodes = {
        "hw": {"label": "your laptop / a cloud server: the hardware", **_HW},
        "outer": {"label": "outer hypervisor: type 2 (VirtualBox, VMware Workstation/Fusion,\n"
                           "Parallels) or type 1 (Hyper-V, KVM)", **_HV},
        "labvm": {"label": "the lab VM: a Linux kernel, Jupyter, this notebook" if in_vm else "this machine: Linux", **_OS},
        "kvm": {"label": f"/dev/kvm: {how}", **_HV},
        "python": {"label": "this notebook's Python: the VMM (labhelper.kvm)", **_US},
        "tiny": {"label": "our tiny VM: one vCPU, 64 KiB, a few dozen bytes of code", **_GUEST},
    }
    edges = [("hw", "outer", {}), ("outer", "labvm", {"label": " runs"}), ("labvm", "kvm", {"label": " module"}),
             ("python", "kvm", {"label": " ioctl()", "dir": "both"}), ("kvm", "tiny", {"label": " KVM_RUN"})]
    if not in_vm:
        nodes.pop("outer")
        edges = [("hw", "labvm", {})] + edges[2:]
    return digraph("nesting", nodes, edges, rankdir="BT")


def exit_round_trip() -> Diagram:
    """An ``out`` in the guest, all the way to our Python code and back."""
    nodes = {
        "guest": {"label": "guest: out dx, al", **_GUEST},
        "exit": {"label": "VM exit\n(the CPU saves the guest, loads the host)", **_HW},
        "kvm": {"label": "KVM in the host kernel:\nhandles it if it can (cpuid, rdmsr, hlt polling...)", **_HV},
        "run": {"label": "ioctl(KVM_RUN) returns\nkvm_run.exit_reason = KVM_EXIT_IO", **_OS},
        "vmm": {"label": "our VMM (Python): emulate the device\n(print the byte)", **_US},
        "entry": {"label": "ioctl(KVM_RUN) again -> VM entry", **_OS},
    }
    edges = [("guest", "exit", {"label": " trap"}), ("exit", "kvm", {}),
             ("kvm", "guest", {"label": " handled in the kernel:\n no trip to user space", "style": "dashed"}),
             ("kvm", "run", {"label": " needs user space"}), ("run", "vmm", {}), ("vmm", "entry", {}),
             ("entry", "guest", {"label": " resume after the out"})]
    return digraph("exit round trip", nodes, edges, rankdir="TB")


def emulated_vs_paravirtual(n: int = 5) -> Diagram:
    """Full virtualization of a serial port (one exit per byte) vs a paravirtual console (one)."""
    nodes = {"g_e": {"label": f"guest (unmodified driver):\n{n} x out 0x3f8", **_GUEST},
             "v_e": {"label": "VMM: emulated 16550 UART", **_US},
             "g_p": {"label": "guest (knows it is a VM):\nbuffer in shared memory + mailbox", **_GUEST},
             "v_p": {"label": "VMM: paravirtual console\nreads the buffer itself", **_US}}
    edges = [("g_e", "v_e", {"label": f" {i + 1}"}) for i in range(n)]
    edges += [("g_p", "v_p", {"label": " 1 doorbell", "penwidth": "2"})]
    return digraph("emulated vs paravirtual", nodes, edges, rankdir="LR",
                   clusters={"e": ("full virtualization: trap and emulate", ["g_e", "v_e"]),
                             "p": ("paravirtualization: the guest cooperates", ["g_p", "v_p"])})

"""Every picture of the course, as a graphviz diagram (graphviz is imported only to draw).

Diagrams are returned as :class:`Diagram`, which a notebook shows as SVG (with a stable plain
text fallback, so nbval compares the words, not memory addresses) and which keeps the DOT source
for tests and for learners who want to see how it is drawn.

* the course: :func:`course_map`
* chapter 01: :func:`layers_diagram`, the layers from a program down to the hardware
* chapter 02: :func:`hypervisor_types`, :func:`nesting`, :func:`exit_round_trip`,
  :func:`emulated_vs_paravirtual`
* chapter 03: :func:`namespaces_diagram`, processes and the namespaces they share
"""
from __future__ import annotations

import html
import shutil
from dataclasses import dataclass

from ..errors import Refused, RequirementError
from .chapters import CHAPTERS

__all__ = ["Diagram", "digraph", "course_map", "layers_diagram", "LAYER_PATHS", "hypervisor_types",
           "nesting", "exit_round_trip", "emulated_vs_paravirtual", "namespaces_diagram", "network_diagram", "cgroup_tree",
           "overlay_stack"]


@dataclass
class Diagram:
    title: str
    source: str  # DOT text

    def svg(self) -> str:
        if shutil.which("dot") is None:
            raise RequirementError("drawing a diagram needs graphviz's dot program",
                                   hint="apt-get install graphviz (scripts/provision.sh does it)",
                                   missing=("dot",))
        import graphviz  # heavy-ish; only when drawing
        return graphviz.Source(self.source).pipe(format="svg").decode()

    def _repr_svg_(self) -> str | None:
        try:
            return self.svg()
        except RequirementError:
            return None

    def __repr__(self) -> str:
        return f"<diagram: {self.title}>"

    def _repr_html_(self) -> str | None:
        # Only when dot is missing: then show the DOT source, so the cell still says something.
        if shutil.which("dot") is None:
            return f"<pre>{html.escape(self.source)}</pre>"
        return None


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def digraph(title: str, nodes: dict[str, dict], edges: list[tuple[str, str, dict]],
            rankdir: str = "TB", clusters: dict[str, tuple[str, list[str]]] | None = None) -> Diagram:
    """Build a Diagram from plain data: ``nodes`` {id: attrs}, ``edges`` [(a, b, attrs)],
    ``clusters`` {id: (label, [node ids])}. Attributes are graphviz's (label, color, style...)."""
    def attrs(a: dict) -> str:
        return ", ".join(f"{k}={_q(str(v))}" for k, v in a.items())

    lines = [f"digraph {_q(title)} {{", f"  rankdir={rankdir};",
             '  node [shape=box, style="rounded,filled", fillcolor="#f6f8fa", fontname="Helvetica"];',
             '  edge [fontname="Helvetica", fontsize=10];']
    placed = set()
    for cid, (label, members) in (clusters or {}).items():
        lines.append(f"  subgraph {_q('cluster_' + cid)} {{ label={_q(label)}; style=dashed;")
        for n in members:
            lines.append(f"    {_q(n)} [{attrs(nodes.get(n, {}))}];")
            placed.add(n)
        lines.append("  }")
    for n, a in nodes.items():
        if n not in placed:
            lines.append(f"  {_q(n)} [{attrs(a)}];")
    for a, b, ea in edges:
        lines.append(f"  {_q(a)} -> {_q(b)} [{attrs(ea)}];")
    lines.append("}")
    return Diagram(title, "\n".join(lines))


def course_map(done: set[str] | None = None) -> Diagram:
    """The chapters as a path, grouped by the seed's parts; ``done`` chapters are shaded."""
    done = done or set()
    nodes, clusters = {}, {}
    for c in CHAPTERS:
        nodes[c.number] = {"label": f"{c.number} {c.slug}\n{c.what}",
                           "fillcolor": "#d4f4dd" if c.number in done else "#f6f8fa"}
        clusters.setdefault(c.part, (c.part, []))[1].append(c.number)
    edges = [(a.number, b.number, {}) for a, b in zip(CHAPTERS, CHAPTERS[1:])]
    return digraph("course map", nodes, edges, rankdir="TB",
                   clusters={str(i): v for i, v in enumerate(clusters.values())})


# ---------------------------------------------------------------------------------------------
# The layers between a program and the hardware, as a diagram

#: For each highlightable path: the nodes it goes through, top to bottom, and a caption.
LAYER_PATHS: dict[str, tuple[tuple[str, ...], str]] = {
    "open": (("app", "libc", "entry", "vfs", "fs", "block", "driver", "disk"),
             'Python open("/etc/hostname") -> glibc open() -> openat, system call 257 on x86_64 '
             "-> VFS path lookup -> ext4 -> page cache or block layer -> disk driver -> disk"),
    "getpid": (("app", "libc", "entry", "sched"),
               "getpid() enters the kernel, reads current->tgid and returns: a mode switch, no device"),
    "clock_gettime": (("app", "libc", "vdso"),
                      "clock_gettime() never leaves user mode: the kernel maps the vDSO, code and "
                      "clock data, into every process"),
    "socket": (("app", "libc", "entry", "net", "nic_driver", "nic"),
               "send() -> the network stack (TCP/IP) -> the NIC driver -> the network card"),
}


def layers_diagram(highlight: str | None = "open"):
    """A graphviz diagram of the layers app -> libc -> system call interface -> kernel
    subsystems -> drivers -> hardware, with the path of one call highlighted.

    ``highlight`` is one of LAYER_PATHS ("open", "getpid", "clock_gettime", "socket") or None.
    Returns a :class:`Diagram` (SVG in a notebook; ``.source`` is the DOT text).
    """
    import graphviz  # lazy: importing labhelper must stay fast

    if highlight is not None and highlight not in LAYER_PATHS:
        raise Refused(f"highlight must be one of {', '.join(LAYER_PATHS)} or None, not {highlight!r}")
    path = LAYER_PATHS[highlight][0] if highlight else ()
    steps = set(zip(path, path[1:]))
    hot = "#d62728"
    g = graphviz.Digraph("layers", graph_attr={"rankdir": "TB", "fontname": "Helvetica",
                                               "nodesep": "0.3", "ranksep": "0.35",
                                               "label": LAYER_PATHS[highlight][1] if highlight else "",
                                               "labelloc": "b", "fontsize": "11"},
                         node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica",
                                    "fontsize": "11", "fillcolor": "white"},
                         edge_attr={"color": "#999999", "fontname": "Helvetica"})

    def node(sub, key, label):
        on = key in path
        sub.node(key, label, color=hot if on else "#555555", penwidth="2.5" if on else "1",
                 fillcolor="#fde0dd" if on else "white")

    with g.subgraph(name="cluster_user") as u:
        u.attr(label="user mode (ring 3 / EL0): each process in its own address space",
               style="filled", fillcolor="#eef5ff", color="#6a8cc7", fontsize="11")
        node(u, "app", "application\n(python3, ruby, ls)")
        node(u, "libc", "C library (glibc)\nopen(), read(), getpid() wrappers")
        node(u, "vdso", "vDSO\nclock_gettime() without a mode switch")
    with g.subgraph(name="cluster_kernel") as k:
        k.attr(label="kernel mode (ring 0 / EL1): one kernel for all processes",
               style="filled", fillcolor="#fff4e6", color="#c98a3a", fontsize="11")
        node(k, "entry", "system call interface\nsyscall instruction -> entry_SYSCALL_64\n-> sys_call_table[nr]")
        node(k, "vfs", "VFS\npath lookup, file descriptors")
        node(k, "fs", "filesystem\n(ext4, overlayfs, proc)")
        node(k, "block", "page cache,\nblock layer")
        node(k, "sched", "processes,\nscheduler")
        node(k, "mm", "memory\nmanagement")
        node(k, "net", "network stack\n(sockets, TCP/IP)")
        node(k, "driver", "disk driver\n(NVMe, virtio-blk)")
        node(k, "nic_driver", "network driver\n(virtio-net, e1000)")
    with g.subgraph(name="cluster_hw") as h:
        h.attr(label="hardware", style="filled", fillcolor="#f0f0f0", color="#888888", fontsize="11")
        node(h, "disk", "disk")
        node(h, "nic", "network card")
        node(h, "cpu", "CPU, memory")

    def edge(a, b, **kw):
        on = (a, b) in steps
        g.edge(a, b, color=hot if on else "#999999", penwidth="2.5" if on else "1", **kw)

    edge("app", "libc")
    edge("libc", "vdso")
    edge("libc", "entry", label=" mode switch", fontsize="10", fontcolor=hot if ("libc", "entry") in steps else "#555555")
    for sub in ("vfs", "sched", "mm", "net"):
        edge("entry", sub)
    edge("vfs", "fs")
    edge("fs", "block")
    edge("block", "driver")
    edge("driver", "disk")
    edge("net", "nic_driver")
    edge("nic_driver", "nic")
    edge("mm", "cpu")
    edge("sched", "cpu")
    return Diagram(f"layers, {highlight or 'no'} path highlighted", g.source)


# ---------------------------------------------------------------------------------------------
# Chapter 02: hypervisors

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


# ---------------------------------------------------------------------------------------------
# Chapter 03: namespaces

_NS_COLOURS = {"mnt": "#dbeafe", "uts": "#fde2e4", "ipc": "#e9d5ff", "pid": "#d4f4dd", "net": "#ffe8b3",
               "user": "#fce7f3", "cgroup": "#e1e4e8", "time": "#cffafe"}


_PROCESS_COLOURS = ("#0969da", "#bc4c00", "#1a7f37", "#8250df", "#cf222e")


def namespaces_diagram(processes: dict[str, dict[str, int]]) -> Diagram:
    """Processes (on top) joined to the namespaces they are in (below, one box per type): where
    two processes' arrows meet, they share that namespace; where they part, each has its own.

    ``processes`` maps a label ("notebook", "held") to its namespace ids (``namespaces.ids``).
    Each process's arrows have a colour of their own.
    """
    types = [t for t in _NS_COLOURS if any(t in ids for ids in processes.values())]
    nodes, edges, clusters = {}, [], {}
    colours = {label: _PROCESS_COLOURS[i % len(_PROCESS_COLOURS)] for i, label in enumerate(processes)}
    for label in processes:
        nodes[f"p:{label}"] = {"label": label, "shape": "box", "fillcolor": "#f6f8fa", "color": colours[label],
                               "penwidth": "2"}
    for t in types:
        members = []
        for label, ids in processes.items():
            if t not in ids:
                continue
            node = f"ns:{t}:{ids[t]}"
            if node not in nodes:
                nodes[node] = {"label": str(ids[t]), "shape": "ellipse", "fillcolor": _NS_COLOURS[t],
                               "fontsize": "9"}
                members.append(node)
            edges.append((f"p:{label}", node, {"color": colours[label]}))
        clusters[t] = (t, members)
    return digraph("processes and their namespaces", nodes, edges, rankdir="TB", clusters=clusters)


def network_diagram(topology, show_loopback: bool = False) -> Diagram:
    """The lab's network as the kernel has it (``network.topology()``): one dashed box per
    namespace with its interfaces (name, addresses, up or down), a thick line per veth pair (a
    cable), and a dotted line from each bridge port to its bridge (a switch's socket)."""
    nodes, edges, clusters = {}, [], {}
    for space in topology.spaces:
        members = []
        for link in space.links:
            if link.kind == "loopback" and not show_loopback:
                continue
            node = f"{space.name}/{link.name}"
            addresses = [a for a in link.addresses if ":" not in a]            # IPv4: what the chapter uses
            label = "\n".join([f"{link.name} ({link.kind})", *addresses, "up" if link.up else "down"])
            nodes[node] = {"label": label, "fillcolor": ("#dafbe1" if link.up else "#eaeef2"),
                           "shape": "box" if link.kind != "bridge" else "component", "fontsize": "10"}
            members.append(node)
        if not members:
            node = f"{space.name}/(empty)"
            nodes[node] = {"label": "lo only" if not show_loopback else "no interface", "shape": "plaintext"}
            members.append(node)
        label = "this host" if space.name == "host" else f"netns {space.name}"
        clusters[space.name] = (label, members)
        by_index = {link.index: link.name for link in space.links}
        for link in space.links:
            if link.master and link.master in by_index:
                edges.append((f"{space.name}/{link.name}", f"{space.name}/{by_index[link.master]}",
                              {"dir": "none", "style": "dotted", "label": "port"}))
    for cable in topology.cables:
        edges.append((f"{cable.a[0]}/{cable.a[1]}", f"{cable.b[0]}/{cable.b[1]}",
                      {"dir": "none", "penwidth": "3", "color": "#0969da", "label": "veth"}))
    return digraph("the lab's network", nodes, edges, rankdir="LR", clusters=clusters)


def cgroup_tree(tree: dict[str, list[int]], limits: dict[str, str] | None = None) -> Diagram:
    """The lab's cgroups as a tree (``cgroups.tree_of()``): one box per cgroup, with how many
    processes it holds and, where given, its limits (``{folder: "memory 64M, pids 32"}``)."""
    nodes, edges = {}, []
    limits = limits or {}
    for folder, pids in tree.items():
        name = folder.rstrip("/").rsplit("/", 1)[-1]
        lines = [name, f"{len(pids)} process{'es' if len(pids) != 1 else ''}"]
        if folder in limits:
            lines.append(limits[folder])
        nodes[folder] = {"label": "\n".join(lines), "fillcolor": "#dafbe1" if pids else "#f6f8fa"}
        parent = folder.rsplit("/", 1)[0]
        if parent in tree:
            edges.append((parent, folder, {}))
    return digraph("the lab's cgroups", nodes, edges, rankdir="TB")


def overlay_stack(names: list[str], listings: list[dict[str, str]], origins: dict[str, tuple[int, str]],
                  title: str = "an overlay, layer by layer") -> Diagram:
    """An overlay as a table: a row per file, a column per layer (``names``, top-most first:
    upper, then the lower folders, with their ``overlay.listing``), and the merged view on the
    left. The cell a merged file comes from is green (``overlay.origins``); a whiteout that hides
    a name is red, and the name is struck out in the merged view."""
    paths = sorted({p for view in listings for p, kind in view.items() if kind not in ("dir", "opaque")})
    mark = {"file": "file", "symlink": "symlink", "whiteout": "whiteout (0/0)", "other": "special"}
    head = "".join(f'<TD BGCOLOR="#e1e4e8"><B>{html.escape(n)}</B></TD>' for n in names)
    rows = [f'<TR><TD BGCOLOR="#ddf4ff"><B>merged</B></TD>{head}</TR>']
    for path in paths:
        where = origins.get(path)
        blocker = None
        if where is None:
            # Hidden by a folder above it: opaque, or whited out, in the first layer that says so.
            parents = [path[:k] for k in range(len(path)) if path[k] == "/"]
            blocker = next(((i, p, view[p]) for i, view in enumerate(listings) for p in parents
                            if view.get(p) in ("opaque", "whiteout")), None)
        hidden = (where is not None and where[1] == "whiteout") or blocker is not None
        shown = f"<S>/{html.escape(path)}</S>" if hidden else f"/{html.escape(path)}"
        cells = [f'<TD ALIGN="LEFT" BGCOLOR="#ffffff">{shown}</TD>']
        for i, view in enumerate(listings):
            kind = view.get(path)
            text, colour = (html.escape(mark.get(kind, "")) if kind else ""), "#ffffff"
            if where is not None and where[0] == i:
                colour = "#ffebe9" if hidden else "#dafbe1"
            elif blocker is not None and blocker[0] == i:
                text, colour = f"{blocker[2]} /{html.escape(blocker[1])}", "#ffebe9"
            cells.append(f'<TD BGCOLOR="{colour}">{text}</TD>')
        rows.append("<TR>" + "".join(cells) + "</TR>")
    table = '<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="4">' + "".join(rows) + "</TABLE>"
    source = "\n".join([f"digraph {_q(title)} {{", '  node [shape=plaintext, fontname="Helvetica", fontsize=11];',
                        f"  stack [label=<{table}>];", "}"])
    return Diagram(title, source)

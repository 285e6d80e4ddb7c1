"""Diagrams with graphviz. graphviz (the Python package) is imported only when a diagram is drawn.

Diagrams are returned as :class:`Diagram`, which a notebook shows as SVG (with a stable plain
text fallback, so nbval compares the words, not memory addresses) and which keeps the DOT source
for tests and for learners who want to see how it is drawn.
"""
from __future__ import annotations

import html
import shutil
from dataclasses import dataclass

from .errors import RequirementError

__all__ = ["Diagram", "digraph", "course_map", "CHAPTERS"]

# The course, in the seed's order: the kernel, the hypervisor, Docker's kernel features, the comparison.
CHAPTERS = (
    ("00", "start-here", "What this lab is; the doctor; exercises; reset", "the lab"),
    ("01", "kernel-and-system-calls", "User vs kernel mode; open() traced to openat; what a syscall costs", "the kernel"),
    ("02", "hypervisors", "Type 1 vs 2; trap-and-emulate vs paravirtual; a real VM on /dev/kvm", "virtualization"),
    ("03", "namespaces", "mnt, pid, uts, ipc, user, cgroup, time namespaces; docker exec", "Docker's kernel features"),
    ("04", "network-namespaces", "An empty network stack; veth, a bridge, two containers talking", "Docker's kernel features"),
    ("05", "cgroups", "Memory (OOM), CPU quota, pids (fork bomb), I/O; v1 and v2", "Docker's kernel features"),
    ("06", "union-filesystems", "overlayfs, copy-up, whiteouts; image layers; docker diff", "Docker's kernel features"),
    ("07", "a-container-by-hand", "chroot and its escape; pivot_root; /proc, /dev; capabilities", "Docker's kernel features"),
    ("08", "containers-vs-vms", "The seed's question answered with measurements", "the comparison"),
)


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
    for num, slug, what, part in CHAPTERS:
        nodes[num] = {"label": f"{num} {slug}\n{what}", "fillcolor": "#d4f4dd" if num in done else "#f6f8fa"}
        clusters.setdefault(part, (part, []))[1].append(num)
    edges = [(a[0], b[0], {}) for a, b in zip(CHAPTERS, CHAPTERS[1:])]
    return digraph("course map", nodes, edges, rankdir="TB",
                   clusters={str(i): v for i, v in enumerate(clusters.values())})

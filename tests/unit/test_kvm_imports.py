"""The import graph inside labhelper/kvm, computed from the source with ``ast``.

Each module of labhelper.kvm imports only modules below it: the order is the table in the
package's docstring (``labhelper/kvm/__init__.py``), so the documented map and the code cannot
drift apart. Fails on:

* a cycle between sibling modules (however it is hidden);
* an import of a sibling module that points up the table (``vcpu`` importing ``vm``...);
* an import inside a function (a lazy import is how a cycle hides) of a sibling, or of any
  other labhelper module;
* a private name (``_x``) imported from another labhelper module.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

KVM = Path(__file__).resolve().parents[2] / "labhelper" / "kvm"
PACKAGE = "labhelper.kvm"
MODULES = sorted(p.stem for p in KVM.glob("*.py") if p.stem != "__init__")


class Import:
    """One import statement's meaning: which labhelper module, which names, where in the file."""

    def __init__(self, module: str, target: str, names: list[str], line: int, in_function: bool):
        self.module, self.target, self.names, self.line, self.in_function = module, target, names, line, in_function

    @property
    def sibling(self) -> str | None:
        """The kvm module imported, if it is one (``labhelper.kvm.vm`` -> ``vm``)."""
        if self.target.startswith(PACKAGE + "."):
            return self.target[len(PACKAGE) + 1:].split(".")[0]
        return None

    def __repr__(self) -> str:
        where = "in a function" if self.in_function else "at module level"
        return f"{self.module}.py:{self.line}: {self.target} {self.names} ({where})"


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = f"{PACKAGE}.{module}".split(".")[:-node.level]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, root: Path = KVM) -> list[Import]:
    """Every import of a labhelper module in labhelper/kvm/<module>.py (``root``: the folder)."""
    tree = ast.parse((root / f"{module}.py").read_text(), f"{module}.py")
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "labhelper":
                    found.append(Import(module, alias.name, [], node.lineno, in_function))
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node)
            if target.split(".")[0] == "labhelper":
                names = [a.name for a in node.names]
                if target == PACKAGE:
                    # `from . import vm, exits`: each name is a module of its own.
                    for name in names:
                        found.append(Import(module, f"{PACKAGE}.{name}", [], node.lineno, in_function))
                else:
                    found.append(Import(module, target, names, node.lineno, in_function))
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


def layers() -> list[str]:
    """The kvm modules in the order of the package docstring's table (bottom first)."""
    doc = ast.get_docstring(ast.parse((KVM / "__init__.py").read_text()))
    return re.findall(r"^``(\w+)``\s", doc, re.M)


ALL = {m: imports_of(m) for m in MODULES}
EDGES = {m: {i.sibling for i in ALL[m] if i.sibling} for m in MODULES}


def test_the_table_lists_every_module_once():
    assert sorted(layers()) == MODULES
    assert len(set(layers())) == len(layers())


def test_imports_are_found():
    # The parser itself: the known edges of the three levels, and the package's own imports.
    assert "vm" in EDGES["system"] and "vcpu" in EDGES["vm"]
    assert {"fds", "cpuid", "exits"} <= EDGES["vcpu"]
    assert EDGES["structs"] == set()


def test_no_cycle():
    state: dict[str, str] = {}
    path: list[str] = []

    def walk(m: str) -> None:
        state[m] = "open"
        path.append(m)
        for n in sorted(EDGES[m]):
            if state.get(n) == "open":
                cycle = path[path.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                walk(n)
        path.pop()
        state[m] = "done"

    for m in MODULES:
        if m not in state:
            walk(m)


def test_every_import_points_down_the_table():
    order = {m: i for i, m in enumerate(layers())}
    upward = [f"{m} imports {n}" for m in MODULES for n in sorted(EDGES[m]) if order[n] >= order[m]]
    assert not upward, upward


def test_system_vm_vcpu_never_back():
    assert "vm" in EDGES["system"] and "vcpu" in EDGES["vm"]
    assert not {"vm", "system"} & EDGES["vcpu"]
    assert "system" not in EDGES["vm"]
    for low in ("fds", "cpuid", "ioctls", "structs", "exits"):
        assert not {"system", "vm", "vcpu", "machine", "devices", "modes"} & EDGES[low], low
    assert not {"machine"} & set().union(*(EDGES[m] for m in MODULES))   # machine is the top


def test_no_import_of_the_package_itself():
    # `from . import available` (a name of __init__, not a module) would import upward.
    bad = [i for m in MODULES for i in ALL[m] if i.target == PACKAGE or i.sibling not in (None, *MODULES)]
    assert not bad, bad


def test_no_import_inside_a_function():
    lazy = [i for m in MODULES for i in ALL[m] if i.in_function]
    assert not lazy, f"a function-level import hides the import graph: {lazy}"


def test_no_private_name_crosses_a_module():
    private = [i for m in MODULES for i in ALL[m]
               if any(n.startswith("_") for n in i.names) or any(p.startswith("_") for p in i.target.split("."))]
    assert not private, private


def test_the_checks_catch_what_they_are_for(tmp_path):
    # Imports like the old vcpu.py's, fed to the same parser: each is seen for what it is.
    (tmp_path / "old.py").write_text(
        "from .system import _Owner, _cpuid_bytes\n"
        "from .exits import _IO\n"
        "from ..registry import fault_point\n"
        "def create():\n"
        "    from .vm import Vm\n")
    found = imports_of("old", tmp_path)
    assert [i.sibling for i in found] == ["system", "exits", None, "vm"]
    assert [i.target for i in found][2] == "labhelper.registry"
    assert [i.in_function for i in found] == [False, False, False, True]
    assert found[0].names == ["_Owner", "_cpuid_bytes"] and found[1].names == ["_IO"]

"""The package's import graph: imports point one way, from the roof (cli) to the floor (errors).

The allowed order is written once, here (ARCHITECTURE.md explains it). A module may import any
module *below* it in ORDER, never one above it; inside a package (kvm/, trace/, cleanup/,
teach/), submodules must not import each other in a circle. Function-level imports count too:
a lazy import must not hide an upward edge or a cycle. And no private name (``_x``) of one
module is used by another.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "labhelper"

# The floor first, the roof last. Each name is a module or a package of labhelper.
ORDER = [
    "errors",       # LabError, SyscallError: imports nothing of labhelper
    "flags",        # kernel flag values as IntFlag
    "marks",        # what "ours" means; the kinds of object
    "syscalls",     # the one ctypes boundary
    "procfs",       # reading /proc and /sys
    "host",         # facts about this machine; the safety guard's test
    "process",      # the fork boundary; processes as lab objects
    "capabilities", # root's power in pieces: the bounding set a container keeps
    "seccomp",      # a classic BPF filter of system calls
    "registry",     # the ledger, where the guard is enforced
    "mounts",       # concept modules, from here up: each makes and removes its own kinds
    "loop",         # loop devices (a file as a disk), for chapter 05's I/O limits
    "cgroups",
    "network",
    "namespaces",   # makes, looks at, joins and pins namespaces (in forked children)
    "overlay",      # overlayfs: layers, copy-up, whiteouts (chapter 06)
    "images",       # content-addressed image layers on overlay (chapter 06)
    "rootfs",       # a container's root filesystem: busybox-static as an image, or host binaries
    "container",    # run(): everything above composed, the way a runtime does it (chapter 07)
    "trace",
    "syscost",
    "kvm",
    "comparison",   # containers and VMs measured side by side (chapter 08): above both
    "cleanup",      # census + plan + execute, over every concept module
    "teach",        # the notebook side: chapters, lab, diagrams, plots, widgets
    "exercises",
    "cli",          # the roof
    "__main__",
]


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The labhelper modules an import statement names (dotted, relative to the package)."""
    names = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == "labhelper" or alias.name.startswith("labhelper."):
                names.append(alias.name.removeprefix("labhelper").lstrip("."))
        return names
    if node.level == 0:
        if not (node.module or "").startswith("labhelper"):
            return []
        base = node.module.removeprefix("labhelper").lstrip(".")
    else:
        here = module.split(".") if module else []
        is_package = MODULES[module].name == "__init__.py" if module in MODULES else False
        anchor = here if is_package else here[:-1]
        anchor = anchor[:len(anchor) - (node.level - 1)] if node.level > 1 else anchor
        base = ".".join(anchor + ([node.module] if node.module else []))
    for alias in node.names:
        candidate = f"{base}.{alias.name}" if base else alias.name
        names.append(candidate if candidate in MODULES else base)
    return names


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level?) for every labhelper import in ``module``."""
    tree = ast.parse(MODULES[module].read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for name in _resolve(module, node):
                if name != module and name != "":
                    found.append((name, node.lineno, id(node) in top))
    return found


def _layer(module: str) -> int:
    head = module.split(".")[0]
    assert head in ORDER, f"labhelper/{module}: add {head!r} to ORDER in {__file__} (and to ARCHITECTURE.md)"
    return ORDER.index(head)


def test_every_module_has_a_place_in_the_order():
    for module in MODULES:
        if module:
            _layer(module)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m))
def test_imports_point_down(module):
    for target, line, _ in _imports(module):
        if target.split(".")[0] == module.split(".")[0]:
            continue  # inside one package: checked for cycles below
        assert _layer(target) < _layer(module), (
            f"labhelper/{module} (line {line}) imports {target}, which is not below it in the order")


def test_no_cycle_inside_a_package():
    # A package's __init__ and its submodules are nodes too: kvm/__init__ gathers its submodules,
    # so a submodule that imported `kvm` itself would close a circle.
    graph = {m: {t for t, _, _ in _imports(m) if t.split(".")[0] == m.split(".")[0] and t != m}
             for m in MODULES if m}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [m, t]))
            if state.get(t) is None:
                visit(t, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if state.get(m) is None:
            visit(m, [])


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m))
def test_no_private_name_crosses_a_module(module):
    tree = ast.parse(MODULES[module].read_text())
    imported_modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            targets = _resolve(module, node)
            for alias, target in zip(node.names, targets):
                if target in MODULES and target.endswith(alias.name):
                    imported_modules.add(alias.asname or alias.name)   # a module bound to a name
                elif alias.name.startswith("_") and not alias.name.startswith("__") and target:
                    raise AssertionError(f"labhelper/{module} (line {node.lineno}) imports the private "
                                         f"name {alias.name} from {target}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("labhelper"):
                    imported_modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in imported_modules and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            raise AssertionError(f"labhelper/{module} (line {node.lineno}) uses {node.value.id}.{node.attr}, "
                                 "a private name of another module")

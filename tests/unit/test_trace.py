"""labhelper.trace, the package: its public API survived the split into modules, the modules
import one way, and importing it stays light. No root needed."""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import labhelper.trace as T

# labhelper/trace.py's __all__ before it became a package: notebooks, exercises, syscost and the
# teaching side use these names as trace.NAME.
OLD_ALL = [
    "Record", "Trace", "Summary", "SummaryRow", "TraceError", "CommandNotFoundError",
    "trace", "trace_call", "parse", "parse_line", "merge", "summarize", "category",
    "CATEGORIES", "CATEGORY_NAMES", "strace_path", "strace_argv", "unescape",
]
PACKAGE = Path(T.__file__).parent
ROOT = PACKAGE.parents[1]

# Each module may import only the modules listed for it: categories at the bottom, runner on top.
ALLOWED = {
    "categories": set(),
    "parser": {"categories"},
    "summary": {"categories", "parser"},
    "runner": {"categories", "parser", "summary"},
    "__main__": {"runner"},
    "__init__": {"categories", "parser", "summary", "runner"},
}


def test_the_old_public_api_is_all_there():
    assert T.__all__ == OLD_ALL
    missing = [name for name in OLD_ALL if not hasattr(T, name)]
    assert not missing, f"labhelper.trace lost {missing}"
    # the other public names of the old module are still reachable as trace.NAME
    for name in ("KINDS", "STRACE_HINT", "split_args"):
        assert hasattr(T, name), name
    assert callable(T.trace) and T.trace.__name__ == "trace"  # the function, not a submodule
    assert issubclass(T.CommandNotFoundError, T.TraceError)


def test_each_module_says_what_it_holds_and_exports_it():
    owners = {}
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem in ("__init__", "__main__"):
            continue
        module = importlib.import_module(f"labhelper.trace.{path.stem}")
        assert module.__doc__ and len(module.__doc__) > 200, f"{path.name} needs a docstring"
        assert [n for n in module.__all__ if not hasattr(module, n)] == [], path.name
        owners.update({n: module for n in module.__all__})
    for name in OLD_ALL:  # each name the package offers is its module's own object
        assert getattr(T, name) is getattr(owners[name], name), name


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) for each `from X import name` of labhelper; `import X` as (X, "")."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = node.module or ""
            elif node.level == 2 or (node.module or "").startswith("labhelper"):
                base = "labhelper." + (node.module or "") if node.level == 2 else node.module
            else:
                continue
            found += [(base, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.startswith("labhelper")]
    return found


BELOW_TRACE = {"errors", "flags", "marks", "syscalls", "procfs", "host", "process", "registry", "mounts",
               "cgroups", "network"}


def test_imports_point_one_way_and_no_private_name_crosses():
    for path in sorted(PACKAGE.glob("*.py")):
        for module, name in _imports(path):
            assert not name.startswith("_"), f"{path.name} imports the private {module}.{name}"
            if module.startswith("labhelper"):
                # outside the package: only modules below trace (tests/unit/test_imports.py has
                # the order), never teach
                target = module if module != "labhelper." else f"labhelper.{name}"
                assert target.split(".")[1] in BELOW_TRACE, (path.name, target)
            elif module:
                assert module in ALLOWED[path.stem], f"{path.name} may not import .{module}"
            else:  # `from . import x`
                assert name in ALLOWED[path.stem], f"{path.name} may not import .{name}"


def test_importing_trace_stays_light():
    code = ("import sys, labhelper.trace; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('matplotlib', 'graphviz', 'ipywidgets', 'IPython', 'numpy') or m.startswith('labhelper.teach')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"

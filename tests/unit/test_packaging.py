"""pyproject.toml and environment.yml name the same dependencies."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# conda-forge names that differ from PyPI's, and conda entries that are not Python packages.
CONDA_TO_PYPI = {"python-graphviz": "graphviz"}
NOT_PYPI = {"python", "pip", "graphviz"}  # conda's "graphviz" is the dot program itself


def _name(spec: str) -> str:
    return re.split(r"[<>=!~ \[]", spec.strip(), maxsplit=1)[0].lower()


def _pyproject() -> set[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = list(data["dependencies"])
    for extra in data.get("optional-dependencies", {}).values():
        deps += extra
    return {_name(d) for d in deps}


def _conda() -> tuple[set[str], list[str]]:
    names, pip = set(), []
    in_pip = False
    text = (ROOT / "environment.yml").read_text()
    for line in text[text.index("dependencies:"):].splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        if re.match(r"^\s+- pip:\s*$", stripped):
            in_pip = True
            continue
        m = re.match(r"^(\s+)- (.+)$", stripped)
        if not m:
            continue
        if in_pip and len(m.group(1)) > 2:
            pip.append(m.group(2).strip())
            continue
        in_pip = False
        name = _name(m.group(2))
        if name not in NOT_PYPI:
            names.add(CONDA_TO_PYPI.get(name, name))
    return names, pip


def test_same_dependencies():
    conda, _ = _conda()
    assert conda == _pyproject(), (
        f"only in pyproject.toml: {sorted(_pyproject() - conda)}; only in environment.yml: {sorted(conda - _pyproject())}")


def test_environment_installs_the_package_itself():
    _, pip = _conda()
    assert "-e ." in pip


def test_required_packages_present():
    # The user's choice of packages (DEVELOPERS.md): all must stay.
    assert {"jupyterlab", "ipywidgets", "graphviz", "pyroute2", "nbval"} <= _pyproject()


def test_channels():
    text = (ROOT / "environment.yml").read_text()
    assert re.search(r"channels:\s*\n\s*- conda-forge\s*\n\s*- nodefaults", text)


def test_console_script():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["scripts"]["labhelper"] == "labhelper.cli:main"


def _spec(text: str, name: str) -> str:
    for line in text.splitlines():
        m = re.match(rf'^\s*(?:- |")({name}[^"#]*)', line)
        if m:
            return m.group(1).replace(" ", "").rstrip('",')
    raise AssertionError(f"{name} is not listed")


def test_pyroute2_pinned_alike_and_installed_within_the_pin():
    # Chapter 04 relies on pyroute2 0.9's message classes; Debian's packaged 0.7 has another API.
    # Both files pin the same range, and the venv's pyroute2 is inside it.
    from importlib.metadata import version
    py = _spec((ROOT / "pyproject.toml").read_text(), "pyroute2")
    conda = _spec((ROOT / "environment.yml").read_text(), "pyroute2")
    assert py == conda == "pyroute2>=0.9.7,<0.10"
    major, minor, *_ = (int(x) for x in version("pyroute2").split(".")[:3])
    assert (major, minor) == (0, 9)

"""System tests touch the real kernel: they need root and a machine declared disposable.
Each one runs between two censuses (the root conftest.py) and must leave nothing behind."""
import hashlib
import os
import subprocess
import sys
import uuid

import pytest

from labhelper import host


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/system" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.system)


@pytest.fixture(autouse=True)
def _needs_root_and_disposable():
    if os.geteuid() != 0:
        pytest.skip("needs root: system tests change kernel state")
    if host.disposable_reason() is None:
        pytest.skip("needs a disposable machine: run through `make test`, which sets LABHELPER_DISPOSABLE=1")


@pytest.fixture
def uid():
    """A short random suffix for object names, so parallel runs never collide."""
    return uuid.uuid4().hex[:6]


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True, timeout=60)


def labhelper_cli(*args, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "labhelper", *args], capture_output=True, text=True,
                          env=e, timeout=120)


def tree_digest(path) -> str:
    """One hash of a folder's names and contents: equal before and after means byte-identical."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def host_folder(tmp_path):
    """A folder that stands for the learner's own data on the host: cleanup must never touch it."""
    folder = tmp_path / "host-data"
    (folder / "sub").mkdir(parents=True)
    (folder / "precious.txt").write_text("the learner's work")
    (folder / "sub" / "more.txt").write_text("more")
    return folder

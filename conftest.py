"""Test-wide rules, for tests/ and for the notebooks run by nbval.

Every system test and every notebook takes a census of the kernel's lab objects before and
after (tests/census.py, independent of labhelper) and fails on any difference: nothing leaks.

A skip whose capability this machine is known to have (LABHELPER_EXPECT, set by .ci/run) is a
failure: see tests/capabilities.py.
"""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "tests"))
import census  # noqa: E402

# tests/capabilities.py is also a plugin: its hooks turn an expected capability's skip into a failure.
pytest_plugins = ["capabilities"]

_notebook_census: dict[str, frozenset] = {}


def _is_system(item) -> bool:
    return "tests/system" in str(item.fspath).replace(os.sep, "/")


def _is_notebook(item) -> bool:
    return str(item.fspath).endswith(".ipynb")


@pytest.fixture(autouse=True)
def _census_guard(request):
    """System tests: the kernel's lab objects are the same after the test as before."""
    if not _is_system(request.node):
        yield
        return
    before = census.take()
    yield
    after = census.take()
    changed = census.diff(before, after)
    if changed:
        pytest.fail(f"the test left the kernel changed:\n{changed}", pytrace=False)


# nbval's cells are not pytest functions, so fixtures do not apply: use the run hooks.
def pytest_runtest_setup(item):
    if _is_notebook(item):
        key = str(item.fspath)
        if key not in _notebook_census:
            _notebook_census[key] = census.take()


def pytest_runtest_teardown(item, nextitem):
    if not _is_notebook(item):
        return
    key = str(item.fspath)
    if nextitem is not None and str(nextitem.fspath) == key:
        return
    before = _notebook_census.pop(key, None)
    if before is None:
        return
    changed = census.diff(before, census.take())
    if changed:
        pytest.fail(f"{os.path.basename(key)} left the kernel changed:\n{changed}", pytrace=False)


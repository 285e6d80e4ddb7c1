"""Chapter 06's exercise checks, each with right and wrong answers, on the real kernel: the check
mounts the learner's layer over the exercise's lower folder."""
from __future__ import annotations

import os
import stat

import pytest

import capabilities
from labhelper import cleanup, overlay
from labhelper.exercises import ch06


@pytest.fixture
def ex1(uid):
    capabilities.need("overlay", "overlayfs is not available in this kernel")
    base = f"/var/lib/labhelper/test-ch06-{uid}"
    lower = ch06.prepare_q1(base, owner=f"systest-{uid}")
    yield base, lower
    cleanup.cleanup(owner=f"systest-{uid}")
    cleanup.cleanup(owner="ch06")           # the check's own overlay, were one left
    assert not os.path.exists(base)


def _check(upper, lower):
    return ch06.q1.checker(upper, lower)


def test_q1_a_whiteout_by_hand(ex1):
    base, lower = ex1
    upper = f"{base}/upper"
    before = {n: open(f"{lower}/etc/{n}").read() for n in os.listdir(f"{lower}/etc")}
    assert _check(upper, lower).ok is False                              # no folder yet
    os.makedirs(f"{upper}/etc")
    assert "still shows" in _check(upper, lower).message                 # nothing hides it
    with open(f"{upper}/etc/secret", "w") as fh:
        fh.write("")
    assert "replaces" in _check(upper, lower).message                    # a file replaces, it does not hide
    os.unlink(f"{upper}/etc/secret")
    fd = os.open(f"{upper}/etc", os.O_RDONLY | os.O_DIRECTORY)
    try:
        overlay.make_whiteout(fd, "keep")
        overlay.make_whiteout(fd, "secret")
    finally:
        os.close(fd)
    assert "etc/keep" in _check(upper, lower).message                     # hides too much
    os.unlink(f"{upper}/etc/keep")
    with open(f"{upper}/etc/extra", "w") as fh:
        fh.write("x")
    assert "adds" in _check(upper, lower).message
    os.unlink(f"{upper}/etc/extra")
    result = _check(upper, lower)
    assert result.ok is True, result.message
    assert stat.S_ISCHR(os.lstat(f"{upper}/etc/secret").st_mode)
    assert {n: open(f"{lower}/etc/{n}").read() for n in os.listdir(f"{lower}/etc")} == before
    for bad in (42, "/etc", f"{lower}/sub", lower):
        assert _check(bad, lower).ok is False
    assert not any(o.owner == "ch06" for o in cleanup.census())          # the check's overlay is gone

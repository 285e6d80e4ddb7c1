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


@pytest.fixture
def web(uid):
    capabilities.need("overlay", "overlayfs is not available in this kernel")
    from labhelper import images, mounts
    from labhelper.errors import RequirementError
    base = mounts.make_dir(f"/var/lib/labhelper/test-ch06-img-{uid}", owner=f"systest-{uid}")
    store = images.Store(f"{base}/store", owner=f"systest-{uid}")
    try:
        images.busybox_image(store, "busybox", epoch=1)
    except RequirementError as exc:
        cleanup.cleanup(owner=f"systest-{uid}")
        pytest.skip(f"[n/a] {exc.message}")
    images.build(store, "busybox", "web:1", run=["/bin/sh", "-c", "mkdir /www && echo a > /www/index.html"], epoch=1)
    images.build(store, "web:1", "web:2", run=["/bin/sh", "-c", "echo b >> /www/index.html"], epoch=1)
    yield store
    cleanup.cleanup(owner=f"systest-{uid}")
    assert not os.path.exists(base)


def test_q2_the_layer_that_introduced_a_file(web):
    from labhelper import images
    layers = images.image(web, "web:2").layers
    assert ch06.q2.check(layers[1].diff_id, web).ok is True                          # web:1's step made it
    assert "later" in ch06.q2.check(layers[2].diff_id, web).message                 # only modifies it
    assert "earlier" in ch06.q2.check(layers[0].diff_id, web).message               # busybox has none
    assert "not one of" in ch06.q2.check("sha256:" + "0" * 64, web).message
    assert ch06.q2.check("index.html", web).ok is False and ch06.q2.check(layers[1].diff_id).ok is False


def test_q3_a_layer_that_deletes_a_file(web):
    from labhelper import images
    assert "no image named 'slim'" in ch06.q3.check(web).message
    images.build(web, "busybox", "slim", run=["/bin/sh", "-c", "rm /bin/vi && touch /extra"], epoch=1)
    assert "also has" in ch06.q3.check(web).message                                  # deletes and adds
    images.rmi(web, "slim")
    images.build(web, "web:1", "slim", run=["/bin/rm", "/bin/vi"], epoch=1)
    assert "busybox plus one layer" in ch06.q3.check(web).message                    # on the wrong base
    images.rmi(web, "slim")
    images.build(web, "busybox", "slim", run=["/bin/rm", "/bin/ls"], epoch=1)
    assert "does not delete /bin/vi" in ch06.q3.check(web).message
    images.rmi(web, "slim")
    images.build(web, "busybox", "slim", run=["/bin/rm", "/bin/vi"], epoch=1)
    result = ch06.q3.check(web)
    assert result.ok is True, result.message
    assert ch06.q3.check().ok is False

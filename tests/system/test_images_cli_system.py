"""`labhelper images ...`: the chapter 06 store from the command line, with Docker's verbs, and
clear errors (exit 2) for what is not there."""
from __future__ import annotations

import os

import pytest

from labhelper import cleanup, images, mounts
from labhelper.errors import RequirementError
from systest import labhelper_cli

pytestmark = pytest.mark.images


@pytest.fixture
def store(uid):
    path = mounts.make_dir(f"/var/lib/labhelper/test-cli-{uid}", owner=f"systest-{uid}")
    st = images.Store(f"{path}/store", owner=f"systest-{uid}")
    try:
        images.busybox_image(st, "busybox", epoch=1)
    except RequirementError as exc:  # no busybox-static
        cleanup.cleanup(owner=f"systest-{uid}")
        pytest.skip(f"[n/a] {exc.message}")
    images.build(st, "busybox", "web:1", run=["/bin/sh", "-c", "echo hi > /hello && rm /etc/group"], epoch=1)
    yield st, path
    cleanup.cleanup(owner=f"systest-{uid}")
    assert not os.path.exists(path)


def test_ls_tree_diff_history_export_import_rm_gc(store):
    st, path = store
    run = lambda *a: labhelper_cli("images", "--store", st.root, *a)  # noqa: E731
    r = run("ls")
    assert r.returncode == 0 and r.stdout.split("\n")[0].split() == ["NAME", "LAYERS", "SIZE", "MANIFEST"]
    assert [line.split()[:2] for line in r.stdout.splitlines()[1:]] == [["busybox", "1"], ["web:1", "2"]]
    r = run("tree")
    assert r.returncode == 0 and "Tags: busybox (shared by 2 images)" in r.stdout and "Tags: web:1" in r.stdout
    assert run("diff", "web:1").stdout.splitlines() == ["C /etc", "D /etc/group", "A /hello"]
    lines = run("history", "web:1").stdout.splitlines()
    assert len(lines) == 2 and lines[0].endswith("/bin/sh -c echo hi > /hello && rm /etc/group")
    r = run("export", "web:1", f"{path}/export")
    assert r.returncode == 0 and "[4/4]" in r.stderr                      # the progress, on stderr
    assert sorted(os.listdir(f"{path}/export")) == ["blobs", "index.json", "oci-layout"]
    r = run("import", f"{path}/export", "web:1", "--name", "copy:1")
    assert r.returncode == 0 and "imported copy:1: 2 layers" in r.stdout and "[2/2]" in r.stderr
    r = run("rm", "web:1")
    assert r.returncode == 0 and "Untagged: web:1" in r.stdout
    assert images.image(st, "copy:1").layers == images.image(st, "busybox").layers + images.image(st, "copy:1").layers[1:]
    r = run("rm", "copy:1")
    assert r.returncode == 0 and "deleted 3 blobs and 1 layer folders" in r.stdout   # its own; busybox's stay
    assert run("gc").returncode == 0 and [i.name for i in images.images(st)] == ["busybox"]


def test_what_is_not_there_is_a_clear_error(store):
    st, path = store
    r = labhelper_cli("images", "--store", st.root, "diff", "missing")
    assert r.returncode == 2 and "no image named 'missing'" in r.stderr and "there are: busybox, web:1" in r.stderr
    r = labhelper_cli("images", "--store", f"{path}/nothing", "ls")
    assert r.returncode == 0 and "no image store yet" in r.stdout and not os.path.exists(f"{path}/nothing")
    r = labhelper_cli("images", "--store", f"{path}/nothing", "history", "x")
    assert r.returncode == 2 and "there is no image store" in r.stderr
    r = labhelper_cli("images", "--store", st.root, "export", "web:1", "/tmp/outside")
    assert r.returncode == 2 and "only below" in r.stderr and not os.path.exists("/tmp/outside")

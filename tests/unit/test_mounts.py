"""mounts.py without root: refusals happen before any system call (B3, B4), bytes in paths (B7)."""
import os

import pytest

from labhelper import mounts, registry
from labhelper.errors import LabError, NotDisposableError

from fake import V2_MOUNTINFO, proc_tree


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """Record mount/umount2 calls instead of making them; a tmp ledger; a disposable machine."""
    made = []
    monkeypatch.setattr(mounts.syscalls, "mount", lambda *a, **k: made.append(("mount", a)))
    monkeypatch.setattr(mounts.syscalls, "umount2", lambda *a, **k: made.append(("umount2", a)))
    monkeypatch.setenv("LABHELPER_LEDGER", str(tmp_path / "ledger"))
    monkeypatch.setenv("LABHELPER_DISPOSABLE", "1")
    return made


@pytest.mark.parametrize("target", ["/", "/proc", "/run", "/run/labhelper/../../etc", "/var/lib/labhelperx"])
def test_unmount_refuses_outside_lab_folders(calls, target):
    # B4: unmount("/") would detach every mount of the host, deepest first.
    with pytest.raises(ValueError, match="labhelper unmounts only"):
        mounts.unmount(target, record=False)
    assert calls == []


def test_unmount_runs_the_safety_guard(calls, monkeypatch):
    def refuse(action, *a, **k):
        raise NotDisposableError(f"refused to {action}")
    monkeypatch.setattr(mounts.host, "guard", refuse)
    with pytest.raises(NotDisposableError, match="refused to unmount"):
        mounts.unmount("/run/labhelper/x", record=False)
    assert calls == []


@pytest.fixture
def lab(monkeypatch, tmp_path):
    """A fake lab folder in tmp, with a symlink to a folder outside it."""
    lab, outside = tmp_path / "lab", tmp_path / "outside"
    (outside / "target").mkdir(parents=True)
    lab.mkdir()
    os.symlink(outside, lab / "dirlink")
    os.symlink(outside / "target", lab / "link")
    monkeypatch.setattr(mounts, "LAB_DIRS", (str(lab),))
    return lab


@pytest.mark.parametrize("rel", ["link", "dirlink/target", "dirlink/new/m"])
def test_mount_tmpfs_refuses_a_symlinked_target(calls, lab, rel):
    # B3: the mount must not land on the symlink's target outside the lab folders, and a
    # refusal is a clear LabError (not StopIteration), with nothing recorded or created.
    with pytest.raises(LabError, match="symlink"):
        mounts.mount_tmpfs(str(lab / rel))
    assert calls == []
    assert registry.ledger().records() == []
    assert sorted(os.listdir(lab.parent / "outside")) == ["target"]
    assert os.listdir(lab.parent / "outside" / "target") == []


def test_open_lab_dir_walks_without_following(lab):
    fd = mounts.open_lab_dir(str(lab / "a" / "b"), create=True)
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(lab / "a" / "b"))
    finally:
        os.close(fd)
    with pytest.raises(FileNotFoundError):
        mounts.open_lab_dir(str(lab / "missing" / "x"))
    with pytest.raises(LabError, match="is a symlink"):
        mounts.open_lab_dir(str(lab / "dirlink" / "target"))
    with pytest.raises(LabError, match="only below"):
        mounts.open_lab_dir(str(lab.parent / "outside"))


def test_mounts_reads_paths_that_are_not_utf8(tmp_path):
    # B7: any mount on the host may have such a name; reading mountinfo must not fail.
    proc = proc_tree(tmp_path, V2_MOUNTINFO)
    with open(proc / "self" / "mountinfo", "ab") as fh:
        fh.write(b"96 22 0:60 / /mnt/caf\xe9\\040x rw - tmpfs tmpfs rw\n")
    points = [m.mountpoint for m in mounts.mounts(proc)]
    assert os.fsdecode(b"/mnt/caf\xe9 x") in points

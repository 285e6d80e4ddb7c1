"""labhelper.mounts against the real kernel: tmpfs mounts recorded and removed, never through a
symlink or across a bind mount (B1, B3, B5; R1 for the mount step, R5).

The risky ones run in a "scratch" mount namespace (conftest.in_scratch): whatever a bug there
mounts or records vanishes with the child.
"""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from labhelper import cleanup, marks, mounts, procfs, registry, syscalls
from labhelper.errors import LabError
from labhelper.flags import MountFlags

from systest import in_scratch, labhelper_cli, tree_digest


def test_tmpfs_is_recorded_then_cleaned(uid):
    target = f"/run/labhelper/test-{uid}/m"
    m = mounts.mount_tmpfs(target)
    assert m.fstype == "tmpfs" and registry.ledger().find("mount", target)
    assert ("mount", target) in cleanup.census().names()
    result = cleanup.cleanup()
    assert result.ok and any(a.obj.name == target for a in result.actions)
    assert ("mount", target) not in cleanup.census().names() and not registry.ledger().find("mount", target)
    shutil.rmtree(f"/run/labhelper/test-{uid}", ignore_errors=True)


def test_mount_outside_lab_folders_refused(tmp_path):
    with pytest.raises(ValueError, match="only below"):
        mounts.mount_tmpfs(str(tmp_path))


def test_remove_tree_stops_at_a_mount_it_was_not_told_about(uid, host_folder):
    # Even called directly, with a bind mount still in place, remove_tree refuses to cross it.
    digest = tree_digest(host_folder)
    root = Path(f"/var/lib/labhelper/test-{uid}")
    (root / "rootfs/mnt").mkdir(parents=True)
    from labhelper import syscalls
    syscalls.mount(str(host_folder), root / "rootfs/mnt", None, MountFlags.MS_BIND)
    try:
        with pytest.raises(Exception, match="another filesystem is mounted there"):
            mounts.remove_tree(str(root))
        assert tree_digest(host_folder) == digest
    finally:
        mounts.unmount(str(root / "rootfs/mnt"), record=False)
        mounts.remove_tree(str(root))


def test_creator_killed_right_after_mounting_then_cleanup(uid):
    # R1 for the mount step: the creator is SIGKILLed (with its whole process group) right
    # after it mounted and recorded; cleanup then leaves nothing.
    target = f"/run/labhelper/test-{uid}/m"
    code = f"from labhelper import mounts; mounts.mount_tmpfs({target!r}); print('not reached')"
    p = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, LABHELPER_FAULT="mount:sigkill"),
                       capture_output=True, text=True, start_new_session=True, timeout=60)
    assert p.returncode == -signal.SIGKILL and "not reached" not in p.stdout
    assert ("mount", target) in cleanup.census().names()
    r = labhelper_cli("cleanup")
    assert r.returncode == 0 and r.stderr == ""
    assert ("mount", target) not in cleanup.census().names()
    shutil.rmtree(f"/run/labhelper/test-{uid}", ignore_errors=True)


def _remove_a_bind_mount_at_the_top(host_folder):
    top = "/var/lib/labhelper/c1/rootfs/mnt"
    os.makedirs(top)
    syscalls.mount(host_folder, top, None, MountFlags.MS_BIND)
    try:
        mounts.remove_tree(top)
    except LabError as exc:
        return str(exc)
    return "removed"


def test_remove_tree_refuses_a_bind_mount_at_its_top(host_folder):
    # B1: the folder to remove is itself a bind mount of a host folder.
    before = tree_digest(host_folder)
    assert "it is a mount point" in in_scratch(_remove_a_bind_mount_at_the_top, str(host_folder))
    assert tree_digest(host_folder) == before


def _mount_through_symlinks(outside):
    os.symlink(outside, "/run/labhelper/dirlink")
    os.symlink(os.path.join(outside, "target"), "/run/labhelper/link")
    errors = []
    for target in ("/run/labhelper/dirlink/m", "/run/labhelper/link"):
        try:
            mounts.mount_tmpfs(target)
            errors.append(f"mounted {target}")
        except LabError as exc:
            errors.append(str(exc))
    landed = [m.mountpoint for m in procfs.mountinfo() if marks.is_under(m.mountpoint, outside)]
    return errors, landed, [r.name for r in registry.ledger().records()]


def test_mount_tmpfs_refuses_symlinked_paths(tmp_path):
    # B3: the tmpfs must not land on a symlink's target outside the lab folders.
    (tmp_path / "outside" / "target").mkdir(parents=True)
    errors, landed, recorded = in_scratch(_mount_through_symlinks, str(tmp_path / "outside"))
    assert all("symlink" in e for e in errors), errors
    assert landed == [] and recorded == []
    assert os.listdir(tmp_path / "outside") == ["target"]


def _mount_and_unmount():
    m = mounts.mount_tmpfs("/run/labhelper/a/b", owner="systest")
    recorded = registry.ledger().find("mount", "/run/labhelper/a/b") is not None
    unmounted = mounts.unmount("/run/labhelper/a/b")
    return (m.fstype, m.mountpoint, recorded, unmounted, registry.ledger().records(),
            any(x.mountpoint == "/run/labhelper/a/b" for x in procfs.mountinfo()))


def test_mount_tmpfs_and_unmount(tmp_path):
    fstype, point, recorded, unmounted, left, still = in_scratch(_mount_and_unmount)
    assert (fstype, point, recorded, unmounted, left, still) == ("tmpfs", "/run/labhelper/a/b", True, True, [], False)


def _overlay_outside(point, lower):
    for d in ("/var/lib/labhelper/ov/upper", "/var/lib/labhelper/ov/work"):
        os.makedirs(d)
    syscalls.mount("overlay", point, "overlay", 0, f"lowerdir={lower},upperdir=/var/lib/labhelper/ov/upper,"
                                                   "workdir=/var/lib/labhelper/ov/work")
    registry.ledger().add("mount", point, owner="systest")
    result = cleanup.cleanup(owner="systest")
    return result.ok, result.failures, any(m.mountpoint == point for m in procfs.mountinfo()), os.path.isdir(point)


def test_unmounting_an_overlay_outside_the_lab_keeps_its_folder(tmp_path):
    # B5: the overlay writes into our folder, so it is ours to unmount; its mount point is not ours.
    point, lower = tmp_path / "srv", tmp_path / "lower"
    point.mkdir()
    lower.mkdir()
    ok, failures, mounted, folder = in_scratch(_overlay_outside, str(point), str(lower))
    assert ok, failures
    assert not mounted and folder


@pytest.mark.parametrize("step", ["mount-recorded", "mount"])
def test_a_kill_at_any_step_is_cleaned_by_the_owner_s_own_cleanup(uid, step):
    # Issue 10: a kill between mount(2) and the ledger write used to leave a mount without a
    # record, which `lab.start()` and `cleanup --owner` never removed. The record now comes
    # first: a kill right after it (no mount yet) or right after the mount leaves a record of
    # the owner's, and the owner's own cleanup removes everything.
    target = f"/run/labhelper/test-{uid}/m"
    code = f"from labhelper import mounts; mounts.mount_tmpfs({target!r}, owner='sys-{uid}'); print('not reached')"
    p = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, LABHELPER_FAULT=f"{step}:sigkill"),
                       capture_output=True, text=True, start_new_session=True, timeout=60)
    assert p.returncode == -signal.SIGKILL and "not reached" not in p.stdout
    assert registry.ledger().find("mount", target) is not None
    r = labhelper_cli("cleanup", "--owner", f"sys-{uid}")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert not any(o.name.startswith(f"/run/labhelper/test-{uid}") for o in cleanup.census())
    assert not os.path.exists(f"/run/labhelper/test-{uid}")            # nor the folders it made


def _cover_the_ledger():
    # A foreign tmpfs mounted over the ledger folder would hide the records below it.
    led = registry.ledger()
    mounts.mount_tmpfs("/run/labhelper/kept", owner="systest")
    os.makedirs(led.root, exist_ok=True)
    syscalls.mount("intruder", str(led.root), "tmpfs", 0, "size=64k")
    try:
        led.add("dir", "/run/labhelper/x", owner="systest")
        wrote = "wrote a record"
    except Exception as exc:  # noqa: BLE001 - the test reports what happened
        wrote = f"{type(exc).__name__}: {exc}"
    census_problems = cleanup.census().problems
    syscalls.umount2(str(led.root), 0)
    return wrote, census_problems, [r.name for r in registry.ledger().records()]


def test_a_mount_over_the_ledger_is_refused_and_reported(tmp_path):
    wrote, problems, records = in_scratch(_cover_the_ledger)
    assert wrote.startswith("LedgerError") and "covered by another mount" in wrote
    assert any("covered by another mount" in p for p in problems)
    assert records == ["/run/labhelper/kept"]                           # the hidden record is intact

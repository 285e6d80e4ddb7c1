"""Cleanup's safety against the real kernel (review findings B1, B3, B5, B8, B12, B14).

The risky ones run in a forked child with its own mount namespace and a fresh tmpfs over each
lab folder (a "scratch" namespace): whatever a bug there mounts or records vanishes with the
child, and nothing of the host's /run/labhelper or /var/lib/labhelper is touched.
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labhelper import cleanup, host, mounts, process, registry, syscalls
from labhelper.errors import LabError

from conftest import tree_digest
from labhelper.flags import CLONE_NEWNS, MountFlags
from labhelper.teach import lab



def _scratch(fn, *args):
    # No propagation back to the host, then our own empty lab folders (and ledger).
    syscalls.mount(None, "/", None, MountFlags.MS_REC | MountFlags.MS_PRIVATE)
    for d in mounts.LAB_DIRS:
        os.makedirs(d, exist_ok=True)
        syscalls.mount("lh-scratch", d, "tmpfs", 0, "size=16m")
    return fn(*args)


def in_scratch(fn, *args):
    return process.run_in_child(_scratch, fn, *args, unshare=CLONE_NEWNS, timeout=60)


def _remove_a_bind_mount_at_the_top(host_folder):
    top = "/var/lib/labhelper/c1/rootfs/mnt"
    os.makedirs(top)
    syscalls.mount(host_folder, top, None, MountFlags.MS_BIND)
    try:
        cleanup.remove_tree(top)
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
    landed = [m.mountpoint for m in mounts.mounts() if mounts.is_under(m.mountpoint, outside)]
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
            any(x.mountpoint == "/run/labhelper/a/b" for x in mounts.mounts()))


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
    return result.ok, result.failures, any(m.mountpoint == point for m in mounts.mounts()), os.path.isdir(point)


def test_unmounting_an_overlay_outside_the_lab_keeps_its_folder(tmp_path):
    # B5: the overlay writes into our folder, so it is ours to unmount; its mount point is not ours.
    point, lower = tmp_path / "srv", tmp_path / "lower"
    point.mkdir()
    lower.mkdir()
    ok, failures, mounted, folder = in_scratch(_overlay_outside, str(point), str(lower))
    assert ok, failures
    assert not mounted and folder


def _two_kernels_of_one_chapter():
    # Another kernel of chapter 08, alive, holding a folder; and one made by this kernel.
    theirs, mine = "/var/lib/labhelper/ch08-theirs", "/var/lib/labhelper/ch08-mine"
    code = (f"import os, time\nfrom labhelper import registry\nos.makedirs({theirs!r})\n"
            f"registry.ledger().add('dir', {theirs!r}, owner='ch08')\nprint('ready', flush=True)\ntime.sleep(60)\n")
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "ready\n"
        os.makedirs(mine)
        registry.ledger().add("dir", mine, owner="ch08")
        lab.start("08")
        after_first = (os.path.isdir(theirs), os.path.isdir(mine))
    finally:
        other.kill()
        other.wait()
        other.stdout.close()
    lab.start("08")  # now the other kernel is gone: its folder is an orphan
    return after_first, os.path.isdir(theirs), registry.ledger().records()


def test_lab_start_spares_a_live_kernel_of_the_same_chapter():
    # B14: the notebook open twice must not lose the other kernel's objects.
    after_first, theirs_after_death, left = in_scratch(_two_kernels_of_one_chapter)
    assert after_first == (True, False)
    assert not theirs_after_death and left == []


def test_cleanup_kills_what_is_left_in_an_orphaned_cgroup(uid):
    # B12: after a kernel restart, a grandchild (no PDEATHSIG) stays in the kernel's cgroup. It
    # has no record of its own: the cgroup's record gives it its owner and makes it an orphan.
    hier = next((h for h in host.facts().cgroup.hierarchies if h.controllers
                 and Path(h.mountpoint, "cgroup.procs").exists()), None)
    if hier is None:
        pytest.skip("no cgroup hierarchy with cgroup.procs is mounted")
    parent = Path(hier.mountpoint, cleanup.CGROUP_PARENT)
    made_parent = not parent.exists()
    cg = parent / f"lh-c{uid}"
    cg.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    owner = f"systest-{uid}"
    try:
        (cg / "cgroup.procs").write_text(str(sleeper.pid))
        registry.ledger().add("cgroup", str(cg), owner=owner, pid=2 ** 22 + 7)  # a creator that is gone
        found = next(o for o in cleanup.census() if o.kind == "process" and o.name == str(sleeper.pid))
        assert found.owner == owner and str(cg) in found.detail
        result = cleanup.cleanup(owner=owner)
        assert result.ok, result.failures
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
        assert not cg.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        registry.ledger().remove("cgroup", str(cg))
        for path in [cg] + ([parent] if made_parent else []):
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


def test_census_as_non_root_explains_the_ledger():
    # B8: the ledger folder is root's (0700); a learner's `labhelper census` still works.
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    led = registry.ledger()
    led.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    if led.root.stat().st_mode & 0o077:
        pytest.skip(f"the ledger folder {led.root} is readable by others here")
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    probe = subprocess.run(nobody + ["-c", "import labhelper"], capture_output=True, text=True, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"the venv is not readable by nobody here: {probe.stderr.strip()[-200:]}")
    p = subprocess.run(nobody + ["-m", "labhelper", "census"], capture_output=True, text=True, cwd="/", timeout=60)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "readable by root only" in p.stderr and "sudo labhelper" in p.stderr

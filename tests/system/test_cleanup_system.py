"""Cleanup against the real kernel: one object of every kind removed, foreign objects untouched,
nothing deleted through a bind mount or a symlink (R2, R5, R6; B12)."""
import os
import signal
import subprocess
import time
from pathlib import Path

import capabilities
import pytest

from labhelper import cleanup, host, marks, procfs, registry
from labhelper.flags import MountFlags

from systest import labhelper_cli, sh, tree_digest


@pytest.mark.cgroups
def test_cleanup_removes_one_object_of_every_kind(uid):
    sh(f"ip netns add lh-ns{uid} && ip link add lh-va{uid} type veth peer name lh-vb{uid} "
       f"&& ip link add lh-br{uid} type bridge")
    made = []
    from labhelper import host
    for hier in host.facts().cgroup.hierarchies:
        path = Path(hier.mountpoint, "labhelper", f"lh-c{uid}")
        try:
            path.mkdir(parents=True, exist_ok=True)
            made.append(path)
        except OSError:
            pass  # a read-only or unusable hierarchy: skip it
    assert made, "no cgroup hierarchy accepted a cgroup"
    sleeper = subprocess.Popen(["sleep", "60"])
    with_procs = next((p for p in made if (p / "cgroup.procs").exists()), None)
    (with_procs / "cgroup.procs").write_text(str(sleeper.pid))
    registry.ledger().add("netns", f"lh-ns{uid}", owner="systest")
    c = cleanup.census()
    names = c.names()
    assert {("netns", f"lh-ns{uid}"), ("link", f"lh-va{uid}"), ("link", f"lh-br{uid}"),
            ("process", str(sleeper.pid))} <= names
    assert all(("cgroup", str(p)) in names for p in made)
    result = cleanup.cleanup()
    assert result.ok, result.failures
    assert sleeper.wait(timeout=10) == -signal.SIGKILL
    assert not cleanup.census(), cleanup.census().table()


def test_cleanup_never_deletes_through_a_bind_mount(uid, host_folder):
    # R5: a host folder bind-mounted inside a container's rootfs survives cleanup byte-identical.
    digest = tree_digest(host_folder)
    root = Path(f"/var/lib/labhelper/test-{uid}")
    (root / "rootfs/mnt").mkdir(parents=True)
    registry.ledger().add("dir", str(root), owner="systest")
    from labhelper import syscalls
    syscalls.mount(str(host_folder), root / "rootfs/mnt", None, MountFlags.MS_BIND)
    result = cleanup.cleanup()
    assert result.ok, result.failures
    assert not root.exists()
    assert tree_digest(host_folder) == digest


def test_cleanup_of_a_rootfs_replaced_by_a_symlink(uid, host_folder):
    digest = tree_digest(host_folder)
    root = Path(f"/var/lib/labhelper/test-{uid}")
    root.mkdir(parents=True)
    os.symlink(host_folder, root / "rootfs")
    registry.ledger().add("dir", str(root / "rootfs"), owner="systest")
    registry.ledger().add("dir", str(root), owner="systest")
    assert cleanup.cleanup().ok
    assert not root.exists() and tree_digest(host_folder) == digest


@pytest.mark.cgroups
def test_foreign_objects_survive_cleanup(uid, tmp_path):
    # R6: a netns, a bridge, a cgroup, a mount and a process that are not ours all survive.
    from labhelper import host
    sh(f"ip netns add fx-ns{uid} && ip link add fx-br{uid} type bridge")
    hier = next(h for h in host.facts().cgroup.hierarchies if h.controllers and Path(h.mountpoint, "cgroup.procs").exists())
    foreign_cg = Path(hier.mountpoint, f"fx-cg{uid}")
    foreign_cg.mkdir()
    mnt = tmp_path / "fx-mnt"
    mnt.mkdir()
    sh(f"mount -t tmpfs fx {mnt}")
    sleeper = subprocess.Popen(["sleep", "60"])
    (foreign_cg / "cgroup.procs").write_text(str(sleeper.pid))
    sh(f"ip netns add lh-ns{uid}")  # and one of ours, so cleanup has work to do
    try:
        result = cleanup.cleanup()
        assert result.ok and [a.obj.name for a in result.actions] == [f"lh-ns{uid}"]
        assert os.path.exists(f"/run/netns/fx-ns{uid}") and os.path.exists(f"/sys/class/net/fx-br{uid}")
        assert foreign_cg.is_dir() and sleeper.poll() is None
        assert any(m.mountpoint == str(mnt) for m in procfs.mountinfo())
    finally:
        sleeper.kill()
        sleeper.wait()
        sh(f"umount {mnt}; ip netns del fx-ns{uid}; ip link del fx-br{uid}", check=False)
        for _ in range(50):
            try:
                foreign_cg.rmdir()
                break
            except OSError:
                time.sleep(0.05)


def test_ledger_naming_objects_that_are_gone(uid):
    led = registry.ledger()
    led.add("netns", f"lh-gone{uid}", owner="systest")
    led.add("mount", f"/run/labhelper/gone{uid}", owner="systest")
    p = labhelper_cli("cleanup")
    assert p.returncode == 0 and p.stderr == "" and "forget" in p.stdout
    assert not led.find("netns", f"lh-gone{uid}")


def test_corrupt_ledger_file_is_set_aside_and_reported(uid):
    led = registry.ledger()
    led.root.mkdir(parents=True, exist_ok=True)
    bad = led.root / f"netns.{uid}.json"
    bad.write_text("{half a record")
    quarantine = led.root / "quarantine"
    existed = quarantine.is_dir()
    before = set(quarantine.iterdir()) if existed else set()
    p = labhelper_cli("cleanup")
    moved = [q for q in (set(quarantine.iterdir()) - before) if q.name.startswith(bad.name)]
    try:
        assert p.returncode == 0 and "not a ledger record" in p.stderr and "sets it aside" in p.stderr
        assert not bad.exists() and len(moved) == 1
        assert moved[0].read_text() == "{half a record"        # nothing lost: set aside, not deleted
        assert labhelper_cli("cleanup").stderr == ""           # and it no longer stops anything
    finally:
        for q in moved:
            q.unlink()
        if not existed and quarantine.is_dir() and not any(quarantine.iterdir()):
            quarantine.rmdir()                                  # the test made it: leave none


@pytest.mark.cgroups
def test_cleanup_kills_what_is_left_in_an_orphaned_cgroup(uid):
    # B12: after a kernel restart, a grandchild (no PDEATHSIG) stays in the kernel's cgroup. It
    # has no record of its own: the cgroup's record gives it its owner and makes it an orphan.
    hier = next((h for h in host.facts().cgroup.hierarchies if h.controllers
                 and Path(h.mountpoint, "cgroup.procs").exists()), None)
    if hier is None:
        capabilities.need("cgroups")
        pytest.fail("capabilities finds a cgroup hierarchy with cgroup.procs, host.facts() none")
    parent = Path(hier.mountpoint, marks.CGROUP_PARENT)
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

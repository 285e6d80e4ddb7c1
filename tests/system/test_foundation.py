"""The foundation against the real kernel: isolation in a child, the ledger, cleanup (R1, R2, R5-R7)."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from labhelper import cleanup, mounts, process, registry
from labhelper.flags import CLONE_NEWNS, CLONE_NEWUTS, MountFlags

from conftest import labhelper_cli, sh, tree_digest


def _hostname_in_new_uts():
    socket.sethostname("lh-inside")
    return socket.gethostname()


def test_unshare_uts_in_child_leaves_host_alone():
    before = socket.gethostname()
    assert process.run_in_child(_hostname_in_new_uts, unshare=CLONE_NEWUTS) == "lh-inside"
    assert socket.gethostname() == before


def _private_mount(target):
    from labhelper import syscalls
    syscalls.mount(None, "/", None, MountFlags.MS_REC | MountFlags.MS_PRIVATE)  # no propagation back
    syscalls.mount("lh", target, "tmpfs", 0, "size=1m")
    Path(target, "inside").write_text("x")
    return sorted(os.listdir(target))


def test_mount_in_new_mount_namespace_is_invisible_outside(tmp_path):
    assert process.run_in_child(_private_mount, str(tmp_path), unshare=CLONE_NEWNS) == ["inside"]
    assert os.listdir(tmp_path) == []
    assert not any(m.mountpoint == str(tmp_path) for m in mounts.mounts())


def _mount_without_privilege():
    from labhelper import syscalls
    os.setuid(65534)
    syscalls.mount("lh", "/tmp", "tmpfs")


def test_failed_syscall_in_child_names_call_and_errno():
    with pytest.raises(OSError) as info:
        process.run_in_child(_mount_without_privilege)
    text = str(info.value)
    assert text.startswith("mount(source='lh', target='/tmp', fstype='tmpfs'") and "EPERM" in text and "hint" in text


def test_child_dies_when_parent_is_killed(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = textwrap.dedent(f"""
        import os, time
        from labhelper import process
        def sleeper():
            open({str(pidfile)!r}, "w").write(str(os.getpid()))
            time.sleep(60)
        process.run_in_child(sleeper, timeout=None)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script])
    for _ in range(200):
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.05)
    child = int(pidfile.read_text())
    parent.send_signal(signal.SIGKILL)  # what a Jupyter restart does to the kernel
    parent.wait()
    for _ in range(100):
        if not Path(f"/proc/{child}").exists():
            break
        time.sleep(0.02)
    assert not Path(f"/proc/{child}").exists(), "the child outlived its parent"


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
    with pytest.raises(ValueError, match="labhelper mounts only there"):
        mounts.mount_tmpfs(str(tmp_path))


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


def test_cli_cleanup_is_idempotent_and_quiet(uid):
    # R2: on a pristine machine, and twice in a row after real objects, exit 0, nothing on stderr.
    for _ in range(2):
        p = labhelper_cli("cleanup")
        assert p.returncode == 0 and p.stderr == "", p.stderr
    sh(f"ip netns add lh-ns{uid}")
    p = labhelper_cli("cleanup")
    assert p.returncode == 0 and p.stderr == "" and f"lh-ns{uid}" in p.stdout
    p = labhelper_cli("cleanup")
    assert p.returncode == 0 and p.stderr == "" and "nothing to clean up" in p.stdout


def test_cli_cleanup_dry_run_changes_nothing(uid):
    sh(f"ip netns add lh-ns{uid}")
    try:
        p = labhelper_cli("cleanup", "--dry-run")
        assert p.returncode == 0 and "would do" in p.stdout and f"lh-ns{uid}" in p.stdout
        assert os.path.exists(f"/run/netns/lh-ns{uid}")
    finally:
        labhelper_cli("cleanup")


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


def test_remove_tree_stops_at_a_mount_it_was_not_told_about(uid, host_folder):
    # Even called directly, with a bind mount still in place, remove_tree refuses to cross it.
    digest = tree_digest(host_folder)
    root = Path(f"/var/lib/labhelper/test-{uid}")
    (root / "rootfs/mnt").mkdir(parents=True)
    from labhelper import syscalls
    syscalls.mount(str(host_folder), root / "rootfs/mnt", None, MountFlags.MS_BIND)
    try:
        with pytest.raises(Exception, match="another filesystem is mounted there"):
            cleanup.remove_tree(str(root))
        assert tree_digest(host_folder) == digest
    finally:
        mounts.unmount(str(root / "rootfs/mnt"), record=False)
        cleanup.remove_tree(str(root))


def test_cleanup_of_a_rootfs_replaced_by_a_symlink(uid, host_folder):
    digest = tree_digest(host_folder)
    root = Path(f"/var/lib/labhelper/test-{uid}")
    root.mkdir(parents=True)
    os.symlink(host_folder, root / "rootfs")
    registry.ledger().add("dir", str(root / "rootfs"), owner="systest")
    registry.ledger().add("dir", str(root), owner="systest")
    assert cleanup.cleanup().ok
    assert not root.exists() and tree_digest(host_folder) == digest


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
        assert any(m.mountpoint == str(mnt) for m in mounts.mounts())
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


def test_stale_record_never_signals_a_reused_pid():
    # R7: a ledger record names a process by pid; that pid now belongs to an unrelated process
    # (simulated by recording the wrong start time). cleanup must not signal it.
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        real_start = process.start_time(bystander.pid)
        led = registry.ledger()
        led.add("process", str(bystander.pid), owner="systest", data={"start": real_start - 1})
        c = cleanup.census()
        assert ("process", str(bystander.pid)) not in c.names()  # not ours: start time differs
        result = cleanup.cleanup()
        assert result.ok
        assert bystander.poll() is None, "an unrelated process was signalled"
        assert not led.find("process", str(bystander.pid))  # the stale record is forgotten
    finally:
        bystander.kill()
        bystander.wait()


def test_record_with_matching_start_time_is_killed():
    ours = subprocess.Popen(["sleep", "60"])
    registry.ledger().add("process", str(ours.pid), owner="systest", data={"start": process.start_time(ours.pid)})
    assert cleanup.cleanup().ok
    assert ours.wait(timeout=10) == -signal.SIGKILL


def test_ledger_naming_objects_that_are_gone(uid):
    led = registry.ledger()
    led.add("netns", f"lh-gone{uid}", owner="systest")
    led.add("mount", f"/run/labhelper/gone{uid}", owner="systest")
    p = labhelper_cli("cleanup")
    assert p.returncode == 0 and p.stderr == "" and "forget" in p.stdout
    assert not led.find("netns", f"lh-gone{uid}")


def test_corrupt_ledger_file_is_kept_and_reported(uid):
    led = registry.ledger()
    led.root.mkdir(parents=True, exist_ok=True)
    bad = led.root / f"netns.{uid}.json"
    bad.write_text("{half a record")
    try:
        p = labhelper_cli("cleanup")
        assert p.returncode == 0 and "unreadable ledger record" in p.stderr and "left in place" in p.stderr
        assert bad.read_text() == "{half a record"  # nothing lost
    finally:
        bad.unlink()


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


def test_doctor_as_non_root():
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                            "import labhelper"], capture_output=True, text=True, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"the venv is not readable by nobody here: {probe.stderr.strip()[-200:]}")
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                        "labhelper", "doctor"], capture_output=True, text=True, cwd="/", timeout=60)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "root" in p.stdout and "MISSING" in p.stdout

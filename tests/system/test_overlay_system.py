"""labhelper.overlay against the real kernel: copy-up, whiteouts, opaque folders, the EXDEV of a
directory rename, many layers through the new mount API, and the refusals (R19) and kills (R1,
R5) around it. Chapter 06."""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys

import pytest

import capabilities
from labhelper import cleanup, mounts, overlay, procfs, registry
from labhelper.errors import Refused, RequirementError


@pytest.fixture(autouse=True)
def _needs_overlay():
    capabilities.need("overlay", "overlayfs is not available in this kernel")


@pytest.fixture
def lab(uid):
    """A recorded lab folder with two lower folders in it: l1 (top) and l2."""
    base = mounts.make_dir(f"/var/lib/labhelper/test-ov-{uid}", owner=f"systest-{uid}")
    for path, text in (("l1/etc/motd", "hello from l1\n"), ("l2/etc/hosts", "127.0.0.1 localhost\n"),
                       ("l2/etc/motd", "hidden by l1\n"), ("l2/d/sub/f", "in a lower folder\n")):
        os.makedirs(os.path.dirname(f"{base}/{path}"), exist_ok=True)
        with open(f"{base}/{path}", "w") as fh:
            fh.write(text)
    yield base
    cleanup.cleanup(owner=f"systest-{uid}")
    assert not os.path.exists(base)


def _tree(folder: str) -> dict[str, tuple]:
    """Every file below ``folder``: its mode and its content's digest (what must not change)."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            digest = hashlib.sha256(open(path, "rb").read()).hexdigest() if stat.S_ISREG(st.st_mode) else None
            seen[os.path.relpath(path, folder)] = (st.st_mode, digest)
    return seen


@pytest.mark.parametrize("api", ["fsconfig", "mount(2)"])
def test_copy_up_whiteout_opaque_and_the_exdev_of_a_directory_rename(lab, api):
    if api == "fsconfig" and not overlay.new_api():
        pytest.skip("[n/a] this kernel's overlayfs has no lowerdir+ (Linux 6.8): only mount(2) here")
    lowers_before = _tree(f"{lab}/l1"), _tree(f"{lab}/l2")
    with overlay.mount(f"{lab}/merged", [f"{lab}/l1", f"{lab}/l2"], f"{lab}/upper", f"{lab}/work", api=api) as ov:
        assert ov.api == api and ov.lowers == (f"{lab}/l1", f"{lab}/l2")
        m = ov.target
        assert sorted(os.listdir(m)) == ["d", "etc"]
        assert open(f"{m}/etc/motd").read() == "hello from l1\n"            # the top-most layer wins
        assert os.listdir(ov.upper) == []                                    # nothing written yet
        # copy-up: the first write copies the file into upper; the lower one stays as it was
        with open(f"{m}/etc/hosts", "a") as fh:
            fh.write("10.0.0.1 web\n")
        assert open(f"{ov.upper}/etc/hosts").read() == "127.0.0.1 localhost\n10.0.0.1 web\n"
        # a whiteout: deleting a lower file leaves a character device 0/0 in upper
        os.unlink(f"{m}/etc/motd")
        assert not os.path.exists(f"{m}/etc/motd")
        assert overlay.is_whiteout(os.lstat(f"{ov.upper}/etc/motd"))
        # renaming a lower directory with redirect_dir=off: EXDEV (mv would copy, then delete)
        with pytest.raises(OSError) as exc:
            os.rename(f"{m}/d", f"{m}/e")
        assert exc.value.errno == errno.EXDEV
        # an opaque folder: removed and made again, it hides the lower one's files
        shutil.rmtree(f"{m}/d")
        os.mkdir(f"{m}/d")
        assert os.listdir(f"{m}/d") == [] and overlay.is_opaque(f"{ov.upper}/d")
        mounted = next(x for x in procfs.mountinfo() if x.mountpoint == m)
        assert mounted.fstype == "overlay" and mounted.upperdir == ov.upper
    assert (_tree(f"{lab}/l1"), _tree(f"{lab}/l2")) == lowers_before          # no lower file changed
    assert not any(x.mountpoint == m for x in procfs.mountinfo())
    assert overlay.changes(f"{lab}/upper", [f"{lab}/l1", f"{lab}/l2"]) == [
        overlay.Change("/d", "C"), overlay.Change("/etc", "C"), overlay.Change("/etc/hosts", "C"),
        overlay.Change("/etc/motd", "D")]
    assert not os.path.exists(f"{lab}/work/work") and registry.ledger().find("mount", m) is None


def test_changes_says_a_for_what_no_lower_folder_has(lab):
    with overlay.mount(f"{lab}/merged", [f"{lab}/l1", f"{lab}/l2"], f"{lab}/upper", f"{lab}/work") as ov:
        os.makedirs(f"{ov.target}/srv/www")
        with open(f"{ov.target}/srv/www/index.html", "w") as fh:
            fh.write("hi")
    assert overlay.changes(ov.upper, ov.lowers) == [
        overlay.Change("/srv", "A"), overlay.Change("/srv/www", "A"), overlay.Change("/srv/www/index.html", "A")]


def test_whiteouts_and_opaque_folders_made_by_hand_hide_what_is_below(lab):
    # What images do when they unpack a layer: the same marks the kernel makes.
    os.makedirs(f"{lab}/top/d")
    fd = os.open(f"{lab}/top", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.makedirs(f"{lab}/top/etc")
        efd = os.open(f"{lab}/top/etc", os.O_RDONLY | os.O_DIRECTORY)
        overlay.make_whiteout(efd, "motd")
        os.close(efd)
    finally:
        os.close(fd)
    overlay.make_opaque(f"{lab}/top/d")
    with overlay.mount(f"{lab}/merged", [f"{lab}/top", f"{lab}/l2"]) as ov:      # read-only: no upper
        assert ov.upper is None
        assert not os.path.exists(f"{ov.target}/etc/motd") and os.path.exists(f"{ov.target}/etc/hosts")
        assert os.listdir(f"{ov.target}/d") == []
        with pytest.raises(OSError) as exc:
            open(f"{ov.target}/new", "w")
        assert exc.value.errno == errno.EROFS
    with pytest.raises(Refused, match="one plain name"):
        overlay.make_whiteout(0, "../x")


def test_many_layers_through_the_new_mount_api_and_a_clear_error_from_mount2(lab):
    if not overlay.new_api():
        pytest.skip("[n/a] this kernel's overlayfs has no lowerdir+ (Linux 6.8)")
    lowers = []
    for i in range(100):
        path = f"{lab}/layers/{i:03d}-{'x' * 40}"
        os.makedirs(path)
        with open(f"{path}/file-{i}", "w") as fh:
            fh.write(str(i))
        lowers.append(path)
    before = cleanup.census().names()
    with pytest.raises(RequirementError, match="one page"):
        overlay.mount(f"{lab}/merged", lowers, f"{lab}/upper", f"{lab}/work", api="mount(2)")
    assert cleanup.census().names() == before and not os.path.exists(f"{lab}/merged")
    with overlay.mount(f"{lab}/merged", lowers, f"{lab}/upper", f"{lab}/work") as ov:
        assert ov.api == "fsconfig" and len(os.listdir(ov.target)) == 100
    with pytest.raises(Refused, match="at most 500"):
        overlay.mount(f"{lab}/merged", [lowers[0]] * 501)


def test_r19_host_folders_and_symlinks_to_them_are_refused_before_any_change(lab):
    os.symlink("/etc", f"{lab}/etc-link")
    before = cleanup.census().names()
    for lowers, upper in ((["/"], None), (["/etc"], None), (["/proc", f"{lab}/l1"], None),
                          (["/var/lib/labhelper"], None), ([f"{lab}/etc-link", f"{lab}/l1"], None),
                          ([f"{lab}/l1"], "/tmp/upper"), ([f"{lab}/l1"], f"{lab}/etc-link"),
                          ([f"{lab}/missing"], f"{lab}/upper"), ([f"{lab}/l1"], None),
                          ([f"{lab}/l1", f"{lab}/l1"], None), ([f"{lab}/l1"], f"{lab}/l1/up")):
        with pytest.raises(Exception) as exc:
            overlay.mount(f"{lab}/merged", lowers, upper, None if upper is None else f"{lab}/work")
        assert isinstance(exc.value, (Refused, RequirementError)) or "symlink" in str(exc.value), exc.value
    with pytest.raises(Refused):
        overlay.mount("/mnt/merged", [f"{lab}/l1", f"{lab}/l2"])
    assert cleanup.census().names() == before
    assert not os.path.exists(f"{lab}/merged") and not os.path.exists(f"{lab}/work")
    assert os.path.isfile("/etc/hostname")                      # the host, untouched


@pytest.mark.parametrize("step", ["overlay-recorded", "overlay"])
@pytest.mark.parametrize("how", ["sigkill", "raise"])
@pytest.mark.parametrize("folders", ["made", "there"])
def test_r1_a_kill_at_each_step_then_the_owners_cleanup_leaves_nothing(lab, uid, step, how, folders):
    # folders "made": the mount makes its folders, so its record goes to the ledger first;
    # "there": they exist (a container's root), and the record is the mount's own source.
    target = f"{lab}/merged"
    if folders == "there":
        for name in ("merged", "upper", "work"):
            os.mkdir(f"{lab}/{name}")
    code = (f"from labhelper import overlay; overlay.mount({target!r}, [{lab + '/l1'!r}, {lab + '/l2'!r}], "
            f"{lab + '/upper'!r}, {lab + '/work'!r}, owner='systest-{uid}-ov'); print('not reached')")
    p = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, LABHELPER_FAULT=f"{step}:{how}"),
                       capture_output=True, text=True, start_new_session=True, timeout=60)
    assert "not reached" not in p.stdout
    if how == "sigkill":
        assert p.returncode == -signal.SIGKILL
        on_mount = [m for m in procfs.mountinfo() if m.mountpoint == target]
        if folders == "made":
            assert registry.ledger().find("mount", target) is not None      # written before the mount
        elif step == "overlay":
            assert on_mount and on_mount[-1].source.startswith(f"labhelper:systest-{uid}-ov:")
        census = cleanup.census()
        assert (bool(on_mount) or folders == "made") == any(o.owner == f"systest-{uid}-ov" for o in census.objects)
        result = cleanup.cleanup(owner=f"systest-{uid}-ov")
        assert result.ok, result.failures
    else:
        assert p.returncode == 1 and "FaultInjected" in p.stderr
    assert not any(x.mountpoint == target for x in procfs.mountinfo())
    assert registry.ledger().find("mount", target) is None
    assert not os.path.exists(f"{lab}/work/work")                          # the kernel's scratch, gone
    # What the mount made goes with it; what was there before stays, for its owner to remove.
    assert os.path.exists(target) == (folders == "there") and os.path.exists(f"{lab}/work") == (folders == "there")


def test_the_record_is_the_mounts_own_source_and_the_census_reads_it(lab, uid):
    # An overlay on folders that exist says whose it is in its source (findmnt shows it), and
    # writes nothing to the ledger; one whose owner name cannot be a source keeps a ledger record.
    for name in ("merged", "upper", "work", "m2", "u2", "w2"):
        os.mkdir(f"{lab}/{name}")
    files = set(os.listdir(registry.LEDGER_DIR))
    ov = overlay.mount(f"{lab}/merged", [f"{lab}/l1", f"{lab}/l2"], f"{lab}/upper", f"{lab}/work",
                       owner=f"systest-{uid}")
    try:
        m = next(m for m in procfs.mountinfo() if m.mountpoint == ov.target)
        record = registry.from_mount_source(m.mountpoint, m.source)
        assert record is not None and record.owner == f"systest-{uid}" and record.pid == os.getpid()
        assert record.pid_start == registry.new_record("mount", ov.target).pid_start     # this very process
        assert set(os.listdir(registry.LEDGER_DIR)) == files
        found = subprocess.run(["findmnt", "-n", "-o", "SOURCE", ov.target], capture_output=True, text=True)
        assert found.stdout.strip() == m.source
        census = cleanup.census()
        mine = [o for o in census.objects if o.kind == "mount" and o.name == ov.target]
        assert [o.owner for o in mine] == [f"systest-{uid}"]
        assert not any(o.kind == "ledger" for o in census.objects if o.owner == f"systest-{uid}")
        # An owner with ':' does not fit in a source: its record goes to the ledger instead.
        odd = overlay.mount(f"{lab}/m2", [f"{lab}/l1", f"{lab}/l2"], f"{lab}/u2", f"{lab}/w2",
                            owner=f"systest-{uid}:odd")
        try:
            assert registry.ledger().find("mount", odd.target).owner == f"systest-{uid}:odd"
            assert next(m for m in procfs.mountinfo() if m.mountpoint == odd.target).source == "overlay"
        finally:
            odd.unmount()
        assert registry.ledger().find("mount", odd.target) is None
    finally:
        # The module's unmount (no record kept by the caller) reads the record off the mount
        # before it goes: the scratch goes, the folders that were there stay.
        assert overlay.unmount(ov.target) is True
    assert not os.path.exists(f"{lab}/work/work") and os.path.isdir(ov.target) and os.path.isdir(f"{lab}/work")
    assert set(os.listdir(registry.LEDGER_DIR)) == files


def test_r5_cleanup_unmounts_first_and_leaves_another_owners_lower_folders_intact(uid):
    # The lower folders are someone else's (another owner's lab folder); the overlay, its upper
    # and its mount point are the test's. Cleanup of the test's owner never deletes through the
    # merged view: the lower folders stay byte-identical.
    other = mounts.make_dir(f"/var/lib/labhelper/test-ov-base-{uid}", owner=f"keep-{uid}")
    mine = mounts.make_dir(f"/var/lib/labhelper/test-ov-run-{uid}", owner=f"systest-{uid}")
    try:
        os.makedirs(f"{other}/lower/etc")
        with open(f"{other}/lower/etc/passwd", "w") as fh:
            fh.write("root:x:0:0::/root:/bin/sh\n")
        os.makedirs(f"{other}/lower2")
        before = _tree(other)
        overlay.mount(f"{mine}/merged", [f"{other}/lower", f"{other}/lower2"], f"{mine}/upper", f"{mine}/work",
                      owner=f"systest-{uid}")
        result = cleanup.cleanup(owner=f"systest-{uid}")
        assert result.ok, result.failures
        assert not os.path.exists(mine) and _tree(other) == before
    finally:
        cleanup.cleanup(owner=f"systest-{uid}")
        cleanup.cleanup(owner=f"keep-{uid}")


def test_two_overlays_share_a_lower_folder_and_never_see_each_others_writes(lab):
    with overlay.mount(f"{lab}/a", [f"{lab}/l1", f"{lab}/l2"], f"{lab}/ua", f"{lab}/wa") as a, \
            overlay.mount(f"{lab}/b", [f"{lab}/l1", f"{lab}/l2"], f"{lab}/ub", f"{lab}/wb") as b:
        with open(f"{a.target}/etc/hosts", "w") as fh:
            fh.write("changed in a\n")
        assert open(f"{b.target}/etc/hosts").read() == "127.0.0.1 localhost\n"
        assert open(f"{lab}/l2/etc/hosts").read() == "127.0.0.1 localhost\n"


def test_a_second_overlay_on_a_mount_point_is_refused_and_changes_nothing(lab):
    # statx's STATX_ATTR_MOUNT_ROOT says, in one call, that something is mounted there already.
    # (The folders exist, so that no ledger record of the first mount refuses the second first.)
    for name in ("merged", "upper", "work", "u2", "w2"):
        os.mkdir(f"{lab}/{name}")
    with overlay.mount(f"{lab}/merged", [f"{lab}/l1", f"{lab}/l2"], f"{lab}/upper", f"{lab}/work") as ov:
        fd = os.open(ov.target, os.O_RDONLY | os.O_DIRECTORY)
        inside = os.open(f"{ov.target}/etc", os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert overlay._is_mount_point(fd) is True and overlay._is_mount_point(inside) is False
        finally:
            os.close(fd)
            os.close(inside)
        before = (cleanup.census().names(), procfs.mountinfo())
        with pytest.raises(Refused, match="mounted on .* already"):
            overlay.mount(ov.target, [f"{lab}/l1", f"{lab}/l2"], f"{lab}/u2", f"{lab}/w2")
        assert (cleanup.census().names(), procfs.mountinfo()) == before
        assert os.listdir(f"{lab}/u2") == [] and os.listdir(f"{lab}/w2") == []

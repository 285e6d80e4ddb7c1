"""mounts.py without root: refusals happen before any system call (B3, B4), folders removed
without following a symlink or crossing a mount (R5)."""
import os

import pytest

from labhelper import host, marks, mounts, procfs, registry
from labhelper.errors import LabError, NotDisposableError


@pytest.fixture(autouse=True)
def _disposable(monkeypatch):
    monkeypatch.setenv("LABHELPER_DISPOSABLE", "1")


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


def test_unmount_runs_the_safety_guard(calls, monkeypatch, tmp_path):
    monkeypatch.delenv("LABHELPER_DISPOSABLE")
    monkeypatch.setattr(host, "DISPOSABLE_MARKER", tmp_path / "no-marker")
    with pytest.raises(NotDisposableError, match="refused to unmount"):
        mounts.unmount("/run/labhelper/x", record=False)
    assert calls == []


@pytest.mark.parametrize("target", ["/", "/mnt", "/run/netns/foreign", "/tmp/x"])
def test_detach_refuses_what_carries_no_mark(calls, target):
    with pytest.raises(ValueError, match="carries no mark of ours"):
        mounts.detach(target)
    assert calls == []


def test_an_overlay_outside_the_lab_is_ours_by_its_upper_directory(monkeypatch, calls):
    upper = "rw,lowerdir=/a,upperdir=/var/lib/labhelper/c2/upper,workdir=/var/lib/labhelper/c2/work"
    table = [procfs.Mount(93, 25, "0:53", "/", "/srv/x", "rw", (), "overlay", "overlay", upper),
             procfs.Mount(94, 25, "0:54", "/", "/srv/y", "rw", (), "overlay", "overlay", "rw,upperdir=/srv/u")]
    assert mounts.is_ours("/srv/x", table) and not mounts.is_ours("/srv/y", table)
    assert mounts.is_ours("/run/netns/lh-a", table) and not mounts.is_ours("/run/netns/a", table)
    monkeypatch.setattr(procfs, "mountinfo", lambda *a, **k: table)
    assert mounts.detach("/srv/x") and calls == [("umount2", ("/srv/x", mounts.UmountFlags.MNT_DETACH
                                                               | mounts.UmountFlags.UMOUNT_NOFOLLOW))]
    with pytest.raises(ValueError):
        mounts.detach("/srv/y")


@pytest.fixture
def lab(monkeypatch, tmp_path):
    """A fake lab folder in tmp, with a symlink to a folder outside it."""
    lab, outside = tmp_path / "lab", tmp_path / "outside"
    (outside / "target").mkdir(parents=True)
    lab.mkdir()
    os.symlink(outside, lab / "dirlink")
    os.symlink(outside / "target", lab / "link")
    monkeypatch.setattr(marks, "LAB_DIRS", (str(lab),))
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
    made = []
    fd = marks.open_lab_dir(str(lab / "a" / "b"), create=True, made=made)
    assert made == [str(lab / "a"), str(lab / "a" / "b")]
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(lab / "a" / "b"))
    finally:
        os.close(fd)
    with pytest.raises(FileNotFoundError):
        marks.open_lab_dir(str(lab / "missing" / "x"))
    with pytest.raises(LabError, match="is a symlink"):
        marks.open_lab_dir(str(lab / "dirlink" / "target"))
    with pytest.raises(LabError, match="only below"):
        marks.open_lab_dir(str(lab.parent / "outside"))


# --- remove_tree (R5) -------------------------------------------------------------------------

def test_remove_tree_never_follows_symlinks(tmp_path):
    lab = tmp_path / "lab"
    outside = tmp_path / "host-folder"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    (lab / "c1/rootfs/sub").mkdir(parents=True)
    (lab / "c1/rootfs/sub/file").write_text("x")
    os.symlink(outside, lab / "c1/rootfs/escape")
    os.symlink(outside / "precious", lab / "c1/rootfs/sub/link-to-file")
    mounts.remove_tree(str(lab / "c1"), allowed=(str(lab),))
    assert not (lab / "c1").exists()
    assert (outside / "precious").read_text() == "keep me"


def test_remove_tree_of_a_symlink_removes_only_the_link(tmp_path):
    lab = tmp_path / "lab"
    lab.mkdir()
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "f").write_text("keep")
    os.symlink(outside, lab / "rootfs")
    mounts.remove_tree(str(lab / "rootfs"), allowed=(str(lab),))
    assert not os.path.lexists(lab / "rootfs") and (outside / "f").read_text() == "keep"


@pytest.mark.parametrize("path", ["/", "/etc", "/var/lib/labhelper", "/var/lib/labhelper/../../etc", "/tmp/x"])
def test_remove_tree_refuses_outside_lab_folders(path):
    with pytest.raises(LabError, match="refusing to remove"):
        mounts.remove_tree(path)


def test_remove_tree_missing_is_a_no_op(tmp_path):
    (tmp_path / "lab").mkdir()
    mounts.remove_tree(str(tmp_path / "lab/gone"), allowed=(str(tmp_path / "lab"),))
    mounts.remove_tree(str(tmp_path / "lab/gone/deeper"), allowed=(str(tmp_path / "lab"),))
    assert os.listdir(tmp_path / "lab") == []          # nothing made, nothing raised


# ---------------------------------------------------------------------------------------------
# Review findings (B1..B14, P1..P13): each test failed before its fix.

def test_remove_tree_refuses_a_symlink_in_the_middle_of_the_path(tmp_path):
    # B2: O_NOFOLLOW guards only the last component; lab/dirlink/sub must not reach outside/sub.
    lab, outside = tmp_path / "lab", tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "keep").write_text("keep")
    lab.mkdir()
    os.symlink(outside, lab / "dirlink")
    with pytest.raises(LabError, match="symlink"):
        mounts.remove_tree(str(lab / "dirlink" / "sub"), allowed=(str(lab),))
    assert (outside / "sub" / "keep").read_text() == "keep"


def test_remove_tree_refuses_when_the_mount_id_is_unknown(tmp_path, monkeypatch):
    # B1: an unreadable /proc/self/fdinfo must stop the removal (fail closed), not wave it through.
    lab = tmp_path / "lab"
    (lab / "c1" / "sub").mkdir(parents=True)
    (lab / "c1" / "sub" / "f").write_text("x")
    monkeypatch.setattr(procfs, "mount_id", lambda fd: -1)
    with pytest.raises(LabError, match="cannot tell"):
        mounts.remove_tree(str(lab / "c1"), allowed=(str(lab),))
    assert (lab / "c1" / "sub" / "f").read_text() == "x"


def test_remove_tree_refuses_a_mount_point_at_its_top(tmp_path, monkeypatch):
    # B1: the top itself on another mount than its parent (a bind mount of a host folder at the
    # top) is refused before anything is deleted. Simulated: the top's fd reports another mount id.
    lab = tmp_path / "lab"
    (lab / "c1" / "mnt").mkdir(parents=True)
    (lab / "c1" / "mnt" / "precious").write_text("keep")
    real = procfs.mount_id
    top_ino = os.stat(lab / "c1" / "mnt").st_ino
    monkeypatch.setattr(procfs, "mount_id", lambda fd: real(fd) + (1 if os.fstat(fd).st_ino == top_ino else 0))
    with pytest.raises(LabError, match="mount point"):
        mounts.remove_tree(str(lab / "c1" / "mnt"), allowed=(str(lab),))
    assert (lab / "c1" / "mnt" / "precious").read_text() == "keep"


# --- checked before any kernel call (R3, R18, R20) ------------------------------------------------

@pytest.mark.parametrize("size", ["0", "100%", "1m,mode=0777", "-1m", "1.5m", "", "1t", True, None, "99999999g"])
def test_tmpfs_sizes_that_are_refused(size):
    with pytest.raises(ValueError, match="tmpfs size"):
        mounts.tmpfs_size(size)


@pytest.mark.parametrize("size,shown", [("64k", "64k"), ("1M", "1m"), (4096, "4096"), (" 16m ", "16m")])
def test_tmpfs_sizes_that_are_taken(size, shown):
    assert mounts.tmpfs_size(size) == shown


def test_nothing_is_mounted_twice_on_one_path(calls, monkeypatch):
    taken = procfs.Mount(90, 25, "0:50", "/", "/run/labhelper/x", "rw", (), "tmpfs", "labhelper", "rw")
    monkeypatch.setattr(procfs, "mountinfo", lambda *a, **k: [taken])
    with pytest.raises(ValueError, match="mounted on /run/labhelper/x already"):
        mounts.mount_tmpfs("/run/labhelper/x")
    assert calls == [] and registry.ledger().records() == []


def test_a_failed_mount_takes_its_record_and_folders_with_it(monkeypatch, lab, tmp_path):
    # R3: the kernel refuses the mount; the record and every folder it made are gone again.
    from labhelper.errors import SyscallError
    monkeypatch.setenv("LABHELPER_LEDGER", str(tmp_path / "ledger"))

    def refuse(*a, **k):
        raise SyscallError("mount", {"target": a[1]}, 22)
    monkeypatch.setattr(mounts.syscalls, "mount", refuse)
    with pytest.raises(SyscallError) as info:
        mounts.mount_tmpfs(str(lab / "a" / "b" / "m"))
    assert f"target='{lab / 'a' / 'b' / 'm'}'" in str(info.value)       # the path the learner gave
    assert registry.ledger().records() == []
    assert sorted(os.listdir(lab)) == ["dirlink", "link"]               # a, a/b, a/b/m removed again


def test_mounts_on_a_lab_folder_itself_are_not_ours(monkeypatch, tmp_path):
    from labhelper.marks import Scan
    table = [procfs.Mount(60, 1, "0:60", "/", "/var/lib/labhelper", "rw", (), "tmpfs", "intruder", "rw"),
             procfs.Mount(61, 1, "0:61", "/", "/run/labhelper", "rw", (), "tmpfs", "labhelper", "rw"),
             procfs.Mount(62, 61, "0:62", "/", "/run/labhelper/m", "rw", (), "tmpfs", "labhelper", "rw")]
    scan = Scan(tmp_path, tmp_path, tmp_path / "netns", tmp_path, table, [])
    assert [o.name for o in mounts.find_mounts(scan)] == ["/run/labhelper/m"]
    assert len(scan.problems) == 1 and "/var/lib/labhelper" in scan.problems[0] and "intruder" in scan.problems[0]
    assert not mounts.is_ours("/var/lib/labhelper", table) and not mounts.is_ours("/run/labhelper", table)


def test_six_removals_of_one_tree_at_once_all_succeed(tmp_path):
    # Issue 10: several cleanups at once (a workshop) on one folder: a file or folder another
    # one removed first is success, not an ENOENT failure.
    import multiprocessing
    lab = tmp_path / "lab"
    for i in range(200):
        (lab / "c1" / f"d{i}" / "sub").mkdir(parents=True)
        (lab / "c1" / f"d{i}" / "sub" / "f").write_text("x")
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(6) as pool:
        results = pool.starmap(_remove_counting_errors, [(str(lab / "c1"), str(lab))] * 6)
    assert results == ["ok"] * 6, results
    assert not (lab / "c1").exists()


def _remove_counting_errors(path, lab):
    try:
        mounts.remove_tree(path, allowed=(lab,))
        return "ok"
    except Exception as exc:  # noqa: BLE001 - the test reports what each worker met
        return f"{type(exc).__name__}: {exc}"

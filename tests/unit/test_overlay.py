"""labhelper.overlay without root: what is refused before any change (R19 and the kernel's own
rules, said first), the one-page limit of mount(2)'s options, and how results read."""
from __future__ import annotations

import errno
import os

import pytest

from labhelper import overlay
from labhelper.errors import Refused, RequirementError

LAB = "/var/lib/labhelper/unit-ov"


@pytest.fixture(autouse=True)
def _no_kernel(monkeypatch):
    # Every case here must be refused before the guard, a mount table read or a system call.
    def boom(*a, **k):
        raise AssertionError("reached the kernel")
    monkeypatch.setattr(overlay.registry, "guard", boom)
    monkeypatch.setattr(overlay.procfs, "mountinfo", boom)
    monkeypatch.setattr(overlay.syscalls, "fsopen", boom)


@pytest.mark.parametrize("lowers,upper,work,why", [
    (["/"], None, None, "only below"), (["/etc", f"{LAB}/l"], None, None, "only below"),
    ([f"{LAB}/l", "/usr"], None, None, "only below"), (["/var/lib/labhelper"], None, None, "only below"),
    ([f"{LAB}/l/../../../../etc", f"{LAB}/m"], None, None, "only below|normal"),
    ([], None, None, "at least one"), ([f"{LAB}/l"], None, None, "at least two"),
    ([f"{LAB}/a", f"{LAB}/a"], None, None, "twice"),
    ([f"{LAB}/a"], f"{LAB}/u", None, "both an upper and a work"),
    ([f"{LAB}/a"], "/tmp/u", f"{LAB}/w", "only below"), ([f"{LAB}/a"], f"{LAB}/u", "/tmp/w", "only below"),
    ([f"{LAB}/a"], f"{LAB}/u", f"{LAB}/u", "two folders"),
    ([f"{LAB}/a"], f"{LAB}/u", f"{LAB}/u/w", "overlap"), ([f"{LAB}/a"], f"{LAB}/a/u", f"{LAB}/w", "overlap"),
    ([f"{LAB}/merged/x", f"{LAB}/b"], None, None, "overlap"), ([f"{LAB}"], f"{LAB}/u", f"{LAB}/w", "overlap"),
    ([f"{LAB}/a"] * 501, None, None, "at most 500"),
])
def test_r19_and_the_kernels_rules_are_refused_before_anything(lowers, upper, work, why):
    with pytest.raises(Refused, match=why):
        overlay.mount(f"{LAB}/merged", lowers, upper, work)


def test_the_mount_point_itself_must_be_a_lab_path():
    for target in ("/mnt", "/", "/var/lib/labhelper", "relative/path"):
        with pytest.raises(Refused):
            overlay.mount(target, [f"{LAB}/a", f"{LAB}/b"])
    with pytest.raises(Refused, match="api"):
        overlay.mount(f"{LAB}/m", [f"{LAB}/a", f"{LAB}/b"], api="fuse")


def test_a_kernel_without_lowerdir_plus_is_said_clearly(monkeypatch):
    monkeypatch.setattr(overlay, "new_api", lambda: False)
    with pytest.raises(RequirementError, match="Linux 6.8") as exc:
        overlay.mount(f"{LAB}/m", [f"{LAB}/a", f"{LAB}/b"], api="fsconfig")
    assert "mount(2)" in exc.value.hint
    many = [f"{LAB}/layers/{i:03d}-{'x' * 60}" for i in range(60)]
    with pytest.raises(RequirementError, match="one page") as exc:
        overlay.mount(f"{LAB}/m", many)                 # the default on such a kernel: mount(2)
    assert "fewer layers or shorter paths" in exc.value.hint


def test_mount2_takes_one_page_of_options_and_no_separator_in_a_path(monkeypatch):
    monkeypatch.setattr(overlay, "new_api", lambda: True)
    many = [f"{LAB}/layers/{i:03d}-{'x' * 60}" for i in range(60)]
    with pytest.raises(RequirementError, match="one page") as exc:
        overlay.mount(f"{LAB}/m", many, f"{LAB}/u", f"{LAB}/w", api="mount(2)")
    assert "fsconfig" in exc.value.hint
    with pytest.raises(Refused, match="':', ','"):
        overlay.mount(f"{LAB}/m", [f"{LAB}/a:b", f"{LAB}/c"], api="mount(2)")


def test_how_an_overlay_and_a_change_read():
    ov = overlay.Overlay(f"{LAB}/m", (f"{LAB}/a", f"{LAB}/b"), f"{LAB}/u", f"{LAB}/w", "fsconfig", overlay.LAYER_OPTIONS)
    assert repr(ov) == (f"Overlay({LAB}/m: 2 lower folders, upper {LAB}/u; fsconfig, "
                        "redirect_dir=off,metacopy=off,index=off)")
    ro = overlay.Overlay(f"{LAB}/m", (f"{LAB}/a",), None, None, "mount(2)", ())
    assert "1 lower folder, read-only; mount(2), defaults" in repr(ro)
    assert sorted([overlay.Change("/b", "A"), overlay.Change("/a/x", "D"), overlay.Change("/a", "C")]) == [
        overlay.Change("/a", "C"), overlay.Change("/a/x", "D"), overlay.Change("/b", "A")]
    assert repr(overlay.Change("/etc/motd", "D")) == "D /etc/motd"


def test_a_whiteout_is_a_character_device_0_0_and_nothing_else():
    class St:
        def __init__(self, mode, rdev):
            self.st_mode, self.st_rdev = mode, rdev
    import stat
    assert overlay.is_whiteout(St(stat.S_IFCHR, os.makedev(0, 0)))
    assert not overlay.is_whiteout(St(stat.S_IFCHR, os.makedev(1, 3)))        # /dev/null
    assert not overlay.is_whiteout(St(stat.S_IFREG, 0)) and not overlay.is_whiteout(St(stat.S_IFBLK, 0))


def test_an_unmarked_folder_is_not_opaque(tmp_path):
    assert not overlay.is_opaque(str(tmp_path)) and not overlay.is_opaque(str(tmp_path / "missing"))


def test_origins_look_a_name_up_as_overlayfs_does(monkeypatch):
    views = {
        "upper": {"etc": "dir", "etc/hosts": "file", "etc/motd": "whiteout", "d": "opaque", "d/new": "file",
                  "gone": "whiteout"},
        "l1": {"etc": "dir", "etc/motd": "file", "etc/issue": "file"},
        "l2": {"etc": "dir", "etc/hosts": "file", "etc/motd": "file", "d": "dir", "d/old": "file",
               "gone": "dir", "gone/x": "file", "bin": "dir", "bin/sh": "symlink"},
    }
    monkeypatch.setattr(overlay, "listing", lambda folder: views[folder])
    assert overlay.origins(["upper", "l1", "l2"]) == {
        "bin/sh": (2, "symlink"), "d/new": (0, "file"), "etc/hosts": (0, "file"), "etc/issue": (1, "file"),
        "etc/motd": (0, "whiteout"), "gone": (0, "whiteout")}
    # d/old: below an opaque folder of upper; gone/x: below a whiteout of its folder. Neither shows.


def test_a_file_above_hides_a_folder_below(monkeypatch):
    views = {"upper": {"a": "file"}, "lower": {"a": "dir", "a/b": "file", "c": "symlink", "c/x": "file"}}
    monkeypatch.setattr(overlay, "listing", lambda folder: views[folder])
    assert overlay.origins(["upper", "lower"]) == {"a": (0, "file"), "c": (1, "symlink"), }


def test_the_stack_diagram_marks_where_each_file_comes_from(monkeypatch):
    from labhelper.teach import diagrams
    listings = [{"etc": "dir", "etc/motd": "whiteout", "d": "opaque"}, {"etc": "dir", "etc/motd": "file",
                                                                         "d": "dir", "d/old": "file"}]
    d = diagrams.overlay_stack(["upper", "lower"], listings, {"etc/motd": (0, "whiteout")})
    assert "<S>/etc/motd</S>" in d.source and "whiteout (0/0)" in d.source
    assert "<S>/d/old</S>" in d.source and "opaque /d" in d.source          # hidden by the opaque folder above
    assert repr(d) == "<diagram: an overlay, layer by layer>"


def test_a_layer_goes_as_an_open_folder_where_the_kernel_takes_one_else_by_its_path(monkeypatch):
    from labhelper.errors import SyscallError
    from labhelper.flags import FsconfigCmd
    calls = []
    opened = []

    def fake_open(path):
        opened.append(path)
        return os.open("/", os.O_RDONLY)
    monkeypatch.setattr(overlay, "_open_lower", fake_open)
    for takes_fds in (True, False):
        calls.clear()
        monkeypatch.setattr(overlay, "_layer_fds", None)

        def fsconfig(fs, cmd, key=None, value=None, aux=0):
            if cmd == FsconfigCmd.FSCONFIG_SET_FD and not takes_fds:
                raise SyscallError("fsconfig", {"cmd": "FSCONFIG_SET_FD"}, 22)
            calls.append((cmd, key, value))
        monkeypatch.setattr(overlay.syscalls, "fsconfig", fsconfig)
        overlay._add_lower(99, f"{LAB}/a")
        overlay._add_lower(99, f"{LAB}/b")
        kinds = [c[0] for c in calls]
        if takes_fds:
            assert kinds == [FsconfigCmd.FSCONFIG_SET_FD] * 2 and overlay._layer_fds is True
        else:   # asked once, then by path only
            assert calls == [(FsconfigCmd.FSCONFIG_SET_STRING, "lowerdir+", f"{LAB}/a"),
                             (FsconfigCmd.FSCONFIG_SET_STRING, "lowerdir+", f"{LAB}/b")] and overlay._layer_fds is False
    assert opened == [f"{LAB}/a", f"{LAB}/b"] * 2                  # each one opened (checked) every time


@pytest.mark.parametrize("known, answer", [((), False),                              # no lowerdir+
                                           (("lowerdir+", "labhelper-probe"), False),  # legacy glue: any key
                                           (("lowerdir+",), True)])                    # parsed one by one
def test_new_api_tells_a_parsing_overlayfs_from_the_legacy_glue_that_takes_any_key(monkeypatch, known, answer):
    from labhelper import syscalls as sc
    from labhelper.errors import SyscallError

    def fsconfig(fd, cmd, key=None, value=None, aux=0):
        if key not in known:
            raise SyscallError("fsconfig", {"key": key}, errno.EINVAL)
    monkeypatch.setattr(sc, "fsopen", lambda name: os.open("/dev/null", os.O_RDONLY))
    monkeypatch.setattr(sc, "fsconfig", fsconfig)
    overlay.new_api.cache_clear()
    try:
        assert overlay.new_api() is answer
    finally:
        overlay.new_api.cache_clear()

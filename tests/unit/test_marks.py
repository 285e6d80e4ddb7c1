"""marks: what "ours" means, and the table of kinds every concept module registers in."""
import importlib

import pytest

from labhelper import marks
from labhelper.errors import Refused


@pytest.mark.parametrize("path", ["/run/labhelper/a", "/var/lib/labhelper/c1/rootfs", "/run/labhelper/a-1_b.c+d"])
def test_lab_paths(path):
    assert marks.lab_path(path, "mount").startswith(("/run/labhelper/", "/var/lib/labhelper/"))


@pytest.mark.parametrize("path", ["/", "/etc", "/run/labhelper", "/run/labhelper/", "/var/lib/labhelperx",
                                  "/run/labhelper/../../etc", "relative/labhelper", "", "/run/labhelper/a\0b",
                                  # R18: not normal, so not the folder it seems to name
                                  "/run/labhelper/a/", "/run/labhelper/a/.", "/run/labhelper//a", "/run/labhelper/a/../b",
                                  # names that would break a table, a terminal or a shell
                                  "/run/labhelper/a\nb", "/run/labhelper/a\x1b[31m", "/run/labhelper/$(reboot)",
                                  "/run/labhelper/a b", "/run/labhelper/-rf", "/run/labhelper/.hidden",
                                  "/run/labhelper/" + "x" * 256, "/run/labhelper/" + "/".join(["d" * 200] * 21)])
def test_not_lab_paths_are_refused(path):
    with pytest.raises(Refused, match="refusing to mount"):
        marks.lab_path(path, "mount")


def test_is_under_compares_components_not_prefixes():
    assert marks.is_under("/a/b", "/a") and marks.is_under("/a", "/a") and not marks.is_under("/ab", "/a")
    assert marks.lab_dir_of("/run/labhelper/x") == "/run/labhelper" and marks.lab_dir_of("/run/x") is None


def test_names_of_each_kind():
    assert marks.link_name("lh-veth0") == "lh-veth0" and marks.netns_name("lh-ns-1") == "lh-ns-1"
    assert marks.pid_name("4242") == "4242"
    assert marks.cgroup_path("/sys/fs/cgroup/cpu,cpuacct/labhelper/c1") == "/sys/fs/cgroup/cpu,cpuacct/labhelper/c1"
    for check, bad in ((marks.link_name, "veth0"), (marks.link_name, "lh-" + "x" * 13), (marks.link_name, "lh-a b"),
                       (marks.netns_name, "ns1"), (marks.netns_name, "lh-a/b"), (marks.pid_name, "0"),
                       (marks.pid_name, "12a"), (marks.pid_name, "-1"), (marks.cgroup_path, "/sys/fs/cgroup/user.slice"),
                       (marks.cgroup_path, "/sys/fs/cgroup/labhelper/../x"), (marks.host_path, "relative")):
        with pytest.raises(Refused):
            check(bad)


def test_plain_names():
    for good in ("web", "lab-1", "a.b_c", "x" * 255, "A:1=2,3@4+5"):
        assert marks.plain_name(good, "pin name") == good
    for bad in ("", ".", "..", ".x", "a/b", "a\0b", "a\nb", "x" * 256, "a b", "$(id)", "a;b", "é", 3, None, b"x"):
        with pytest.raises(Refused, match="is not a pin name"):
            marks.plain_name(bad, "pin name")


def test_lab_cgroups():
    assert marks.is_lab_cgroup("/labhelper") and marks.is_lab_cgroup("/labhelper/c1/sub")
    assert not marks.is_lab_cgroup("/labhelperish") and not marks.is_lab_cgroup("/user.slice/labhelper-x")
    assert not marks.is_lab_cgroup("/system.slice/labhelper-jupyter.service/server")   # the server, not ours
    # below a subtree delegated to the lab (the lab VM's JupyterLab service), as at the root
    assert marks.is_lab_cgroup("/system.slice/labhelper-jupyter.service/labhelper/demo")


def test_interface_names_fit_and_are_never_cut():
    assert marks.ifname("br0") == "lh-br0"
    long1, long2 = marks.ifname("veth-container-one"), marks.ifname("veth-container-two")
    assert long1 != long2 and long1 == marks.ifname("veth-container-one")
    for name in (long1, long2, marks.ifname("x" * 12)):
        assert name.startswith("lh-") and len(name.encode()) <= marks.IFNAME_MAX
    assert marks.ifname("x" * 12) == "lh-" + "x" * 12       # exactly 15 bytes: kept as it is
    for bad in ("", "a b", "a/b", "é", "$(reboot)", None):
        with pytest.raises(Refused):
            marks.ifname(bad)


def test_every_kind_names_a_finder_and_a_remover_in_its_concept_module():
    for kind in marks.KINDS:
        for role in ("find", "remove"):
            module, _, name = getattr(kind, role).rpartition(".")
            fn = getattr(importlib.import_module(f"labhelper.{module}"), name)
            assert callable(fn), f"{kind.name}.{role} -> {getattr(kind, role)}"
            assert module not in ("cleanup", "teach", "cli"), "a kind belongs to its concept module"
        assert set(kind.within) <= {k.name for k in marks.KINDS}
        assert set(kind.not_after_failed) <= {k.name for k in marks.KINDS}
    assert marks.ORDER[-1] == "ledger" and len(set(marks.ORDER)) == len(marks.ORDER)
    with pytest.raises(Refused, match="unknown kind"):
        marks.kind("vm")


def test_an_object_and_its_record():
    class R:
        kind, name, data = "process", "42", {"ident": 7}
    assert marks.Obj("process", "42", ident=7).described_by(R)
    assert not marks.Obj("process", "42", ident=8).described_by(R)   # the pid was reused (R7)
    assert marks.Obj("process", "42").described_by(R)
    assert repr(marks.Obj("mount", "/run/labhelper/a", "tmpfs", "ch00")) == "mount /run/labhelper/a (tmpfs) owner=ch00"

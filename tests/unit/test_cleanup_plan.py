"""The census and the cleanup plan against a fake kernel tree: no root needed."""
import os

import pytest

from labhelper import cleanup, registry
from labhelper.errors import LabError
from labhelper.process import start_time

from fake import V1_MOUNTINFO, proc_tree, write

LAB_MOUNTS = """\
90 25 0:50 / /run/labhelper/c1/rootfs rw - overlay overlay rw,lowerdir=/var/lib/labhelper/l,upperdir=/var/lib/labhelper/c1/upper,workdir=/var/lib/labhelper/c1/work
91 90 0:51 / /run/labhelper/c1/rootfs/proc rw - proc proc rw
92 25 0:52 / /mnt/foreign rw - tmpfs tmpfs rw
93 25 0:53 / /srv/x rw - overlay overlay rw,lowerdir=/a,upperdir=/var/lib/labhelper/c2/upper,workdir=/w
94 25 0:4 net:[4026532000] /run/netns/lh-net1 rw - nsfs nsfs rw
95 25 0:54 / /run/labhelper/odd\\040name rw - tmpfs tmpfs rw
"""


@pytest.fixture
def kernel(tmp_path):
    """A fake machine with lab objects of owner ch05 and ch04, foreign ones, and a stale record."""
    me = os.getpid()
    proc = proc_tree(tmp_path, V1_MOUNTINFO + LAB_MOUNTS, {
        101: ("4:memory:/labhelper/lh-c1\n0::/\n", 5000),     # ours (v1 memory hierarchy)
        102: ("0::/labhelper/lh-c2\n", 6000),                  # ours (v2 path)
        103: ("4:memory:/labhelperish\n0::/user.slice\n", 7000),  # foreign, a look-alike name
        104: ("0::/system.slice/sshd.service\n", 8000),         # foreign
    })
    for h in ("memory", "pids", "unified"):
        (tmp_path / f"sys/fs/cgroup/{h}/labhelper/lh-c1/sub").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/memory/other/lh-c9").mkdir(parents=True)  # foreign: not under labhelper
    net = tmp_path / "sys/class/net"
    for name in ("lo", "eth0", "lh-veth0", "lh-br0", "docker0"):
        (net / name).mkdir(parents=True)
    netns = tmp_path / "run/netns"
    for name in ("lh-net1", "foreign-ns"):
        write(netns / name)
    led = registry.Ledger(tmp_path / "ledger")
    led.add("cgroup", "/sys/fs/cgroup/memory/labhelper/lh-c1", owner="ch05", pid=me)
    led.add("netns", "lh-net1", owner="ch04", pid=me)
    led.add("link", "lh-veth0", owner="ch04", pid=me)
    led.add("netns", "lh-vanished", owner="ch04", pid=me)           # its object is gone
    led.add("dir", "/var/lib/labhelper/c1", owner="ch05", pid=me)
    (tmp_path / "var/lib/labhelper/c1").mkdir(parents=True)
    kw = dict(proc=proc, sys_=tmp_path / "sys", netns_dir=netns, fs_root=tmp_path, the_ledger=led)
    return kw


def test_census_finds_ours_and_only_ours(kernel):
    c = cleanup.census(**kernel)
    names = c.names()
    assert ("process", "101") in names and ("process", "102") in names
    assert ("process", "103") not in names and ("process", "104") not in names
    assert ("mount", "/run/labhelper/c1/rootfs") in names and ("mount", "/run/labhelper/c1/rootfs/proc") in names
    assert ("mount", "/srv/x") in names             # an overlay writing into our folder
    assert ("mount", "/run/labhelper/odd name") in names  # octal escapes decoded
    assert ("mount", "/mnt/foreign") not in names
    assert not any(k == "mount" and n.startswith("/run/netns") for k, n in names)  # netns counted as netns
    assert {("netns", "lh-net1"), ("link", "lh-veth0"), ("link", "lh-br0")} <= names
    assert ("netns", "foreign-ns") not in names and ("link", "docker0") not in names
    cg = {n for k, n in names if k == "cgroup"}
    assert "/sys/fs/cgroup/memory/labhelper/lh-c1/sub" in cg and "/sys/fs/cgroup/unified/labhelper" in cg
    assert not any("other" in n for n in cg)
    assert ("dir", "/var/lib/labhelper/c1") in names
    stale = [o for o in c.objects if o.kind == "ledger"]
    assert len(stale) == 1 and "lh-vanished is gone" in stale[0].detail
    owners = {(o.kind, o.name): o.owner for o in c.objects}
    assert owners[("netns", "lh-net1")] == "ch04" and owners[("link", "lh-br0")] is None


def test_plan_order_is_dependency_order(kernel):
    actions = cleanup.plan(cleanup.census(**kernel), proc=kernel["proc"])
    kinds = [a.obj.kind for a in actions]
    assert kinds == sorted(kinds, key=cleanup.ORDER.index)
    mounts = [a.obj.name for a in actions if a.obj.kind == "mount"]
    assert mounts.index("/run/labhelper/c1/rootfs/proc") < mounts.index("/run/labhelper/c1/rootfs")
    cgroups = [a.obj.name for a in actions if a.obj.kind == "cgroup"]
    for child in cgroups:
        for parent in cgroups:
            if child.startswith(parent + "/"):
                assert cgroups.index(child) < cgroups.index(parent)


def test_plan_for_one_owner(kernel):
    actions = cleanup.plan(cleanup.census(**kernel), owner="ch04", proc=kernel["proc"])
    got = {(a.obj.kind, a.obj.name) for a in actions}
    assert ("netns", "lh-net1") in got and ("link", "lh-veth0") in got
    assert ("link", "lh-br0") not in got  # unrecorded: only a full cleanup takes it
    assert not any(k == "cgroup" for k, _ in got)
    ch05 = {(a.obj.kind, a.obj.name) for a in cleanup.plan(cleanup.census(**kernel), owner="ch05", proc=kernel["proc"])}
    assert ("cgroup", "/sys/fs/cgroup/memory/labhelper/lh-c1/sub") in ch05  # inside ch05's cgroup
    assert ("cgroup", "/sys/fs/cgroup/pids/labhelper/lh-c1") not in ch05


def test_orphans_only_skips_live_creators(kernel):
    # Every record was made by this (live) test process: nothing is an orphan.
    assert cleanup.plan(cleanup.census(**kernel), orphans_only=True) == []


def test_orphans_of_a_dead_creator(kernel, tmp_path):
    led = kernel["the_ledger"]
    led.add("netns", "lh-net1", owner="ch04", pid=2 ** 22 + 7)  # a pid that cannot exist
    actions = cleanup.plan(cleanup.census(**kernel), orphans_only=True)
    assert [(a.verb, a.obj.name) for a in actions] == [("delete-netns", "lh-net1")]


def test_pristine_machine_has_nothing(tmp_path):
    proc = proc_tree(tmp_path, V1_MOUNTINFO)
    c = cleanup.census(proc=proc, sys_=tmp_path / "sys", netns_dir=tmp_path / "none", fs_root=tmp_path,
                       the_ledger=registry.Ledger(tmp_path / "ledger"))
    assert not c and c.table() == "nothing of ours exists" and cleanup.plan(c) == []
    assert cleanup.execute([]) == []  # nothing to do needs no privilege and touches nothing


def test_corrupt_ledger_reported_not_fatal(kernel):
    (kernel["the_ledger"].root / "dir.deadbeef.json").write_text("\x00garbage")
    c = cleanup.census(**kernel)
    assert any("unreadable ledger record" in p for p in c.problems)
    assert ("netns", "lh-net1") in c.names()


def test_remove_tree_never_follows_symlinks(tmp_path):
    lab = tmp_path / "lab"
    outside = tmp_path / "host-folder"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    (lab / "c1/rootfs/sub").mkdir(parents=True)
    (lab / "c1/rootfs/sub/file").write_text("x")
    os.symlink(outside, lab / "c1/rootfs/escape")
    os.symlink(outside / "precious", lab / "c1/rootfs/sub/link-to-file")
    cleanup.remove_tree(str(lab / "c1"), allowed=(str(lab),))
    assert not (lab / "c1").exists()
    assert (outside / "precious").read_text() == "keep me"


def test_remove_tree_of_a_symlink_removes_only_the_link(tmp_path):
    lab = tmp_path / "lab"
    lab.mkdir()
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "f").write_text("keep")
    os.symlink(outside, lab / "rootfs")
    cleanup.remove_tree(str(lab / "rootfs"), allowed=(str(lab),))
    assert not os.path.lexists(lab / "rootfs") and (outside / "f").read_text() == "keep"


@pytest.mark.parametrize("path", ["/", "/etc", "/var/lib/labhelper", "/var/lib/labhelper/../../etc", "/tmp/x"])
def test_remove_tree_refuses_outside_lab_folders(path):
    with pytest.raises(LabError, match="refusing to remove"):
        cleanup.remove_tree(path)


def test_remove_tree_missing_is_a_no_op(tmp_path):
    cleanup.remove_tree(str(tmp_path / "lab/gone"), allowed=(str(tmp_path / "lab"),))

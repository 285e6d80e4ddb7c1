"""The census, the plan and the executor against a fake kernel tree: no root needed."""
import os

import pytest

from labhelper import cleanup, marks, mounts, procfs, registry, syscalls
from labhelper.procfs import Mount

from fake import V1_MOUNTINFO, proc_tree, write


@pytest.fixture(autouse=True)
def _disposable(monkeypatch):
    """Writing a ledger (even a fake one in tmp) passes the safety guard: declare this machine
    disposable for these tests. tests/unit/test_guard.py checks the refusals."""
    monkeypatch.setenv("LABHELPER_DISPOSABLE", "1")

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
    assert kinds == sorted(kinds, key=marks.ORDER.index)
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
    led.remove("netns", "lh-net1")
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
    assert any("not a ledger record" in p for p in c.problems)
    assert ("ledger-file", "dir.deadbeef.json") in c.names()
    assert ("netns", "lh-net1") in c.names()


@pytest.fixture
def disposable(tmp_path):
    """A tmp ledger for execute() (the machine is declared disposable for every test here)."""
    return registry.Ledger(tmp_path / "exec-ledger")


def test_no_remove_tree_in_a_round_where_an_unmount_failed(tmp_path, monkeypatch, disposable):
    # B1: a failed unmount may leave a bind mount inside the folder: skip remove-tree this round.
    def busy(target, flags=0):
        raise OSError(16, "Device or resource busy")
    removed = []
    monkeypatch.setattr(syscalls, "umount2", busy)
    monkeypatch.setattr(mounts, "remove_tree", lambda path, *a, **k: removed.append(path))
    actions = [cleanup.Action("unmount", cleanup.Obj("mount", "/var/lib/labhelper/c1/rootfs/mnt")),
               cleanup.Action("remove-tree", cleanup.Obj("dir", "/var/lib/labhelper/c1"))]
    failures = cleanup.execute(actions, the_ledger=disposable)
    assert removed == []
    assert any(f.startswith("unmount") and "busy" in f.lower() for f in failures)
    assert any("remove-tree" in f and "skipped" in f for f in failures)


def test_unmounted_point_outside_lab_folders_is_not_removed(tmp_path, monkeypatch, disposable):
    # B5: an overlay on /srv/x writing into our folder is ours to unmount, but /srv/x is not ours.
    point = tmp_path / "srv" / "x"
    point.mkdir(parents=True)
    overlay = Mount(90, 25, "0:50", "/", str(point), "rw", (), "overlay", "overlay",
                    "rw,lowerdir=/a,upperdir=/var/lib/labhelper/c2/upper,workdir=/var/lib/labhelper/c2/work")
    monkeypatch.setattr(procfs, "mountinfo", lambda *a, **k: [overlay])  # the mark: its upperdir is ours
    monkeypatch.setattr(syscalls, "umount2", lambda target, flags=0: None)
    failures = cleanup.execute([cleanup.Action("unmount", cleanup.Obj("mount", str(point), "overlay"))],
                               the_ledger=disposable)
    assert failures == [] and point.is_dir()


def test_an_unexpected_exception_in_one_action_is_a_failure_line(tmp_path, disposable):
    # B6: one bad object (here a process "abc") must not stop the others or escape as a traceback.
    disposable.add("dir", "/var/lib/labhelper/never-made", owner="x")
    key = registry.Record("dir", "/var/lib/labhelper/never-made", "", 0, None, 0).key
    actions = [cleanup.Action("kill", cleanup.Obj("process", "abc", "start=1")),
               cleanup.Action("forget", cleanup.Obj("ledger", key))]
    failures = cleanup.execute(actions, the_ledger=disposable)
    assert len(failures) == 1 and "kill" in failures[0] and "abc" in failures[0]
    assert disposable.records() == []  # the next action still ran


def test_cleanup_reports_objects_that_are_still_present(tmp_path, monkeypatch, disposable):
    # B13: an unmount that "succeeded" (EINVAL is ignored as "not mounted") but left the mount
    # in place: cleanup must not say ok.
    monkeypatch.setenv("LABHELPER_LEDGER", str(disposable.root))
    stuck = cleanup.Obj("mount", "/run/labhelper/unit-test-stuck", "tmpfs", "ch05")
    monkeypatch.setattr(cleanup, "census", lambda: cleanup.Census([stuck], [], []))
    monkeypatch.setattr(syscalls, "umount2", lambda target, flags=0: None)
    result = cleanup.cleanup()
    assert not result.ok
    assert any("still present" in f and "/run/labhelper/unit-test-stuck" in f for f in result.failures)


def _lab_process_tree(tmp_path, pids):
    return proc_tree(tmp_path, V1_MOUNTINFO, {pid: ("0::/labhelper/lh-c7/sub\n", 9000 + pid) for pid in pids})


def test_process_in_a_recorded_cgroup_gets_its_owner(tmp_path):
    # B12: a grandchild left in a lab cgroup after a kernel restart has no record of its own; it
    # belongs to the owner of the cgroup record that contains it, and is an orphan with it.
    proc = _lab_process_tree(tmp_path, [301])
    (tmp_path / "sys/fs/cgroup/unified/labhelper/lh-c7/sub").mkdir(parents=True)
    led = registry.Ledger(tmp_path / "ledger")
    led.add("cgroup", "/sys/fs/cgroup/unified/labhelper/lh-c7", owner="ch07", pid=2 ** 22 + 7)  # dead creator
    kw = dict(proc=proc, sys_=tmp_path / "sys", netns_dir=tmp_path / "none", fs_root=tmp_path, the_ledger=led)
    c = cleanup.census(**kw)
    p = next(o for o in c.objects if o.kind == "process")
    assert p.owner == "ch07" and "/sys/fs/cgroup/unified/labhelper/lh-c7/sub" in p.detail
    for actions in (cleanup.plan(c, owner="ch07", proc=proc), cleanup.plan(c, orphans_only=True, proc=proc)):
        got = [(a.verb, a.obj.name) for a in actions]
        assert ("kill", "301") in got
        assert ("rmdir", "/sys/fs/cgroup/unified/labhelper/lh-c7/sub") in got  # inside the orphan too
        assert got.index(("kill", "301")) < got.index(("rmdir", "/sys/fs/cgroup/unified/labhelper/lh-c7"))


def test_census_never_lists_this_process_or_its_parent(tmp_path):
    # P13: the shell running `labhelper cleanup`, moved into a lab cgroup, must not be killed.
    proc = _lab_process_tree(tmp_path, [os.getpid(), os.getppid(), 302])
    c = cleanup.census(proc=proc, sys_=tmp_path / "sys", netns_dir=tmp_path / "none", fs_root=tmp_path,
                       the_ledger=registry.Ledger(tmp_path / "ledger"))
    assert {n for k, n in c.names() if k == "process"} == {"302"}


def test_lab_start_spares_objects_of_a_live_kernel_of_the_same_chapter(kernel):
    # B14: the notebook open twice: the other kernel (alive) keeps its objects; this process's own
    # and dead creators' objects go.
    led = kernel["the_ledger"]
    other = os.getppid()  # alive, and not this process
    for kind, name in (("netns", "lh-net1"), ("link", "lh-veth0"), ("netns", "lh-vanished")):
        led.remove(kind, name)
    led.add("netns", "lh-net1", owner="ch04", pid=other)
    led.add("link", "lh-veth0", owner="ch04", pid=os.getpid())
    led.add("netns", "lh-vanished", owner="ch04", pid=2 ** 22 + 7)
    c = cleanup.census(**kernel)
    got = {(a.obj.kind, a.obj.name) for a in cleanup.plan(c, owner="ch04", orphans_only=True,
                                                           created_by=os.getpid())}  # the real /proc
    assert ("link", "lh-veth0") in got                     # made by this process: a re-run
    assert ("netns", "lh-net1") not in got                 # made by a live other kernel
    assert any(k == "ledger" for k, _ in got)               # a dead creator's stale record


def test_census_survives_non_utf8_mount_paths(tmp_path):
    # B7: a mount point with bytes that are not UTF-8, anywhere on the host.
    proc = proc_tree(tmp_path, V1_MOUNTINFO)
    with open(proc / "self" / "mountinfo", "ab") as fh:
        fh.write(b"96 25 0:60 / /mnt/caf\xe9 rw - tmpfs tmpfs rw\n"
                 b"97 25 0:61 / /run/labhelper/n\xff rw - tmpfs tmpfs rw\n")
    write(proc / "303" / "cgroup", "")
    with open(proc / "303" / "cgroup", "wb") as fh:
        fh.write(b"0::/labhelper/\xfe\n")
    write(proc / "303" / "stat", "303 (x) S 1" + " 0" * 17 + " 77" + " 0" * 30 + "\n")
    c = cleanup.census(proc=proc, sys_=tmp_path / "sys", netns_dir=tmp_path / "none", fs_root=tmp_path,
                       the_ledger=registry.Ledger(tmp_path / "ledger"))
    names = c.names()
    assert ("mount", os.fsdecode(b"/run/labhelper/n\xff")) in names and ("process", "303") in names
    assert "/run/labhelper/n\\xff" in c.table()  # shown readably, and printable anywhere
    c.table().encode("utf-8")


def test_census_table_has_no_trailing_spaces(kernel):
    # P9
    assert all(line == line.rstrip() for line in cleanup.census(**kernel).table().splitlines())


def test_bad_typed_ledger_record_is_a_problem_not_a_crash(kernel):
    # B6: well-formed JSON, wrong field types: the census reports it and goes on.
    import json
    root = kernel["the_ledger"].root
    for kind, name, data in (("process", "abc", {}), ("netns", "lh-x", []), ("dir", 7, {})):
        raw = dict(kind=kind, name=name, owner="o", pid=1, pid_start=None, created=0.0, data=data)
        key = registry.Record(kind, str(name), "", 0, None, 0).key
        (root / key).write_text(json.dumps(raw))
    c = cleanup.census(**kernel)
    assert sum("not a ledger record" in p for p in c.problems) == 3
    assert ("netns", "lh-net1") in c.names()


def test_stale_temp_files_of_the_ledger_are_removed(kernel, disposable):
    # P3: a `.KEY.PID.tmp` left by a kill mid-write is garbage after a minute; a fresh one is a
    # write in flight and must stay.
    import time
    root = kernel["the_ledger"].root
    old = write(root / ".netns.0123.4242.tmp", "{")
    fresh = write(root / ".netns.4567.4343.tmp", "{")
    os.utime(old, (time.time() - 120, time.time() - 120))
    c = cleanup.census(**kernel)
    assert ("ledger", old.name) in c.names() and ("ledger", fresh.name) not in c.names()
    for kw in ({}, {"owner": "ch05"}, {"orphans_only": True}):
        assert ("forget", old.name) in [(a.verb, a.obj.name) for a in cleanup.plan(c, proc=kernel["proc"], **kw)]
    forget = [a for a in cleanup.plan(c, proc=kernel["proc"]) if a.obj.name == old.name]
    assert cleanup.execute(forget, the_ledger=kernel["the_ledger"]) == []
    assert not old.exists() and fresh.exists()


def test_census_shows_its_problems_in_a_notebook(kernel):
    # B8/P1: chapter 00 as non-root shows the census; the reason owners are missing must show too,
    # while table() (what the CLI prints on stdout) stays the table alone.
    (kernel["the_ledger"].root / "dir.deadbeef.json").write_text("\x00garbage")
    c = cleanup.census(**kernel)
    assert "sets it aside" in repr(c) and "sets it aside" not in c.table()


def test_recorded_folder_reached_through_a_symlink_counts_as_gone(tmp_path):
    # B2 in the census: /var/lib/labhelper/link/sub with `link` -> a host folder is not our
    # folder any more; only its record is left to forget (nothing is removed through the link).
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (tmp_path / "var/lib/labhelper").mkdir(parents=True)
    os.symlink(outside, tmp_path / "var/lib/labhelper/link")
    led = registry.Ledger(tmp_path / "ledger")
    led.add("dir", "/var/lib/labhelper/link/sub", owner="ch06")
    proc = proc_tree(tmp_path, V1_MOUNTINFO)
    c = cleanup.census(proc=proc, sys_=tmp_path / "sys", netns_dir=tmp_path / "none", fs_root=tmp_path,
                       the_ledger=led)
    assert ("dir", "/var/lib/labhelper/link/sub") not in c.names()
    assert [(a.verb, a.obj.detail) for a in cleanup.plan(c)] == [("forget", "dir /var/lib/labhelper/link/sub is gone")]


# ---------------------------------------------------------------------------------------------
# Issue 10: junk in the ledger never stops census or cleanup (R29)

def _junk(root, kind):
    """Put one kind of junk into the ledger folder ``root``; return its file name."""
    import json
    if kind == "fifo":
        os.mkfifo(root / "netns.fifo.json")                     # a reader that opens it waits forever
        return "netns.fifo.json"
    if kind == "symlink-to-dev-zero":
        os.symlink("/dev/zero", root / "mount.zero.json")       # endless bytes
        return "mount.zero.json"
    if kind == "huge-sparse":
        with open(root / "dir.huge.json", "wb") as fh:
            fh.truncate(1 << 34)                                # 16 GiB of holes
        return "dir.huge.json"
    if kind == "deep-json":
        key = registry.Record.key_of("dir", "/var/lib/labhelper/deep")
        (root / key).write_text("[" * 100000 + "]" * 100000)    # RecursionError in json.loads
        return key
    if kind == "nul-in-name":
        raw = dict(kind="dir", name="/var/lib/labhelper/a\x00b", owner="o", pid=1, pid_start=None, created=0.0, data={})
        key = registry.Record.key_of("dir", raw["name"])
        (root / key).write_text(json.dumps(raw))
        return key
    if kind == "tmp-folder":
        (root / ".x.1.tmp").mkdir()
        os.utime(root / ".x.1.tmp", (0, 0))                     # old enough to look stale
        return ".x.1.tmp"
    if kind == "record-naming-etc":
        raw = dict(kind="dir", name="/etc", owner="o", pid=1, pid_start=None, created=0.0, data={})
        key = registry.Record.key_of("dir", "/etc")
        (root / key).write_text(json.dumps(raw))
        return key
    raise ValueError(kind)


def _census_and_cleanup(kw, led):
    c = cleanup.census(**kw)
    actions = cleanup.plan(c, proc=kw["proc"])
    failures = cleanup.execute(actions, the_ledger=led)
    return c.names(), c.problems, [(a.verb, a.obj.kind, a.obj.name) for a in actions], failures


JUNK = ["fifo", "symlink-to-dev-zero", "huge-sparse", "deep-json", "nul-in-name", "tmp-folder", "record-naming-etc"]


@pytest.mark.parametrize("junk", JUNK)
def test_junk_in_the_ledger_is_set_aside_and_the_rest_is_cleaned(tmp_path, junk):
    from labhelper import process
    proc = proc_tree(tmp_path, V1_MOUNTINFO)
    led = registry.Ledger(tmp_path / "ledger")
    led.add("netns", "lh-vanished", owner="ch04")               # a record whose object is gone
    name = _junk(led.root, junk)
    kw = dict(proc=proc, sys_=tmp_path / "sys", netns_dir=tmp_path / "none", fs_root=tmp_path, the_ledger=led)
    # In a child with a timeout: a census that blocks (on a FIFO) must fail the test, not hang it.
    names, problems, actions, failures = process.run_in_child(_census_and_cleanup, kw, led, timeout=30)
    assert ("ledger-file", name) in names and any(name in p for p in problems), problems
    assert ("set-aside", "ledger-file", name) in actions
    assert any(verb == "forget" for verb, _, _ in actions)     # the rest goes on
    assert failures == []
    assert not os.path.lexists(led.root / name)                 # set aside...
    kept = [p.name for p in (led.root / "quarantine").iterdir()]
    assert len(kept) == 1 and kept[0].startswith(name)          # ...not deleted
    assert led.records() == [] and led.problems == [] and led.bad == []


def test_not_root_is_refused_before_anything_is_done(tmp_path, monkeypatch):
    # Issue 10: as a learner (not root), `labhelper cleanup` printed "done:" and then EPERM for
    # every object. It refuses up front now (the CLI exits 2), and removes nothing.
    from labhelper import cli
    from labhelper.errors import RequirementError
    stuck = cleanup.Obj("mount", "/run/labhelper/unit-test-x", "tmpfs", "ch05")
    monkeypatch.setattr(cleanup, "census", lambda: cleanup.Census([stuck], [], []))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    removed = []
    monkeypatch.setattr(syscalls, "umount2", lambda *a, **k: removed.append(a))
    with pytest.raises(RequirementError, match="needs root"):
        cleanup.cleanup()
    assert cli.main(["cleanup"]) == 2 and removed == []
    assert cleanup.cleanup(dry_run=True).actions            # looking needs no root

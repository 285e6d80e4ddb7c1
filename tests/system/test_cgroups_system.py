"""labhelper.cgroups against the real kernel: a lab cgroup made, a process put in it, everything
in it killed (also a shell that keeps forking), removed. On this machine's hierarchy (cgroup2 where
mounted, else v1) and, in the guest stage, on a pure cgroup v2 kernel."""
import os
import signal
import subprocess
import time

import pytest

from labhelper import cgroups, cleanup, procfs, registry
from labhelper.errors import Refused

pytestmark = pytest.mark.cgroups


def test_make_use_kill_and_remove_a_lab_cgroup(uid):
    group = cgroups.create(f"systest-{uid}", owner="systest")
    try:
        assert os.path.isdir(group) and group.split("/")[-2] == "labhelper"
        # Its record rides on the folder (an extended attribute), not in the ledger's files.
        assert registry.read_from(group).owner == "systest" and registry.ledger().find("cgroup", group) is None
        seen = next(o for o in cleanup.census() if o.kind == "cgroup" and o.name == group)
        assert seen.owner == "systest"
        sleeper = subprocess.Popen(["sleep", "60"])
        cgroups.add(group, sleeper.pid)
        assert cgroups.procs(group) == [sleeper.pid]
        assert any(e.path.endswith(f"/labhelper/systest-{uid}") for e in procfs.cgroups_of(sleeper.pid))
        cgroups.kill(group)
        assert sleeper.wait(timeout=10) == -signal.SIGKILL and cgroups.procs(group) == []
    finally:
        cgroups.remove(group)
    assert not os.path.exists(group) and registry.ledger().find("cgroup", group) is None
    assert not any(r.kind == "cgroup" and r.name == group for r in cleanup.census().records)


def test_a_name_in_use_is_refused_and_the_first_cgroup_kept(uid):
    group = cgroups.create(f"systest-{uid}")
    try:
        with pytest.raises(Refused, match="in use|exists already"):
            cgroups.create(f"systest-{uid}")
        assert os.path.isdir(group) and registry.read_from(group) is not None
        for bad in ("", "..", "a/b", "a b", "x\n"):
            with pytest.raises(Refused):
                cgroups.create(bad)
    finally:
        cgroups.remove(group)


def test_kill_empties_a_cgroup_that_keeps_forking(uid):
    # A shell that starts a new sleep every few milliseconds: every child is born inside, so
    # killing until the list is empty (v1), or cgroup.kill (v2), ends them all.
    group = cgroups.create(f"systest-{uid}")
    script = f'echo $$ > {group}/cgroup.procs; while :; do sleep 30 & sleep 0.01; done'
    shell = subprocess.Popen(["sh", "-c", script])
    try:
        deadline = time.monotonic() + 10
        while len(cgroups.procs(group)) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(cgroups.procs(group)) >= 5
        cgroups.kill(group)
        assert cgroups.procs(group) == [] and shell.wait(timeout=10) == -signal.SIGKILL
    finally:
        shell.kill()
        shell.wait()
        cgroups.remove(group)


def test_a_cgroups_record_on_its_folder_says_whose_it_is_and_whether_its_maker_runs(uid):
    # Made by a child that has exited since: an orphan. Made by this process: not one. Cleanup of
    # orphans (what a chapter's setup runs) tells them apart by the records on the folders.
    owner = f"systest-{uid}"
    child = os.fork()
    if child == 0:
        try:
            cgroups.create(f"orphan-{uid}", owner=owner)
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    mine = cgroups.create(f"mine-{uid}", owner=owner)
    orphan = os.path.join(os.path.dirname(mine), f"orphan-{uid}")
    try:
        assert registry.read_from(orphan).pid == child and registry.read_from(mine).pid == os.getpid()
        seen = {o.name: o.owner for o in cleanup.census() if o.kind == "cgroup"}
        assert seen[orphan] == owner and seen[mine] == owner
        result = cleanup.cleanup(owner=owner, orphans_only=True)
        assert result.ok, result.failures
        assert not os.path.exists(orphan) and os.path.isdir(mine)
    finally:
        cgroups.remove(mine)
        cgroups.remove(orphan)


def test_a_lab_cgroup_without_a_record_is_nobodys_once_no_creator_can_be_at_work(uid, monkeypatch):
    # What a SIGKILL between create's mkdir(2) and its record would leave; and a record that is
    # junk (not written by labhelper) is no record. A child of a recorded cgroup is its parent's.
    from labhelper.cgroups import tree
    keep = cgroups.create(f"keep-{uid}", owner=f"systest-{uid}")
    child = os.path.join(keep, "child")
    bare = os.path.join(os.path.dirname(keep), f"bare-{uid}")
    junk = os.path.join(os.path.dirname(keep), f"junk-{uid}")
    for path in (child, bare, junk):
        os.mkdir(path)
    os.setxattr(junk, registry.ON_OBJECT, b'{"kind": "cgroup", "name": "/etc"}')
    try:
        census = cleanup.census()
        seen = {o.name: o for o in census if o.kind == "cgroup"}
        assert seen[bare].owner is None and seen[junk].owner is None and seen[child].owner == f"systest-{uid}"
        assert not any(r.name in (bare, junk) for r in census.records)
        # Just made: a creator may be between its mkdir and its record, so an orphans-only
        # cleanup (a chapter's first cell) leaves them; a full cleanup removes them.
        assert not {a.obj.name for a in cleanup.plan(census, orphans_only=True)} & {bare, junk}
        assert {(a.verb, a.obj.name) for a in cleanup.plan(census)} >= {("rmdir", bare), ("rmdir", junk)}
        # Once older than that: nobody's, removed by every cleanup, the child of a recorded one kept.
        monkeypatch.setattr(tree, "NOBODYS_AFTER", -1.0)
        census = cleanup.census()
        nobodys = {o.name for o in census if o.kind == "cgroup" and o.nobodys}
        assert {bare, junk} <= nobodys and child not in nobodys and keep not in nobodys
        plan = {a.obj.name for a in cleanup.plan(census, owner="someone-else", orphans_only=True)}
        assert {bare, junk} <= plan and child not in plan and keep not in plan
        for path in (bare, junk):
            cgroups.remove(path)                 # no record to forget: the rmdir alone
            assert not os.path.exists(path)
    finally:
        for path in (bare, junk):
            if os.path.isdir(path):
                os.rmdir(path)
        cgroups.remove(keep)

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
        assert registry.ledger().find("cgroup", group).owner == "systest"
        assert ("cgroup", group) in cleanup.census().names()
        sleeper = subprocess.Popen(["sleep", "60"])
        cgroups.add(group, sleeper.pid)
        assert cgroups.procs(group) == [sleeper.pid]
        assert any(e.path.endswith(f"/labhelper/systest-{uid}") for e in procfs.cgroups_of(sleeper.pid))
        cgroups.kill(group)
        assert sleeper.wait(timeout=10) == -signal.SIGKILL and cgroups.procs(group) == []
    finally:
        cgroups.remove(group)
    assert not os.path.exists(group) and registry.ledger().find("cgroup", group) is None


def test_a_name_in_use_is_refused_and_the_first_cgroup_kept(uid):
    group = cgroups.create(f"systest-{uid}")
    try:
        with pytest.raises(Refused, match="in use|exists already"):
            cgroups.create(f"systest-{uid}")
        assert os.path.isdir(group) and registry.ledger().find("cgroup", group) is not None
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

"""cgroup v2 delegation, as the lab VM's service does it, simulated without systemd: a process
placed in a "service" cgroup runs `python -m labhelper.cgroups.delegate -- COMMAND`, which
moves it into a leaf and enables the controllers there; COMMAND's lab groups then go below the
service's cgroup, limits work, the census finds them, and cleanup removes them. Pure v2 only
(the guest stage): v1 has no such rule."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import capabilities
import census
import pytest
from systest import labhelper_cli

pytestmark = pytest.mark.cgroups

INNER = r"""
import json, os
from labhelper import cgroups
from labhelper.cgroups import files
g = cgroups.group("deleg")
g.limit(memory="64M", pids=8)
seen = g.run(lambda: open("/proc/self/cgroup").read().strip())
print(json.dumps({"path": g.path, "memory_max": files.read(g.path, "memory.max").strip(),
                  "child_cgroup": seen, "me": open("/proc/self/cgroup").read().strip(),
                  "root_env": os.environ.get("LABHELPER_CGROUP_ROOT"), "census": [o.name for o in __import__("labhelper.cleanup", fromlist=["x"]).census() if o.kind == "cgroup"]}))
"""


@pytest.fixture
def service(uid):
    if capabilities.cgroup_mode() != "v2":
        pytest.skip(capabilities.reason("n/a", "delegation is a cgroup v2 rule; this machine limits through v1"))
    folder = f"/sys/fs/cgroup/lh-test-{uid}.service"
    os.mkdir(folder)
    os.setxattr(folder, "trusted.delegate", b"1")          # what systemd does for Delegate=yes
    yield folder
    for sub in ("server", ""):
        try:
            os.rmdir(os.path.join(folder, sub) if sub else folder)
        except OSError:
            pass


def test_a_delegated_service_keeps_the_lab_below_itself(service, uid):
    before = census.take()
    place = (f"import os, sys\nopen('{service}/cgroup.procs', 'w').write(str(os.getpid()))\n"
             f"os.execv(sys.executable, [sys.executable, '-m', 'labhelper.cgroups.delegate', '--', "
             f"sys.executable, '-c', {INNER!r}])\n")
    env = dict(os.environ, LABHELPER_OWNER=f"deleg-{uid}")
    env.pop("LABHELPER_CGROUP_ROOT", None)
    p = subprocess.run([sys.executable, "-c", place], capture_output=True, text=True, timeout=300, env=env)
    try:
        assert p.returncode == 0, p.stderr
        seen = json.loads(p.stdout)
        rel = service[len("/sys/fs/cgroup"):]
        assert seen["root_env"] == service
        assert seen["me"] == f"0::{rel}/server"                      # moved into the leaf
        assert seen["path"] == f"{service}/labhelper/deleg"            # the lab below the service
        assert seen["memory_max"] == str(64 << 20)                     # controllers flowed down
        assert seen["child_cgroup"] == f"0::{rel}/labhelper/deleg"
        assert f"{service}/labhelper/deleg" in seen["census"]          # the census looks below too
        assert {"memory", "pids"} <= set(open(f"{service}/cgroup.subtree_control").read().split())
    finally:
        assert labhelper_cli("cleanup").returncode == 0
    assert census.diff(before, census.take()) == ""
    assert not os.path.exists(f"{service}/labhelper")


def test_a_cgroup_systemd_did_not_delegate_is_left_alone_and_the_command_still_starts(service, uid):
    os.removexattr(service, "trusted.delegate")
    place = (f"import os, sys\nopen('{service}/cgroup.procs', 'w').write(str(os.getpid()))\n"
             f"os.execv(sys.executable, [sys.executable, '-m', 'labhelper.cgroups.delegate', '--', "
             f"sys.executable, '-c', 'import os; print(os.environ.get(\"LABHELPER_CGROUP_ROOT\"))'])\n")
    env = dict(os.environ)
    env.pop("LABHELPER_CGROUP_ROOT", None)
    p = subprocess.run([sys.executable, "-c", place], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0 and p.stdout.strip() == "None", p.stderr     # started, without a place
    assert "was not delegated" in p.stderr and "starting anyway" in p.stderr
    assert not os.path.exists(f"{service}/server")                      # nothing rearranged

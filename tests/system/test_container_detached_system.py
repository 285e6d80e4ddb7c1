"""Detached containers (chapter 07): a supervisor per container that outlives the process that
started it, and ps, logs, exec, stop, rm and inspect talking to it; R4 (nothing escapes cleanup).
The two marked ``cgroups`` run again in the guest stage (a supervisor's own cgroup on v2)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from labhelper import capabilities as caps
from labhelper import cleanup, container, process
from labhelper.errors import Refused
from systest import labhelper_cli

LOOP = "trap 'echo got TERM; exit 5' TERM; echo started; while true; do sleep 0.05; done"


def _until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.02)


@pytest.mark.cgroups
def test_run_detached_then_ps_logs_exec_stop_rm(bb, uid):
    before = cleanup.census().names()
    name = container.detach("busybox", ["sh", "-c", LOOP], store=bb, name=f"d-{uid}", memory="64m")
    assert name == f"d-{uid}"
    rows = {row.name: row for row in container.ps()}
    assert rows[name].status == "running" and rows[name].pid and "Up" in repr(rows[name])
    _until(lambda: "started" in container.logs(name))
    # exec: in the container's cgroup, namespaces and root, with its capabilities and filter.
    r = container.exec_(name, ["sh", "-c", "echo $(hostname) $$; cat /proc/self/cgroup; "
                                           "grep -E '^(CapBnd|Seccomp):' /proc/self/status; ls /proc | grep -c '^[0-9]'"])
    lines = r.output.splitlines()
    assert r.exit_code == 0 and lines[0].split()[0] == name and int(lines[0].split()[1]) > 1
    assert all(line.endswith(":/") for line in lines if line[:1].isdigit() and ":" in line and "/" in line)
    status = dict(line.split(":\t") for line in lines if ":\t" in line)
    assert set(caps.decode(status["CapBnd"])) <= set(caps.DOCKER_DEFAULT) and status["Seccomp"] == "2"
    assert container.exec_(name, ["no-such"]).exit_code == 127
    with pytest.raises(Refused, match="is running"):
        container.rm(name)
    assert container.stop(name, timeout=5) == 5                   # its trap ran: SIGTERM first
    assert "got TERM" in container.logs(name)
    state = container.inspect(name)
    assert state["status"] == "exited" and state["exit_code"] == 5 and not state["running"]
    assert os.stat(f"{container.CONTAINERS}/{name}/state.json").st_mode & 0o077 == 0     # root's only
    assert [r.status for r in container.ps() if r.name == name] == ["exited"]
    assert not [r for r in container.ps(all_=False) if r.name == name]
    with pytest.raises(Refused, match="not running"):
        container.exec_(name, ["true"])
    container.rm(name)
    assert name not in {r.name for r in container.ps()}
    assert cleanup.census().names() == before


def test_stop_kills_what_ignores_sigterm_and_rm_force(bb, uid):
    before = cleanup.census().names()
    a = container.detach("busybox", ["sleep", "60"], store=bb, name=f"k-{uid}")
    assert container.stop(a, timeout=0.2) == 137                  # PID 1 without a handler: SIGKILL
    container.rm(a)
    b = container.detach("busybox", ["sleep", "60"], store=bb, name=f"f-{uid}")
    container.rm(b, force=True)
    assert cleanup.census().names() == before


@pytest.mark.cgroups
def test_the_supervisor_outlives_its_starter_and_r4_cleanup_ends_it(bb, uid):
    # The process that started it is killed (a Jupyter restart): the container runs on; the
    # starter's leftovers cleanup (lab.start's) leaves it, being its supervisor's; a full cleanup
    # of the owner ends it all.
    owner = f"systest-{uid}-sup"
    code = (f"import os; from labhelper import container, images; "
            f"print(container.detach('busybox', ['sleep', '60'], store=images.Store({bb.root!r}), "
            f"name='s-{uid}', owner={owner!r}), flush=True); os.kill(os.getpid(), 9)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, LABHELPER_OWNER=owner))
    assert p.returncode == -signal.SIGKILL and p.stdout.strip() == f"s-{uid}", p.stderr
    state = container.inspect(f"s-{uid}")
    assert state["running"] and process.is_same_process(state["supervisor"], state["supervisor_start"])
    cleanup.cleanup(owner=owner, orphans_only=True)
    assert container.inspect(f"s-{uid}")["running"]
    result = cleanup.cleanup(owner=owner)
    assert result.ok, result.failures
    assert not any(o.owner == owner for o in cleanup.census().objects)
    # Killed; reaped a moment later (by whoever inherits them): gone from /proc, then.
    _until(lambda: not os.path.exists(f"/proc/{state['pid']}"), 10)
    _until(lambda: not process.is_same_process(state["supervisor"], state["supervisor_start"]), 10)


def test_the_cli_verbs(bb, uid):
    cli = lambda *a: labhelper_cli(*a)  # noqa: E731
    name = f"c-{uid}"
    started = cli("run", "--store", bb.root, "-d", "--name", name, "busybox", "sh", "-c", LOOP)
    assert started.returncode == 0 and started.stdout.strip() == name, started.stderr
    assert any(line.startswith(name) and line.endswith("Up") for line in cli("ps").stdout.splitlines())
    ran = cli("exec", name, "sh", "-c", "echo inside $(hostname); exit 9")
    assert ran.returncode == 9 and ran.stdout == f"inside {name}\n"
    assert cli("exec", name, "nope").returncode == 127
    _until(lambda: "started" in cli("logs", name).stdout)
    assert cli("rm", name).returncode == 2                       # running: refused
    assert cli("stop", "-t", "5", name).returncode == 0
    assert "got TERM" in cli("logs", name).stdout
    assert '"exit_code": 5' in cli("inspect", name).stdout
    assert any(line.startswith(name) and "Exited (5)" in line for line in cli("ps", "-a").stdout.splitlines())
    assert cli("rm", name).returncode == 0
    assert cli("inspect", name).returncode == 2


def test_the_folder_of_all_containers_goes_with_the_last_of_them(bb, uid):
    # Whichever container made /var/lib/labhelper/containers, the last one removed takes it along.
    assert not os.path.exists(container.CONTAINERS), "a container is left from elsewhere"
    first = container.detach("busybox", ["sleep", "60"], store=bb, name=f"one-{uid}")
    second = container.detach("busybox", ["sleep", "60"], store=bb, name=f"two-{uid}")
    container.rm(first, force=True)                  # the one that made the folder goes first
    assert os.path.isdir(container.CONTAINERS)
    container.rm(second, force=True)
    assert not os.path.exists(container.CONTAINERS)
    assert container.run("busybox", ["true"], store=bb).exit_code == 0
    assert not os.path.exists(container.CONTAINERS)

"""labhelper.namespaces against the real kernel: each of the eight types hides what it should
(R14 as far as a bare process shows it), a held process is joined (setns) and pinned, lsns agrees
with util-linux, bad input changes nothing (R3, R18), a creator killed at each step leaves nothing
cleanup cannot remove (R1), and four creators at once keep to their own objects (R27).

The conftest's census runs around each test: nothing may leak.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import capabilities
import pytest

from labhelper import cgroups, cleanup, namespaces, process, procfs, syscalls
from labhelper.errors import LabError, Refused, SyscallError

from systest import labhelper_cli

# Every held process lives in a lab cgroup of its own: the whole module runs in the guest stage
# too (pure cgroup v2, where the cgroup namespace and cgroup.kill differ from this hybrid host).
pytestmark = pytest.mark.cgroups


def _hostname():
    return socket.gethostname()


def _uname_and_ids():
    return socket.gethostname(), namespaces.ids()


# --- each type hides its resource ---------------------------------------------------------------------

def test_uts_a_hostname_inside_only():
    before = socket.gethostname()
    inside, ids = namespaces.run(["uts"], _uname_and_ids, hostname="inside-uts")
    assert inside == "inside-uts" and socket.gethostname() == before
    mine = namespaces.ids()
    assert ids["uts"] != mine["uts"] and all(ids[t] == mine[t] for t in mine if t != "uts")


def _pid_view():
    return os.getpid(), os.getppid(), sorted(int(p) for p in os.listdir("/proc") if p.isdigit())


def test_pid_the_first_process_is_1_and_sees_only_its_own():
    pid, ppid, seen = namespaces.run(["pid", "mnt"], _pid_view)
    assert pid == 1 and ppid == 0 and seen == [1]
    # Without its own mount namespace, /proc is still the host's: it shows every process.
    pid, _, seen = namespaces.run(["pid"], _pid_view)
    assert pid == 1 and os.getpid() in seen and len(seen) > 1


def _orphan_then_look():
    # A child that forks a grandchild and exits: the grandchild is orphaned, and PID 1 of the
    # namespace (this process) becomes its parent, and must reap it when it exits.
    child = os.fork()
    if child == 0:
        if os.fork() == 0:
            time.sleep(0.3)
            os._exit(0)
        os._exit(0)
    os.waitpid(child, 0)
    time.sleep(0.1)
    adopted = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != 1
               and procfs.parent_of(int(p)) == 1]
    reaped = os.waitpid(-1, 0)[0]          # the orphan, reaped by its new parent: us, PID 1
    return adopted, reaped


def test_pid_1_adopts_orphans_and_reaps_them():
    adopted, reaped = namespaces.run(["pid", "mnt"], _orphan_then_look)
    assert len(adopted) == 1 and reaped == adopted[0]


def _signal_pid_1_from_inside():
    # PID 1 gets no signal its own namespace sends it unless it has a handler: SIGTERM, default
    # action "terminate", is dropped. (SIGKILL from inside is dropped too.)
    if os.fork() == 0:
        os.kill(1, signal.SIGTERM)
        os.kill(1, signal.SIGKILL)
        os._exit(0)
    os.wait()
    time.sleep(0.1)
    return "still alive"


def test_pid_1_ignores_signals_without_a_handler():
    assert namespaces.run(["pid", "mnt"], _signal_pid_1_from_inside) == "still alive"


def test_pid_1_exit_kills_the_namespace_checked_through_a_held_process(tmp_path):
    # The held process is PID 1 of its namespace; a second process is started in it with
    # enter(); when PID 1 is ended, the kernel kills the second one too. (The sleeper says its
    # pid through a file: what a forked child prints reaches its parent only when it ends.)
    said = tmp_path / "pid"
    with namespaces.hold(["pid", "mnt"]) as held:
        enterer = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(f"""
                import os, time
                from labhelper import namespaces
                def sleeper():
                    open({str(said)!r}, "w").write(str(os.getpid()))
                    time.sleep(60)
                namespaces.enter({held.pid}, ["pid", "mnt"], sleeper, timeout=None)
            """)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not said.exists() or not said.read_text():
            assert time.monotonic() < deadline and enterer.poll() is None
            time.sleep(0.02)
        assert int(said.read_text()) == 2                  # the held process is PID 1
        os.kill(held.pid, signal.SIGKILL)                  # PID 1 dies...
        assert enterer.wait(10) != 0                       # ...and with it the process inside
        assert "killed by SIGKILL" in enterer.stderr.read()
    assert not os.path.exists(f"/proc/{held.pid}")


def _mount_and_look():
    syscalls.mount("lh-inside", "/mnt", "tmpfs", 0, "size=1m")
    return [m.mountpoint for m in procfs.mountinfo() if m.source == "lh-inside"]


def test_mnt_a_mount_inside_is_invisible_outside():
    assert namespaces.run(["mnt"], _mount_and_look) == ["/mnt"]
    assert not [m for m in procfs.mountinfo() if m.source == "lh-inside"]


def _make_queue():
    q = syscalls.msgget()
    return q, procfs.read_text("/proc/sysvipc/msg").splitlines()[1:]


def _queues():
    return [line.split()[1] for line in procfs.read_text("/proc/sysvipc/msg").splitlines()[1:]]


def test_ipc_a_queue_inside_is_invisible_outside_and_the_other_way():
    before = _queues()
    q, inside = _make_queue_in_ns()
    assert len(inside) == 1 and inside[0].split()[1] == str(q)
    assert _queues() == before                       # it went with its namespace
    mine = syscalls.msgget()
    try:
        assert str(mine) in _queues()
        assert str(mine) not in namespaces.run(["ipc"], _queues)
    finally:
        syscalls.msgctl_rmid(mine)
    assert _queues() == before


def _make_queue_in_ns():
    return namespaces.run(["ipc"], _make_queue)


def _links():
    return [name for _, name in socket.if_nameindex()]


def test_net_a_new_network_namespace_has_only_lo():
    assert namespaces.run(["net"], _links) == ["lo"]
    assert len(_links()) >= 1


def _who_am_i():
    return os.getuid(), os.getgid(), procfs.read_text("/proc/self/uid_map").split(), \
        procfs.read_text("/proc/self/gid_map").split()


def test_user_root_inside_nobody_outside():
    uid, gid, uid_map, gid_map = namespaces.run(["user"], _who_am_i)
    assert (uid, gid) == (0, 0)
    assert uid_map == ["0", str(namespaces.UNPRIVILEGED_UID), "1"] and gid_map[:2] == ["0", "65534"]
    uid, _, uid_map, _ = namespaces.run(["user"], _who_am_i, uid=1234)
    assert uid == 0 and uid_map == ["0", "1234", "1"]


def _set_hostname(name):
    syscalls.sethostname(name)
    return socket.gethostname()


def _has_cap_sys_admin():
    for line in procfs.read_text("/proc/self/status").splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 21))
    return False


def test_user_root_inside_owns_only_what_its_namespace_owns():
    # The hostname belongs to a UTS namespace owned by the host's user namespace: root inside a
    # new user namespace may not change it (EPERM)...
    with pytest.raises(SyscallError, match="sethostname.*EPERM"):
        namespaces.run(["user"], _set_hostname, "nope")
    # ...but it may in a UTS namespace made with it, which its user namespace owns. Under
    # AppArmor's restriction (Ubuntu 23.10+) an unprivileged user namespace has no capabilities.
    restricted = procfs.read_text("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").strip() == "1"
    if restricted:
        assert namespaces.run(["user"], _has_cap_sys_admin) is False
        assert namespaces.run(["user"], _has_cap_sys_admin, uid=None) is True     # made by root: not restricted
    else:
        assert namespaces.run(["user"], _has_cap_sys_admin) is True
        assert namespaces.run(["user", "uts"], _set_hostname, "mine") == "mine"


def _my_cgroups():
    return [line.split(":", 2)[2] for line in procfs.read_text("/proc/self/cgroup").splitlines()]


def test_cgroup_the_own_cgroup_is_the_root():
    capabilities.need("cgroups")
    group = cgroups.create(f"nscg-{os.getpid()}")
    try:
        outside = namespaces.run(["mnt"], _my_cgroups, cgroup=group)
        inside = namespaces.run(["cgroup"], _my_cgroups, cgroup=group)
    finally:
        cgroups.remove(group)
    lab = [p for p in outside if p.startswith("/labhelper/")]
    assert lab and all(p.endswith(f"/nscg-{os.getpid()}") for p in lab)
    # Seen from inside, each hierarchy's path is relative to the namespace's root: the cgroup it
    # was in when the namespace was made. The lab cgroup itself is "/" (v2: the one line "0::/").
    assert len(inside) == len(outside) and all(ins == "/" for ins in inside)


def _clocks():
    return time.clock_gettime(time.CLOCK_MONOTONIC), time.clock_gettime(time.CLOCK_BOOTTIME), time.time()


def test_time_offsets_move_monotonic_and_boottime_only():
    before = _clocks()
    inside = namespaces.run(["time"], _clocks, offset=86400)
    after = _clocks()
    assert before[0] + 86400 <= inside[0] <= after[0] + 86400
    assert before[1] + 86400 <= inside[1] <= after[1] + 86400
    assert before[2] <= inside[2] <= after[2]          # the wall clock is not namespaced


# --- a process that stays, joined and pinned ------------------------------------------------------------

def test_hold_then_enter_like_docker_exec():
    with namespaces.hold(["uts", "pid", "mnt", "ipc", "net"], hostname="held") as held:
        assert held.pid > 1 and os.path.isdir(f"/proc/{held.pid}")
        ids = held.ids()
        mine = namespaces.ids()
        assert all(ids[t] != mine[t] for t in ("uts", "pid", "mnt", "ipc", "net"))
        assert ids["user"] == mine["user"]
        assert namespaces.enter(held.pid, ["uts"], _hostname) == "held"
        pid, _, seen = namespaces.enter(held.pid, ["pid", "mnt"], _pid_view)
        assert pid > 1 and 1 in seen and pid in seen and len(seen) == 2     # the held one is PID 1
        assert namespaces.enter(held.pid, ["net"], _links) == ["lo"]
        assert namespaces.compare(held.pid).different() == ("mnt", "uts", "ipc", "pid", "net")
        assert ("process", str(held.pid)) in cleanup.census().names()
    assert held.closed and not os.path.exists(f"/proc/{held.pid}")
    assert not os.path.exists(held.cgroup)
    held.close()                                           # idempotent


def test_lsns_agrees_with_util_linux():
    capabilities.need("lsns")
    with namespaces.hold(["uts", "ipc", "net"]) as held:
        theirs = json.loads(subprocess.run(["lsns", "--json", "-o", "NS,TYPE,NPROCS,PID"], check=True,
                                           capture_output=True, text=True).stdout)["namespaces"]
        ours = namespaces.lsns()
        mine = held.ids()
        theirs_by = {(int(r["ns"]), r["type"]): r for r in theirs}
        ours_by = {(r.inode, r.type): r for r in ours}
        for t in ("uts", "ipc", "net"):
            key = (mine[t], t)
            assert ours_by[key].nprocs == int(theirs_by[key]["nprocs"]) == 1
            assert ours_by[key].pid == int(theirs_by[key]["pid"]) == held.pid
        # This process's namespaces are in both, with the same lowest pid (a long-lived one).
        for t, inode in namespaces.ids().items():
            assert ours_by[(inode, t)].pid == int(theirs_by[(inode, t)]["pid"]) <= os.getpid()
        # Processes come and go between the two reads; most namespaces are the same in both.
        assert len(set(ours_by) & set(theirs_by)) >= 0.9 * max(len(ours_by), len(theirs_by))


def test_pin_keeps_a_namespace_after_its_last_process(uid):
    name = f"test-{uid}"
    held = namespaces.hold(["uts", "net"], hostname="pinned")
    try:
        ids = held.ids()
        pinned = namespaces.pin(held.pid, name)
    finally:
        held.close()
    try:
        assert set(pinned.files) == {"uts", "net"}
        assert os.stat(pinned.files["uts"]).st_ino == ids["uts"]
        assert namespaces.enter(pinned, ["uts"], _hostname) == "pinned"
        assert namespaces.enter(pinned, ["net"], _links) == ["lo"]
        assert all(r.inode != ids["uts"] for r in namespaces.lsns())    # no process is in it now
        assert ("mount", pinned.files["uts"]) in cleanup.census().names()
        with pytest.raises(Refused, match="pins no ipc namespace"):
            namespaces.enter(pinned, ["ipc"], _hostname)
    finally:
        namespaces.unpin(name)
    assert not os.path.lexists(namespaces.PIN_DIR)              # no other pin: its folder went too
    with pytest.raises(LabError, match="not pinned any more"):
        namespaces.enter(pinned, ["uts"], _hostname)
    namespaces.unpin(name)                                  # idempotent


def test_pin_a_user_namespace_and_enter_it():
    with namespaces.hold(["user", "uts"], hostname="u") as held:
        pinned = namespaces.pin(held.pid, f"u-{os.getpid()}")
    try:
        # root outside is not mapped in the pinned user namespace: it is "nobody" in there.
        assert namespaces.enter(pinned, ["user", "uts"], lambda: (os.getuid(), socket.gethostname())) == (65534, "u")
    finally:
        namespaces.unpin(pinned.name)


# --- bad input: clear errors, nothing changed (R3, R18) ----------------------------------------------------

def test_a_process_that_is_gone():
    held = namespaces.hold(["uts"])
    pid = held.pid
    held.close()
    with pytest.raises(LabError, match=f"no process {pid}"):
        namespaces.enter(pid, ["uts"], _hostname)
    with pytest.raises(LabError, match=f"no process {pid}"):
        namespaces.ids(pid)
    with pytest.raises(LabError, match=f"no process {pid}"):
        namespaces.pin(pid, "gone", names=["uts"])
    assert not os.path.lexists(f"{namespaces.PIN_DIR}/gone")


def test_enter_a_process_that_exits_meanwhile():
    # enter() opens a pidfd first; if the process exits before the child's setns(2), the kernel
    # says ESRCH (a pidfd never names a newcomer with the same pid) and enter() says so.
    held = namespaces.hold(["uts"])
    pidfd = os.pidfd_open(held.pid)
    held.close()
    try:
        with pytest.raises(LabError, match="exited before its namespaces could be joined"):
            process.run_in_child(namespaces._enter_body, pidfd, ("uts",), _hostname, (), {},
                                 keep_fds=(pidfd,))
    finally:
        os.close(pidfd)


def test_two_pins_of_one_name_at_once_leave_the_first_intact(uid, monkeypatch):
    # The loser of a race for a name finds the folder made (as if between its check and its
    # mkdir): it fails, and unpins nothing of the winner's.
    name = f"race-{uid}"
    with namespaces.hold(["uts"]) as first, namespaces.hold(["uts"]) as second:
        pinned = namespaces.pin(first.pid, name)
        real = os.path.lexists
        monkeypatch.setattr(os.path, "lexists", lambda p: False if p.endswith(name) else real(p))
        with pytest.raises(Refused, match="is in use"):
            namespaces.pin(second.pid, name)
        monkeypatch.undo()
        assert os.stat(pinned.files["uts"]).st_ino == first.ids()["uts"]
        namespaces.unpin(name)


def test_a_name_in_use_leaves_the_first_intact(uid):
    name = f"dup-{uid}"
    with namespaces.hold(["uts"]) as first, namespaces.hold(["uts"]) as second:
        pinned = namespaces.pin(first.pid, name)
        try:
            census = cleanup.census().names()
            with pytest.raises(Refused, match="is in use"):
                namespaces.pin(second.pid, name)
            assert cleanup.census().names() == census
            assert os.stat(pinned.files["uts"]).st_ino == first.ids()["uts"]
        finally:
            namespaces.unpin(name)


def test_mount_namespaces_are_not_pinned_and_nothing_to_pin():
    with namespaces.hold(["mnt"]) as held:
        census = cleanup.census().names()
        with pytest.raises(Refused, match="mount namespaces are not pinned"):
            namespaces.pin(held.pid, "m", names=["mnt", "uts"])
        with pytest.raises(Refused, match="no namespace of its own to pin"):
            namespaces.pin(held.pid, "m")
        assert cleanup.census().names() == census
        assert not os.path.lexists(f"{namespaces.PIN_DIR}/m")


@pytest.mark.parametrize("step, names", [("ns-hold", ["uts", "pid"]), ("ns-pin", ["uts", "net", "ipc"])])
def test_fault_raised_at_each_step_leaves_nothing(step, names, monkeypatch):
    # R3: a failure right after a step undoes everything before it.
    monkeypatch.setenv("LABHELPER_FAULT", f"{step}:raise")
    census = cleanup.census().names()
    if step == "ns-hold":
        with pytest.raises(Exception, match="ns-hold"):
            namespaces.hold(names)
    else:
        monkeypatch.delenv("LABHELPER_FAULT")
        with namespaces.hold(names) as held:
            census = cleanup.census().names()
            monkeypatch.setenv("LABHELPER_FAULT", f"{step}:raise")
            with pytest.raises(Exception, match="ns-pin"):
                namespaces.pin(held.pid, "faulty")
            assert not os.path.lexists(f"{namespaces.PIN_DIR}/faulty")
            assert cleanup.census().names() == census
            return
    assert cleanup.census().names() == census


_CREATOR = """
import sys
from labhelper import namespaces
held = namespaces.hold(["uts", "net", "pid"], owner=sys.argv[1])
namespaces.pin(held.pid, sys.argv[1], owner=sys.argv[1])
print(held.pid, flush=True)
sys.stdin.readline()
namespaces.unpin(sys.argv[1])
held.close()
print("done", flush=True)
"""


@pytest.mark.parametrize("signame", ["sigkill", "sigint"])
@pytest.mark.parametrize("step", ["ns-hold", "ns-pin"])
def test_creator_killed_at_each_step_then_cleanup(step, signame, uid):
    # R1: the creator's whole process group gets SIGKILL (a kernel restart) or SIGINT (an
    # interrupt) right after the step; then `labhelper cleanup` leaves nothing.
    p = subprocess.run([sys.executable, "-c", _CREATOR, f"r1-{uid}"], input="", capture_output=True, text=True,
                       env=dict(os.environ, LABHELPER_FAULT=f"{step}:{signame}"), start_new_session=True, timeout=60)
    assert p.returncode != 0 and "done" not in p.stdout
    left = {obj.kind for obj in cleanup.census().objects}
    if signame == "sigkill":
        # Killed mid-way: what the step made is still there, for cleanup to find.
        assert "cgroup" in left and ("mount" in left) == (step == "ns-pin"), left
    else:
        # Interrupted: the step undid itself (pin unpins; hold closes its process).
        assert "mount" not in left and "process" not in left, left
    r = labhelper_cli("cleanup")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert labhelper_cli("census").stdout.strip() == "nothing of ours exists"
    assert not os.path.lexists(namespaces.PIN_DIR)


def test_four_creators_at_once_keep_to_their_own(uid):
    # R27: distinct names never share a cgroup or a pin; cleanup --owner removes exactly one's.
    owners = [f"o{i}-{uid}" for i in range(4)]
    procs = [subprocess.Popen([sys.executable, "-c", _CREATOR, o], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for o in owners]
    try:
        pids = [int(p.stdout.readline()) for p in procs]
        found = cleanup.census()
        by_owner = {o: [obj for obj in found.objects if obj.owner == o] for o in owners}
        def kinds(objs):
            return sorted({obj.kind for obj in objs}), sum(obj.kind == "mount" for obj in objs)
        for o, pid in zip(owners, pids):
            assert kinds(by_owner[o]) == (["cgroup", "mount", "process"], 2), o
            assert any(obj.name == str(pid) for obj in by_owner[o])
        cgroups_seen = [obj.name for objs in by_owner.values() for obj in objs if obj.kind == "cgroup"]
        assert len(set(cgroups_seen)) == 4
        r = labhelper_cli("cleanup", "--owner", owners[1])
        assert r.returncode == 0, r.stderr
        left = cleanup.census()
        assert not [obj for obj in left.objects if obj.owner == owners[1]]
        for o in (owners[0], owners[2], owners[3]):
            assert kinds([obj for obj in left.objects if obj.owner == o]) == (["cgroup", "mount", "process"], 2)
        assert not os.path.exists(f"/proc/{pids[1]}") or procfs.is_zombie(str(pids[1]))
    finally:
        for p in procs:
            try:
                p.stdin.write("\n")
                p.stdin.close()
            except BrokenPipeError:
                pass
        outs = [p.stdout.read() for p in procs]
        codes = [p.wait(30) for p in procs]
    assert [codes[i] for i in (0, 2, 3)] == [0, 0, 0] and all("done" in outs[i] for i in (0, 2, 3))
    # Owner 1's creator found its objects gone and ended cleanly too: nothing of anyone is left,
    # not even the folder the pins shared (whichever unpin came last removed it).
    assert not cleanup.census().objects
    assert not os.path.lexists(namespaces.PIN_DIR)


# --- the chapter's widget and diagram --------------------------------------------------------------------

def test_the_namespace_explorer():
    from labhelper.teach.widgets import NamespaceExplorer

    ex = NamespaceExplorer()
    seen = ex.choose(["uts", "pid", "mnt", "net", "time", "ipc", "user", "cgroup"])
    rows = {what: (host, inside) for what, host, inside in seen}
    assert rows["hostname (uts)"] == (socket.gethostname(), "inside")
    assert rows["its own pid (pid)"][1] == 1 and rows["processes in /proc (pid)"][1] == 1
    assert rows["network interfaces (net)"][1] == "lo"
    assert rows["its uid (user)"] == (0, 0)
    assert rows["seconds since boot (time)"][1] >= rows["seconds since boot (time)"][0] + 86400 - 5
    # With none chosen, a child sees what the host sees (but its own pid).
    same = {what: (h, i) for what, h, i in ex.choose([])}
    assert same["hostname (uts)"][0] == same["hostname (uts)"][1]
    assert same["network interfaces (net)"][0] == same["network interfaces (net)"][1]
    assert "<b" not in seen._repr_html_() and seen._repr_html_().count("font-weight:bold") >= 5
    assert "<-" in repr(seen)
    with pytest.raises(Refused, match="unknown namespace"):
        ex.choose(["uts", "container"])
    capabilities.need("ipywidgets")
    widget = ex.widget
    ex._boxes["net"].value = True
    ex._button.click()
    assert "net" in ex._view.value and "lo" in ex._view.value and len(widget.children) == 3


def test_the_diagram_of_a_held_process():
    from labhelper.teach.diagrams import namespaces_diagram

    with namespaces.hold(["uts", "net"]) as held:
        d = namespaces_diagram({"notebook": namespaces.ids(), "held": held.ids()})
    # 8 namespaces of the notebook, 2 more of the held process: 10 ellipses, 16 edges.
    assert d.source.count('shape="ellipse"') == 10 and d.source.count(" -> ") == 16

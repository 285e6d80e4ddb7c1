"""labhelper.process against the real kernel: isolation in a forked child, and processes as lab
objects (killed only while they are the process the census saw: R7)."""
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from labhelper import cgroups, cleanup, marks, process, procfs, registry
from labhelper.flags import CLONE_NEWNS, CLONE_NEWUTS, MountFlags


def _hostname_in_new_uts():
    socket.sethostname("lh-inside")
    return socket.gethostname()


def test_unshare_uts_in_child_leaves_host_alone():
    before = socket.gethostname()
    assert process.run_in_child(_hostname_in_new_uts, unshare=CLONE_NEWUTS) == "lh-inside"
    assert socket.gethostname() == before


def _say_who(fds, *_):
    os.write(fds["said"], f"{os.getpid()} {os.getppid()} {os.readlink('/proc/self/ns/pid')}".encode())
    os._exit(0)


def _returns(fds):
    return None


def _raises(fds):
    return 1 / 0


def _writes_to_stdout(fds, text):
    os.write(1, text.encode())
    os._exit(0)


def _pid_for_children(where: str = "thread-self") -> str:
    return os.readlink(f"/proc/{where}/ns/pid_for_children")


@pytest.fixture
def fresh_server():
    # A fork server is a copy of this process as it was when it started: a test that patches
    # what the child runs needs one started after its patch, and leaves none with it.
    process.stop_fork_server()
    yield
    process.stop_fork_server()


def test_the_fork_server_makes_pid_1_of_a_new_namespace_a_child_of_this_process():
    own = os.readlink("/proc/self/ns/pid")
    server = process.fork_server()
    assert server.pid in procfs.children()
    said_r, said_w = os.pipe()
    try:
        pid = server.start_first(_say_who, (), {"said": said_w}).pid()
        os.close(said_w)
        said_w = -1
        child_pid, child_ppid, child_ns = os.read(said_r, 200).decode().split()
        # CLONE_PARENT: this process is its parent (it reaps it), though the server made it.
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        os.close(said_r)
        if said_w >= 0:
            os.close(said_w)
    assert (child_pid, child_ppid) == ("1", "0")        # PID 1 there, its parent outside
    assert child_ns != own
    assert _pid_for_children() == own                   # nothing here changed namespace
    assert process.fork_server() is server              # the same server serves again


def test_a_child_of_the_fork_server_that_returns_or_raises_ends_there():
    # Whatever the function does, the child never comes back into the server's loop: it ends
    # with status 125.
    for fn in (_returns, _raises):
        pid = process.fork_server().start_first(fn, (), {}).pid()
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 125


def test_the_child_writes_to_this_process_s_stdout_as_it_is_now(tmp_path):
    # The server keeps the fds 0-2 it was forked with; each request sends the current ones (as
    # pytest's capture, or a notebook, moves them).
    process.fork_server()
    saved = os.dup(1)
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.dup2(out, 1)
        pid = process.fork_server().start_first(_writes_to_stdout, ("to the current fd 1",), {}).pid()
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(out)
    assert (tmp_path / "out").read_text() == "to the current fd 1"


def test_a_failed_clone_is_raised_here_and_leaves_no_child(fresh_server, monkeypatch):
    from labhelper import syscalls
    from labhelper.errors import SyscallError

    def no_clone(flags, **_):
        raise syscalls.error("clone", {"flags": flags}, 11)      # EAGAIN: no process left to make
    monkeypatch.setattr(syscalls, "clone", no_clone)
    kids = procfs.children()                    # the server (started for this test) among them
    server = process.fork_server()
    with pytest.raises(SyscallError, match="clone.*EAGAIN"):
        server.start_first(_returns, (), {}).pid()
    assert set(procfs.children()) - set(kids) == {server.pid}   # nothing but the server
    assert server.alive()                       # and it serves on


def test_an_abandoned_request_leaves_no_child_and_the_server_serves_on():
    server = process.fork_server()
    kids = procfs.children()
    request = server.start_first(_say_who, (), {"said": 1})
    request.abandon()
    request.abandon()                           # an undo: idempotent
    assert procfs.children() == kids
    pid = server.start_first(_returns, (), {}).pid()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 125


def test_a_dead_fork_server_is_replaced(fresh_server):
    first = process.fork_server()
    os.kill(first.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while first.pid in procfs.children() and procfs.status(first.pid).get("State", "").startswith(("R", "S")) \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    second = process.fork_server()
    assert second.pid != first.pid
    assert first.pid not in procfs.children()   # reaped
    pid = second.start_first(_returns, (), {}).pid()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 125


def test_the_fork_server_keeps_no_shared_mapping_of_this_process(fresh_server):
    # Shared memory a notebook mapped (a VM's own mappings are closed in every forked child by
    # kvm.fds): a long-lived server holding a copy would keep it in use. One here, then a server.
    import mmap
    shared_memory = mmap.mmap(-1, 17 * 4096, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    try:
        server = process.fork_server()
        pid = server.start_first(_returns, (), {}).pid()     # answered: the server is set up
        os.waitpid(pid, 0)

        def shared(where):
            with open(f"/proc/{where}/maps") as maps:
                return [line for line in maps if line.split()[1].endswith("s")]
        assert shared("self")
        assert shared(server.pid) == []
    finally:
        shared_memory.close()


def _server_of_a_forked_child(parent_server: int) -> tuple[int, int]:
    mine = process.fork_server()
    pid = mine.start_first(_returns, (), {}).pid()
    return mine.pid, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_forked_child_of_this_process_uses_a_server_of_its_own():
    # The child shares this process's socket to the server at its birth: it must forget it
    # (its children would be this process's), and this process's server must serve on.
    server = process.fork_server()
    theirs, status = process.run_in_child(_server_of_a_forked_child, server.pid)
    assert theirs != server.pid and status == 125
    assert process.fork_server() is server and server.alive()
    pid = server.start_first(_returns, (), {}).pid()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 125


def _private_mount(target):
    from labhelper import syscalls
    syscalls.mount(None, "/", None, MountFlags.MS_REC | MountFlags.MS_PRIVATE)  # no propagation back
    syscalls.mount("lh", target, "tmpfs", 0, "size=1m")
    Path(target, "inside").write_text("x")
    return sorted(os.listdir(target))


def test_mount_in_new_mount_namespace_is_invisible_outside(tmp_path):
    assert process.run_in_child(_private_mount, str(tmp_path), unshare=CLONE_NEWNS) == ["inside"]
    assert os.listdir(tmp_path) == []
    assert not any(m.mountpoint == str(tmp_path) for m in procfs.mountinfo())


def _mount_without_privilege():
    from labhelper import syscalls
    os.setuid(65534)
    syscalls.mount("lh", "/tmp", "tmpfs")


def test_failed_syscall_in_child_names_call_and_errno():
    with pytest.raises(OSError) as info:
        process.run_in_child(_mount_without_privilege)
    text = str(info.value)
    assert text.startswith("mount(source='lh', target='/tmp', fstype='tmpfs'") and "EPERM" in text and "hint" in text


def test_child_dies_when_parent_is_killed(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = textwrap.dedent(f"""
        import os, time
        from labhelper import process
        def sleeper():
            open({str(pidfile)!r}, "w").write(str(os.getpid()))
            time.sleep(60)
        process.run_in_child(sleeper, timeout=None)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script])
    for _ in range(200):
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.05)
    child = int(pidfile.read_text())
    parent.send_signal(signal.SIGKILL)  # what a Jupyter restart does to the kernel
    parent.wait()
    for _ in range(100):
        if not Path(f"/proc/{child}").exists():
            break
        time.sleep(0.02)
    assert not Path(f"/proc/{child}").exists(), "the child outlived its parent"


def test_stale_record_never_signals_a_reused_pid():
    # R7: a ledger record names a process by pid; that pid now belongs to an unrelated process
    # (simulated by recording the wrong start time). cleanup must not signal it.
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        real_start = procfs.start_time(bystander.pid)
        led = registry.ledger()
        led.add("process", str(bystander.pid), owner="systest", data={"ident": real_start - 1})
        c = cleanup.census()
        assert ("process", str(bystander.pid)) not in c.names()  # not ours: start time differs
        result = cleanup.cleanup()
        assert result.ok
        assert bystander.poll() is None, "an unrelated process was signalled"
        assert not led.find("process", str(bystander.pid))  # the stale record is forgotten
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.cgroups
def test_a_record_alone_never_gets_a_process_killed(uid):
    # Issue 10: a crafted record with the right pid and start time of a process that is not in a
    # lab cgroup (here a sleep; it could be the learner's shell) must not make it ours.
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        led = registry.ledger()
        led.add("process", str(bystander.pid), owner="systest", data={"ident": procfs.start_time(bystander.pid)})
        assert ("process", str(bystander.pid)) not in cleanup.census().names()
        assert cleanup.cleanup().ok
        assert bystander.poll() is None, "a process outside the lab's cgroups was signalled"
        assert not led.find("process", str(bystander.pid))      # the record is forgotten
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.cgroups
def test_a_process_in_a_lab_cgroup_is_killed_with_its_record_s_owner(uid):
    group = cgroups.create(f"systest-{uid}", owner="systest")
    ours = subprocess.Popen(["sleep", "60"])
    try:
        cgroups.add(group, ours.pid)
        registry.ledger().add("process", str(ours.pid), owner="systest-p",
                              data={"ident": procfs.start_time(ours.pid)})
        found = next(o for o in cleanup.census() if o.kind == "process" and o.name == str(ours.pid))
        assert found.owner == "systest-p"                       # its own record names its owner
        assert cleanup.cleanup(owner="systest-p").ok
        assert ours.wait(timeout=10) == -signal.SIGKILL
    finally:
        ours.kill()
        ours.wait()
        cgroups.remove(group)


@pytest.mark.cgroups
def test_a_process_is_killed_only_while_it_has_the_start_time_the_census_saw(uid):
    # R7 at the point of the signal: between the census and the kill, the pid may have been
    # reused. remove_process re-reads the start time *after* pinning the process with a pidfd.
    group = cgroups.create(f"systest-{uid}", owner="systest")
    p = subprocess.Popen(["sleep", "60"])
    try:
        cgroups.add(group, p.pid)
        led = registry.ledger()
        start = procfs.start_time(p.pid)
        process.remove_process(marks.Obj("process", str(p.pid), ident=start - 1), led)   # another process
        process.remove_process(marks.Obj("process", str(p.pid)), led)                     # identity unknown
        time.sleep(0.05)
        assert p.poll() is None, "a process the census did not see was signalled"
        process.remove_process(marks.Obj("process", str(p.pid), ident=start), led)       # the one it saw
        assert p.wait(5) == -signal.SIGKILL
        process.remove_process(marks.Obj("process", str(p.pid), ident=start), led)       # idempotent
    finally:
        p.kill()
        p.wait()
        cgroups.remove(group)


@pytest.mark.cgroups
def test_never_this_process_nor_its_ancestors(uid):
    # The shell running `labhelper cleanup`, moved into a lab cgroup by an exercise, must survive.
    group = cgroups.create(f"systest-{uid}", owner="systest")
    code = ("import sys, time\nfrom labhelper import cleanup, cgroups\n"
            "cgroups.add(sys.argv[1], __import__('os').getpid())\n"
            "print(sorted(o.name for o in cleanup.census() if o.kind == 'process'))\n"
            "cleanup.cleanup()\n"
            "print('survived')\n")
    try:
        p = subprocess.run([sys.executable, "-c", code, group], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr                      # it was not killed
        assert p.stdout.splitlines() == ["[]", "survived"]      # nor even listed
    finally:
        cgroups.remove(group)

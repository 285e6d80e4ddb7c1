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


def _pid_for_children(where: str = "thread-self") -> str:
    return os.readlink(f"/proc/{where}/ns/pid_for_children")


def test_fork_first_process_the_child_is_pid_1_and_only_this_thread_chose_its_namespace():
    import threading
    own = os.readlink("/proc/thread-self/ns/pid")
    assert _pid_for_children() == own
    # Another thread of this process, as a Jupyter kernel has: its namespace for children is its
    # own, before, during (the kernel keeps namespaces per thread) and after.
    seen, stop = [], threading.Event()

    def other():
        while not stop.is_set():
            seen.append(_pid_for_children(f"self/task/{threading.get_native_id()}"))
            time.sleep(0.0005)
    watcher = threading.Thread(target=other)
    watcher.start()
    try:
        said_r, said_w = os.pipe()

        def say():
            os.write(said_w, f"{os.getpid()} {os.getppid()} {os.readlink('/proc/self/ns/pid')}".encode())
            os._exit(0)
        pid = process.fork_first_process(say)
        os.close(said_w)
        child_pid, child_ppid, child_ns = os.read(said_r, 200).decode().split()
        os.close(said_r)
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        stop.set()
        watcher.join()
    assert (child_pid, child_ppid) == ("1", "0")        # PID 1 there, its parent outside
    assert child_ns != own
    assert _pid_for_children() == own                   # this thread's next child is born here again
    assert seen and set(seen) == {own}


def test_fork_first_process_takes_the_namespace_back_when_the_fork_fails(monkeypatch):
    own = os.readlink("/proc/thread-self/ns/pid")

    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(os, "fork", no_fork)
    with pytest.raises(BlockingIOError):
        process.fork_first_process(os._exit, 0)
    monkeypatch.undo()
    assert _pid_for_children() == own
    pid = os.fork()                                     # and a plain fork is born in this namespace
    if pid == 0:
        os._exit(0 if os.getpid() != 1 else 1)
    assert os.waitpid(pid, 0)[1] == 0


def test_fork_first_process_a_child_that_returns_or_raises_ends_there():
    # Whatever the function does, the child never comes back into the caller's code (a copy of
    # a notebook kernel running on would undo the caller's work): it ends with status 125.
    for fn in (lambda: None, lambda: 1 / 0):
        pid = process.fork_first_process(fn)
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

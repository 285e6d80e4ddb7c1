import os
import signal
import socket
import threading
import time

import capabilities
import pytest

from labhelper import process, procfs
from labhelper.errors import ChildError, ChildTimeout
from systest import processes_running
from timing import scaled


def _double(x):
    print("child says hi")
    return x * 2


def test_value_and_output_come_back(capsys):
    assert process.run_in_child(_double, 21) == 42
    assert capsys.readouterr().out == "child says hi\n"


def _boom():
    raise ValueError("boom in child")


def test_exception_is_reraised_with_child_traceback():
    with pytest.raises(ValueError, match="boom in child") as info:
        process.run_in_child(_boom)
    assert "in the child" in str(info.value.__cause__) and "_boom" in str(info.value.__cause__)


def test_runs_in_another_process():
    assert process.run_in_child(os.getpid) != os.getpid()


def test_timeout_kills_the_child():
    t = time.monotonic()
    with pytest.raises(ChildTimeout, match="did not finish within 0.3 s"):
        process.run_in_child(time.sleep, 30, timeout=0.3)
    assert time.monotonic() - t < scaled(5)


def _suicide():
    os.kill(os.getpid(), signal.SIGKILL)


def test_killed_child_is_reported():
    with pytest.raises(ChildError, match="killed by SIGKILL"):
        process.run_in_child(_suicide)


def _exit_early():
    os._exit(3)


def test_child_exiting_without_answer():
    with pytest.raises(ChildError, match="exited with status 3"):
        process.run_in_child(_exit_early)


def _unpicklable():
    return lambda: 1


def test_unpicklable_result_is_a_clear_error():
    with pytest.raises(ChildError, match="could not be sent back"):
        process.run_in_child(_unpicklable)


def _open_fds():
    return sorted(int(fd) for fd in os.listdir("/proc/self/fd"))


def test_inherited_fds_are_closed():
    s = socket.socket()
    r, w = os.pipe()  # not close-on-exec: fork would pass them on
    try:
        fds = process.run_in_child(_open_fds)
        assert s.fileno() not in fds and r not in fds and w not in fds
        assert {0, 1, 2} <= set(fds) and len(fds) <= 5  # 0-2, the result pipe, listdir's own fd
        kept = process.run_in_child(_open_fds, keep_fds=(r,))
        assert r in kept and w not in kept
    finally:
        s.close()
        os.close(r)
        os.close(w)


def test_inherited_fds_far_above_the_low_ones_are_closed_too():
    # A notebook kernel holds many fds (ZeroMQ, files, /dev/kvm): the child must close them all,
    # not only the low numbers (closing only below 256, or below 1024, passes the test above).
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 16
    top = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if top <= 4096:
        pytest.skip(capabilities.reason("rlimit", f"RLIMIT_NOFILE hard limit {hard} is too low for a high fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
    fd = os.open("/dev/null", os.O_RDONLY)          # not close-on-exec
    high = [os.dup2(fd, n, inheritable=True) for n in (300, 1030, 5000, top - 1)]
    try:
        left = set(process.run_in_child(_open_fds)) & set(high)
        assert left == set(), f"the child still holds fds {sorted(left)}"
    finally:
        for n in high + [fd]:
            os.close(n)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _pdeathsig():
    from labhelper import syscalls
    import ctypes
    value = ctypes.c_int()
    syscalls.prctl(2, ctypes.addressof(value))  # PR_GET_PDEATHSIG
    return value.value


def test_child_dies_with_parent():
    assert process.run_in_child(_pdeathsig) == signal.SIGKILL


def test_keyboard_interrupt_kills_child():
    child = process.spawn(time.sleep, 30)
    timer = threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        child.wait(timeout=10)
    assert child._done
    with pytest.raises(ProcessLookupError):
        os.kill(child.pid, 0)  # reaped: no zombie left


def test_gate_holds_the_child_until_released(tmp_path):
    flag = tmp_path / "ran"
    child = process.spawn(flag.touch, gate=True)
    time.sleep(0.2)
    assert not flag.exists()
    child.release()
    child.wait(5)
    assert flag.exists()


def test_start_time_and_identity():
    me = procfs.start_time(os.getpid())
    assert isinstance(me, int) and process.is_same_process(os.getpid(), me)
    assert not process.is_same_process(os.getpid(), me + 1)
    assert not process.is_same_process(os.getpid(), None)
    assert procfs.start_time(2 ** 22 + 12345) is None


def test_lifetime_pid_is_the_parent_in_a_child():
    assert process.lifetime_pid() == os.getpid()
    assert process.run_in_child(process.lifetime_pid) == os.getpid()


class TwoArgError(Exception):
    """An exception whose __init__ needs two arguments: pickle can dump it but not load it."""

    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")


def _raise_two_arg():
    raise TwoArgError("left", "right")


def test_exception_that_cannot_be_unpickled_keeps_its_message():
    # B9: the parent must see the child's error, not a TypeError from unpickling it.
    with pytest.raises(ChildError, match="TwoArgError: left and right") as info:
        process.run_in_child(_raise_two_arg)
    assert "_raise_two_arg" in str(info.value.__cause__)


def _is_pipe(fd):
    import stat
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False


def _half_an_answer():
    # Write the start of a pickle to the result pipe (the only fd above 2), then die: what a
    # kill in the middle of sending a large answer looks like to the parent.
    fd = next(fd for fd in range(3, 256) if _is_pipe(fd))
    os.write(fd, b"\x80\x04\x95\x10\x00\x00\x00")
    os.kill(os.getpid(), signal.SIGKILL)


def test_answer_cut_short_by_a_kill_is_a_child_error():
    with pytest.raises(ChildError, match="killed by SIGKILL"):
        process.run_in_child(_half_an_answer)


def test_wait_works_with_a_high_fd_number():
    # B10: select.select() cannot watch fds >= 1024; a notebook holding many fds gets such fds.
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    high = 1500
    if hard != resource.RLIM_INFINITY and hard <= high:
        pytest.skip(capabilities.reason("rlimit", f"RLIMIT_NOFILE hard limit {hard} is too low for fd {high}"))
    if soft <= high:
        resource.setrlimit(resource.RLIMIT_NOFILE, (high + 1, hard))
    try:
        child = process.spawn(_double, 5)
        os.dup2(child._read_fd, high)
        os.close(child._read_fd)
        child._read_fd = high
        assert child.wait(10) == 10
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _start_a_daemon_and(then):
    import subprocess
    # setsid -f: a new session, and the sleep's own parent exits at once: it is orphaned.
    subprocess.run(["setsid", "-f", "sleep", "3131.9"], check=True)
    time.sleep(0.2)
    if then == "hang":
        time.sleep(60)
    return "started"


@pytest.mark.parametrize("then", ["return", "hang"])
def test_what_a_child_starts_ends_with_it(then):
    # Issue 10: a process started by run_in_child's function (even a daemon, orphaned at once)
    # used to escape to PID 1, where no census sees it. The child is a subreaper now, and ends
    # what it started when it returns; when it is killed (a timeout, an interrupt), its parent
    # kills what it started too.
    if then == "return":
        assert process.run_in_child(_start_a_daemon_and, then) == "started"
    else:
        with pytest.raises(ChildTimeout):
            process.run_in_child(_start_a_daemon_and, then, timeout=2)
    deadline = time.monotonic() + scaled(2)
    while processes_running(["sleep", "3131.9"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_running(["sleep", "3131.9"]) == [], "a process the child started outlived it"


def test_pdeathsig_follows_the_forking_thread():
    # The kernel contract spawn()'s docstring warns about: a child spawned from a thread that
    # ends is killed then, although the process lives on.
    box = []

    def fork_then_end():
        box.append(process.spawn(time.sleep, 5, gate=True))   # it waits at the gate, PDEATHSIG set
        time.sleep(0.5)
    t = threading.Thread(target=fork_then_end)
    t.start()
    t.join()
    with pytest.raises(ChildError, match="killed by SIGKILL"):
        box[0].wait(10)

"""A real Jupyter kernel: interrupt and restart are normal events (ARCHITECTURE.md), and leave nothing."""
import os
import time

import capabilities
import pytest

if not capabilities.have("jupyter"):
    pytest.skip(capabilities.reason("jupyter", "jupyter_client is not installed"), allow_module_level=True)
import jupyter_client  # noqa: E402

from labhelper import cleanup  # noqa: E402
from timing import scaled  # noqa: E402


@pytest.fixture
def kernel():
    km = jupyter_client.KernelManager(kernel_name="python3")
    km.start_kernel(env=dict(os.environ))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def run(kc, code, timeout=60):
    """Execute ``code``; return (status, stdout text)."""
    msg_id = kc.execute(code)
    out, status = [], None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "stream":
            out.append(msg["content"]["text"])
        elif kind == "error":
            status = "error:" + msg["content"]["ename"]
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            break
    while True:  # skip the replies to earlier (e.g. interrupted) requests
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return status or reply["content"]["status"], "".join(out)


def test_interrupt_kills_the_child_and_leaves_nothing(kernel):
    km, kc = kernel
    status, _ = run(kc, "import os; from labhelper import process; from labhelper.teach import lab; lab.start('08')")
    assert status == "ok"
    # stop_on_error=False: an interrupted cell ends in an error, and ipykernel then aborts every
    # request that reaches it before its "stop aborting" marker (kernelbase._abort_queues): the
    # next request, sent as soon as this reply arrives, sometimes did, and came back "aborted".
    long_id = kc.execute("import time; process.run_in_child(time.sleep, 60, timeout=None)", stop_on_error=False)
    time.sleep(1.5)
    started = time.monotonic()
    km.interrupt_kernel()
    # The KeyboardInterrupt reaches the cell; the child is killed and reaped.
    while True:
        reply = kc.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == long_id:
            break
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    status, out = run(kc, "print(sorted(c for c in os.listdir('/proc') if c.isdigit() and "
                          "open(f'/proc/{c}/stat').read().split()[3] == str(os.getpid())))")
    assert time.monotonic() - started < scaled(10)
    assert status == "ok" and out.strip() == "[]", f"children left: {out}"


def test_restart_then_start_removes_what_the_dead_kernel_made(kernel):
    km, kc = kernel
    target = "/run/labhelper/zz-restart/m"
    status, _ = run(kc, f"from labhelper import mounts; from labhelper.teach import lab; lab.start('08'); mounts.mount_tmpfs({target!r})")
    assert status == "ok" and ("mount", target) in cleanup.census().names()
    km.restart_kernel(now=True)  # SIGKILL, as Kernel -> Restart does
    kc.wait_for_ready(timeout=60)
    assert ("mount", target) in cleanup.census().names()  # kernel objects outlive the kernel
    status, out = run(kc, "from labhelper.teach import lab; lab.start('08')")
    assert status == "ok" and "Removed" in out
    assert ("mount", target) not in cleanup.census().names()
    assert not os.path.exists("/run/labhelper/zz-restart")      # the folders it made went with it


def test_restart_with_held_and_pinned_namespaces_then_cleanup(kernel):
    # Chapter 03's objects, left by a kernel killed mid-chapter: a held process (in its lab
    # cgroup), a pinned namespace (bind mounts below /run/labhelper/ns), a tmpfs. Each held
    # process dies with the kernel (PR_SET_PDEATHSIG); `labhelper cleanup` removes the rest.
    km, kc = kernel
    status, out = run(kc, "from labhelper import namespaces; from labhelper.teach import lab; lab.start('03')\n"
                          "box = namespaces.hold(['uts', 'pid', 'mnt', 'net'], hostname='box')\n"
                          "pinned = namespaces.pin(box.pid, 'zz-restart')\n"
                          "other = namespaces.hold(['ipc'])\n"
                          "print(box.pid, other.pid)")
    assert status == "ok", out
    pids = [int(p) for p in out.splitlines()[-1].split()]
    kinds = {o.kind for o in cleanup.census().objects}
    assert {"process", "cgroup", "mount"} <= kinds, kinds
    km.restart_kernel(now=True)
    kc.wait_for_ready(timeout=60)
    deadline = time.monotonic() + scaled(10)
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(os.path.exists(f"/proc/{p}") for p in pids), "a held process outlived its kernel"
    from systest import labhelper_cli
    r = labhelper_cli("cleanup")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert not cleanup.census().objects
    assert not os.path.exists("/run/labhelper/ns/zz-restart")

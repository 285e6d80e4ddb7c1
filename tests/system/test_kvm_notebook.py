"""Chapter 02 in a real Jupyter kernel: a notebook interrupt stops a spinning guest within 1 s and
closes its VM (R26); and the notebook runs top to bottom, explaining and skipping, when /dev/kvm
is absent (LABHELPER_KVM_DEVICE=/nonexistent pretends so)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import capabilities
import pytest

pytestmark = pytest.mark.kvm

if not capabilities.have("jupyter"):
    pytest.skip(capabilities.reason("jupyter", "jupyter_client is not installed"), allow_module_level=True)
import jupyter_client  # noqa: E402
from timing import scaled  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "02-hypervisors.ipynb"


def _start(env):
    km = jupyter_client.KernelManager(kernel_name="python3")
    km.start_kernel(env=env)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc


def _reply(kc, msg_id, timeout=60):
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


def _kvm_fds(pid: int) -> list[str]:
    from labhelper.kvm import open_fds
    return [t for _, t in open_fds(pid)]


@capabilities.needs("kvm")
@capabilities.needs("binutils")
def test_interrupt_button_stops_a_spinning_guest_within_a_second():
    km, kc = _start(dict(os.environ))
    try:
        setup = kc.execute("import os; from labhelper import kvm; from labhelper.kvm import guests; "
                           "m = kvm.Machine(guests.SPIN); pid = os.getpid()")
        assert _reply(kc, setup)["content"]["status"] == "ok"
        kernel_pid = km.provisioner.process.pid
        spin = kc.execute("m.run()", stop_on_error=False)   # see test_jupyter_kernel.py: no "aborted" next
        deadline = time.monotonic() + 10
        while not _kvm_fds(kernel_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)                                   # the guest is spinning inside KVM_RUN
        assert _kvm_fds(kernel_pid), "the kernel should hold its VM while the guest spins"
        t0 = time.monotonic()
        km.interrupt_kernel()                             # what the ■ button does: SIGINT
        reply = _reply(kc, spin, timeout=30)
        took = time.monotonic() - t0
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        assert took < scaled(1.0), f"the interrupt took {took:.2f} s"
        assert _kvm_fds(kernel_pid) == [], "the interrupted VM must be closed"
        check = kc.execute("assert m.closed")
        assert _reply(kc, check)["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.hostonly      # /dev/kvm is hidden: nothing here depends on the guest's kind of host
def test_notebook_without_kvm_explains_and_skips(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = dict(os.environ, LABHELPER_KVM_DEVICE="/nonexistent/kvm")
    old = dict(os.environ)
    os.environ.update(env)                                # the kernel inherits this process's environment
    try:
        client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                                         resources={"metadata": {"path": str(NOTEBOOK.parent)}})
        client.execute()                                  # raises CellExecutionError on any untagged error
    finally:
        os.environ.clear()
        os.environ.update(old)
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", "") + str(out.get("data", {}).get("text/plain", "")))
            assert out.get("output_type") != "error", out
    text = "\n".join(texts)
    # The full explanation once, in the preflight; then one short line per skipped cell.
    assert text.count("skipped: this needs a usable /dev/kvm on x86_64") == 1
    assert "/nonexistent/kvm does not exist" in text
    assert text.count("(skipped: no usable /dev/kvm)") >= 10
    for line in text.splitlines():
        if line.startswith("(skipped"):
            assert len(line) <= 40, line
    # Key results: what the lab VM prints, from guests.EXPECTED (checked against real runs elsewhere).
    assert "in the lab VM this prints: 31 exits (IoOut 30, Hlt 1)" in text
    assert "in the lab VM this prints: 2 exits (IoOut 1, Hlt 1)" in text
    assert "RunResult(" not in text and "Step 1:" not in text   # nothing ran...
    assert "0x1000   ba f8 03" in text                     # ...but the listings are there
    assert "over the lab's cap" in text                   # and the checks that need no VM
    assert text.count("Cannot check here") == 2 and "Not yet: your" not in text   # q1, q3: never "wrong"

"""The guest stage of `make test`: the tests that need cgroups or KVM, and the notebooks that use
them, run once more inside a QEMU guest with the learners' kind of kernel: pure cgroup v2 (Debian's
kernel booted with cgroup_no_v1=all) and a hardware-assisted KVM (kvm_amd, on the AMD-V that QEMU
emulates). See tests/guest/boot.sh for how, and tests/guest/inside.sh for what runs there.

The guest cannot change this machine: its root is this machine's / read-only, with its writes in
its own memory. Its whole console goes to tests/guest/last-run.log; on failure, its end is shown.
"""
import os
import shutil
import subprocess
from pathlib import Path

import capabilities
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LIMIT = int(os.environ.get("LABHELPER_GUEST_TIMEOUT", "900"))   # seconds for the whole stage


def test_the_course_on_pure_cgroup_v2_with_kvm_amd(tmp_path):
    capabilities.need("root", "the guest stage shares / over 9p and needs root")
    log = tmp_path / "guest.log"
    p = subprocess.run([str(HERE / "boot.sh"), "-t", str(LIMIT), "-l", str(log), "--", "bash tests/guest/inside.sh"],
                       cwd=ROOT, capture_output=True, text=True, timeout=LIMIT + 600)
    if p.returncode == 77:
        pytest.skip(capabilities.reason("qemu", p.stderr.strip().removeprefix("SKIP: ")))
    text = log.read_text(errors="replace") if log.exists() else ""
    shutil.copyfile(log, HERE / "last-run.log") if log.exists() else None
    assert p.returncode == 0, (f"the guest stage failed (exit {p.returncode}); its console, "
                               f"whole in tests/guest/last-run.log, ends with:\n{text[-6000:]}\n{p.stderr[-2000:]}")
    assert "GUEST: kernel" in text and "cgroup2 with:" in text and "/dev/kvm: /dev/kvm" in text

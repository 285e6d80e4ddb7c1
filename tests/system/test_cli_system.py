"""The `labhelper` command against the real kernel: quiet and idempotent cleanup (R2), and a
learner who is not root."""
import os
import subprocess
import sys

import capabilities
import pytest

from labhelper import registry

from systest import labhelper_cli, sh


def test_cli_cleanup_is_idempotent_and_quiet(uid):
    # R2: on a pristine machine, and twice in a row after real objects, exit 0, nothing on stderr.
    for _ in range(2):
        p = labhelper_cli("cleanup")
        assert p.returncode == 0 and p.stderr == "", p.stderr
    sh(f"ip netns add lh-ns{uid}")
    p = labhelper_cli("cleanup")
    assert p.returncode == 0 and p.stderr == "" and f"lh-ns{uid}" in p.stdout
    p = labhelper_cli("cleanup")
    assert p.returncode == 0 and p.stderr == "" and "nothing to clean up" in p.stdout


def test_cli_cleanup_dry_run_changes_nothing(uid):
    sh(f"ip netns add lh-ns{uid}")
    try:
        p = labhelper_cli("cleanup", "--dry-run")
        assert p.returncode == 0 and "would do" in p.stdout and f"lh-ns{uid}" in p.stdout
        assert os.path.exists(f"/run/netns/lh-ns{uid}")
    finally:
        labhelper_cli("cleanup")


def test_doctor_as_non_root():
    capabilities.need("setpriv")
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                            "import labhelper"], capture_output=True, text=True, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"the venv is not readable by nobody here: {probe.stderr.strip()[-200:]}")
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                        "labhelper", "doctor"], capture_output=True, text=True, cwd="/", timeout=60)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "root" in p.stdout and "MISSING" in p.stdout


def test_census_as_non_root_explains_the_ledger():
    # B8: the ledger folder is root's (0700); a learner's `labhelper census` still works.
    capabilities.need("setpriv")
    led = registry.ledger()
    led.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    if led.root.stat().st_mode & 0o077:
        pytest.skip(f"the ledger folder {led.root} is readable by others here")
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    probe = subprocess.run(nobody + ["-c", "import labhelper"], capture_output=True, text=True, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"the venv is not readable by nobody here: {probe.stderr.strip()[-200:]}")
    p = subprocess.run(nobody + ["-m", "labhelper", "census"], capture_output=True, text=True, cwd="/", timeout=60)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "readable by root only" in p.stderr and "sudo labhelper" in p.stderr

"""`labhelper run ...`: chapter 07's container from the command line, with Docker's flags and
Docker's exit codes (the command's own; 125 refused or failed to start; 126; 127; 137)."""
from __future__ import annotations

import os

import pytest

import capabilities
from labhelper import cleanup, images, mounts
from systest import labhelper_cli


@pytest.fixture
def store_dir(uid):
    capabilities.need("busybox", "the CLI makes its base image from busybox-static")
    capabilities.need("overlay")
    path = mounts.make_dir(f"/var/lib/labhelper/test-run-cli-{uid}", owner=f"systest-{uid}")
    images.Store(f"{path}/store", owner=f"systest-{uid}")         # empty: the CLI makes its base image
    yield f"{path}/store"
    cleanup.cleanup(owner=f"systest-{uid}")
    assert not os.path.exists(path)


def test_run_with_dockers_flags_and_exit_codes(store_dir, uid):
    before = cleanup.census().names()
    run = lambda *a, **k: labhelper_cli("run", "--store", store_dir, *a, **k)  # noqa: E731
    first = run("--rm", "--name", f"cli-{uid}", "--hostname", "web", "-e", "A=b", "-w", "/srv", "busybox",
                "sh", "-c", "echo $A $(hostname) $(pwd); exit 4")
    assert first.returncode == 4 and first.stdout == "b web /srv\n"
    assert "making it from busybox-static" in first.stderr          # the base image, made once
    again = run("busybox", "true")
    assert again.returncode == 0 and "making it" not in again.stderr
    missing = run("busybox", "no-such")
    assert missing.returncode == 127 and "'no-such': executable file not found in $PATH" in missing.stderr
    refused = run("--memory", "1k", "busybox", "true")
    assert refused.returncode == 125 and "below the lab's floor" in refused.stderr
    oom = run("--memory", "16m", "busybox", "sh", "-c", "x=a; while true; do x=$x$x; done")
    assert oom.returncode == 137 and "lack of memory" in oom.stderr
    slow = run("--timeout", "0.5", "busybox", "sleep", "30")
    assert slow.returncode == 137 and "--timeout" in slow.stderr
    fed = run("-i", "busybox", "sh", "-c", "read x; echo got $x", input="hello\n")
    assert fed.returncode == 0 and fed.stdout == "got hello\n"
    gone = run("no-such-image", "true")
    assert gone.returncode == 125 and "no image 'no-such-image'" in gone.stderr
    assert cleanup.census().names() - {("dir", store_dir)} == before - {("dir", store_dir)}

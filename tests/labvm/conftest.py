"""The lab VM stage: one lab VM for the whole session, booted from a bare image and driven from
this machine, as a learner's `vagrant up` would be (tests/labvm/vm.py says how).

Its consoles go to tests/labvm/last-run.log at the end, and the last lines of the current one
are added to every failure's report: a boot that went wrong shows itself.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import capabilities
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "ui"))      # the browser plumbing of tests/ui
sys.path.insert(0, str(HERE))

from vm import VM  # noqa: E402

LOG = HERE / "last-run.log"
SCREENSHOTS = HERE / "screenshots"
_running: list[VM] = []


def _need_tools() -> None:
    capabilities.need("root", "the lab VM stage builds a disk image and boots it: root only")
    for program in ("qemu-system-x86_64", "debootstrap", "mkfs.ext4", "ssh", "ssh-keygen"):
        if shutil.which(program) is None:
            pytest.skip(capabilities.reason(
                "labvm", f"{program} is not installed (scripts/provision.sh --with-test-tools installs it)"))
    if not Path("/usr/bin/chromium").exists():
        pytest.skip(capabilities.reason("chromium", "no /usr/bin/chromium (Debian's chromium package)"))


@pytest.fixture(scope="session")
def image() -> Path:
    """The bare image's folder, built once and cached (tests/labvm/image.sh)."""
    _need_tools()
    # Its own process group: on a timeout, debootstrap goes with it (image.sh's own trap
    # removes its half-made folder; the next image.sh removes what a kill left).
    build = subprocess.Popen([str(HERE / "image.sh")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        out, err = build.communicate(timeout=1800)
    except subprocess.TimeoutExpired:
        os.killpg(build.pid, signal.SIGKILL)
        build.communicate()
        pytest.fail("image.sh took more than 30 minutes (is the package mirror reachable and fast?)")
    if build.returncode == 77:
        pytest.skip(capabilities.reason("labvm", err.strip().splitlines()[-1]))
    assert build.returncode == 0, f"image.sh failed:\n{err[-3000:]}"
    return Path(out.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def vm(image: Path):
    """The lab VM, powered on (not provisioned yet: that is the first test)."""
    # What a killed run left (its QEMU died with it: PR_SET_PDEATHSIG): its folder.
    for stale in Path("/var/tmp").glob("labhelper-labvm.*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="labhelper-labvm.", dir="/var/tmp"))
    machine = None
    try:
        machine = VM(image, work)
        _running.append(machine)
        seconds = machine.boot()
        print(f"\nlab VM: booted to ssh in {seconds:.0f} s (ssh 127.0.0.1:{machine.ssh_port}, "
              f"JupyterLab forwarded to 127.0.0.1:{machine.lab_port})")
        yield machine
    finally:
        if machine is not None:
            machine.close()
            _running.remove(machine)
        with open(LOG, "w") as log:
            for n in range(1, machine.boots + 1 if machine else 1):
                console = work / f"console-{n}.log"
                log.write(f"===== boot {n} =====\n")
                if console.exists():
                    log.write(console.read_text(errors="replace").replace("\r", ""))
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def state() -> dict:
    """What one test learns for the next (the token, the provisioner, the learner's edit)."""
    return {}


@pytest.fixture
def screenshots(request: pytest.FixtureRequest) -> Path:
    folder = SCREENSHOTS / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _running:
        report.sections.append(("lab VM console (last 60 lines)", _running[-1].console_tail(60)))


def pytest_sessionfinish(session, exitstatus):
    if os.path.exists(LOG) and exitstatus not in (0, 5):
        print(f"\nthe lab VM's consoles: {LOG}")

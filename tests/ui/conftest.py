"""A real JupyterLab driven by a real browser, the way a learner uses the course.

JupyterLab runs from this venv on 127.0.0.1, on a free port, with a random token, serving a
temporary copy of notebooks/ (the committed notebooks are never modified). Playwright drives
Debian's /usr/bin/chromium: no browser is downloaded (`make test` installs chromium through
scripts/provision.sh --with-test-tools). Screenshots go to tests/ui/screenshots/<test name>/.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import capabilities
import pytest
from browsing import CHROMIUM, Lab, close_all_tabs, launch, open_lab

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
SERVER_START_TIMEOUT = 90.0


def _free_port() -> int:
    # Bind port 0 and let the kernel choose; JupyterLab gets port_retries=0 so a race (someone
    # takes the port in between) fails loudly instead of moving to a port the test does not know.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _require_browser() -> None:
    if not CHROMIUM.exists():
        pytest.skip(capabilities.reason(
            "chromium", "no /usr/bin/chromium: install it with 'scripts/provision.sh --with-test-tools' "
            "(Debian's chromium package; Ubuntu ships it only as a snap)"))
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip(capabilities.reason("playwright", "Playwright for Python is not installed: pip install -e '.[test]'"))


def _jupyter() -> Path:
    jupyter = Path(sys.executable).parent / "jupyter"
    if not jupyter.exists():
        pytest.skip(capabilities.reason("jupyter", f"no jupyter next to {sys.executable}: run the UI tests from the venv"))
    return jupyter


def _lab_settings(settings_dir: Path) -> None:
    """Settings that make the page deterministic for a test, not for a learner."""
    notebook = settings_dir / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    notebook.parent.mkdir(parents=True, exist_ok=True)
    # Every cell in the DOM (JupyterLab virtualizes long notebooks otherwise), so that the
    # error and widget checks see all cells and not only those scrolled into view.
    notebook.write_text(json.dumps({"windowingMode": "none"}))
    apputils = settings_dir / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    apputils.parent.mkdir(parents=True, exist_ok=True)
    # No "would you like to receive news?" toast over the notebook in screenshots.
    apputils.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory):
    """JupyterLab on 127.0.0.1:<free port> with a random token, serving a copy of notebooks/."""
    _require_browser()
    jupyter = _jupyter()
    base = tmp_path_factory.mktemp("lab")
    # base/notebooks holds copies; the rest of the repository is linked beside it, so that a
    # notebook sees the same relative paths (../labhelper, ../benchmarks) as under nbval.
    root = base / "notebooks"
    root.mkdir()
    for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
        shutil.copy2(notebook, root / notebook.name)
    for entry in REPO.iterdir():
        if entry.name not in ("notebooks", ".git", "jupyter-test"):
            (base / entry.name).symlink_to(entry)
    private = base / "jupyter-test"
    for name in ("config", "data", "runtime", "settings", "workspaces"):
        (private / name).mkdir(parents=True)
    _lab_settings(private / "settings")

    token = secrets.token_hex(24)
    port = _free_port()
    env = dict(
        os.environ,
        JUPYTER_TOKEN=token,  # in the environment, not on a command line `ps` shows
        # Private config, data (notebook signatures), runtime and settings: nothing of the
        # user's is read or written. Kernels and lab extensions still come from the venv.
        JUPYTER_CONFIG_DIR=str(private / "config"),
        JUPYTER_DATA_DIR=str(private / "data"),
        JUPYTER_RUNTIME_DIR=str(private / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(private / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(private / "workspaces"),
        PYTHONUNBUFFERED="1",
    )
    env.setdefault("LABHELPER_DISPOSABLE", "1")  # `make test` sets it; the notebooks need it
    # The course's chapters trusted as a learner's setup trusts them (scripts/lab.py and
    # provision.sh: `jupyter trust` on the course's own, unchanged files, in the server's
    # environment), so that a chapter opened fresh shows its committed diagrams. Only those:
    # the test's own notebooks (lab-smoke.ipynb) stay untrusted, as a learner's own would.
    from labhelper.teach.chapters import trust

    trusted = trust(root, originals=NOTEBOOKS, jupyter=jupyter, env=env)
    assert trusted, "no course notebook was trusted"
    log_path = private / "jupyterlab.log"
    command = [
        str(jupyter), "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=",  # nothing fetched from outside
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            command, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one below
        )
    instance = Lab(base_url=f"http://127.0.0.1:{port}", token=token, root=root)
    try:
        _wait_for_server(instance, server, log_path)
        yield instance
    finally:
        _stop_server(instance, server)


def _wait_for_server(lab: Lab, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            lab.api("GET", "/api/status")
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.3)
    pytest.fail(f"JupyterLab did not answer within {SERVER_START_TIMEOUT:.0f} s:\n"
                f"{log_path.read_text()[-3000:]}")


def _stop_server(lab: Lab, server: subprocess.Popen) -> None:
    # Shut the kernels down through the API first: they run in their own sessions (process
    # groups), so killing the server's group alone could leave a root kernel behind.
    if server.poll() is None:
        try:
            for kernel in lab.api("GET", "/api/kernels") or []:
                lab.api("DELETE", f"/api/kernels/{kernel['id']}")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        os.killpg(server.pid, signal.SIGTERM)  # JupyterLab's clean shutdown
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
    try:
        os.killpg(server.pid, signal.SIGKILL)  # anything of its group still there
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def browser(lab: Lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="session")
def app(browser, lab: Lab):
    """One JupyterLab page for the whole session: loading the app takes seconds on 2 cores,
    so each test opens its notebook in it (File > Open from Path...) instead of reloading."""
    context, page = open_lab(browser, lab)
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def page(app, lab: Lab):
    """The session's JupyterLab page, with no tab open and no kernel left from the test before."""
    close_all_tabs(app)
    try:
        yield app
    finally:
        close_all_tabs(app)
        for kernel in lab.api("GET", "/api/kernels") or []:
            lab.api("DELETE", f"/api/kernels/{kernel['id']}")


@pytest.fixture
def screenshots(request: pytest.FixtureRequest) -> Path:
    """tests/ui/screenshots/<test name>/, emptied first so it shows this run only."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name).strip("_")
    folder = SCREENSHOTS / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder

"""The delivery: Vagrantfile, provisioning script, JupyterLab unit -- checked without booting a VM.

Each check uses the real tool (vagrant with vagrant-libvirt, shellcheck, systemd-analyze) and
skips, naming it, where the tool is absent; `make test` installs them all through
`scripts/provision.sh --with-test-tools`, so in CI they run. Nothing here needs root: the
provisioning script writes its lab-VM files into a scratch tree (LABHELPER_ROOT).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROVISION = ROOT / "scripts" / "provision.sh"
UNIT = ROOT / "scripts" / "labhelper-jupyter.service"
VAGRANTFILE = ROOT / "Vagrantfile"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.skip(f"{tool} is not installed (scripts/provision.sh --with-test-tools installs it)")
    return path


def run(command: list[str], env: dict | None = None, cwd: Path = ROOT, timeout: float = 120):
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- shellcheck


def test_scripts_are_shellcheck_clean():
    shellcheck = need("shellcheck")
    scripts = sorted(ROOT.glob("scripts/*.sh")) + [p for p in [ROOT / ".ci" / "run"] if p.exists()]
    assert PROVISION in scripts
    result = run([shellcheck, "--shell=bash", *map(str, scripts)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_would_catch_a_mistake(tmp_path: Path):
    # The check above can fail: the same call on an unquoted expansion reports it.
    shellcheck = need("shellcheck")
    bad = tmp_path / "bad.sh"
    bad.write_text('#!/usr/bin/env bash\nrm -rf $1/tmp\n')
    result = run([shellcheck, str(bad)])
    assert result.returncode != 0 and "SC2086" in result.stdout


# ----------------------------------------------------------------------------- the systemd unit


def _verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """systemd-analyze verify, with the unit's venv pointed at a stub so ExecStart exists."""
    analyze = need("systemd-analyze")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    jupyter = venv / "bin" / "jupyter"
    jupyter.write_text("#!/bin/sh\n")
    jupyter.chmod(0o755)
    unit = tmp_path / UNIT.name
    unit.write_text(unit_text.replace("/opt/labhelper/venv", str(venv)))
    return run([analyze, "verify", str(unit)])


def _findings(result: subprocess.CompletedProcess) -> list[str]:
    # verify exits 0 even for "Unknown key ..., ignoring": any line about our unit is a finding.
    return [line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line]


def test_unit_verifies(tmp_path: Path):
    result = _verify(UNIT.read_text(), tmp_path)
    assert result.returncode == 0 and not _findings(result), result.stdout + result.stderr


def test_unit_verify_catches_a_typo(tmp_path: Path):
    result = _verify(UNIT.read_text().replace("Restart=on-failure", "Restart=sometimes"), tmp_path)
    assert any("restart" in line.lower() for line in _findings(result)), result.stderr


def _directives(text: str) -> dict[str, list[str]]:
    joined = re.sub(r"\\\n\s*", " ", text)  # continuation lines
    found: dict[str, list[str]] = {}
    for line in joined.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_unit_contract():
    unit = _directives(UNIT.read_text())
    assert unit["Restart"] == ["on-failure"]  # the service comes back after a crash
    assert unit["User"] == ["root"]  # the kernels do root things (and the VM is disposable)
    exec_start = unit["ExecStart"][0]
    assert exec_start.startswith("/opt/labhelper/venv/bin/jupyter lab")
    assert "--ServerApp.ip=0.0.0.0" in exec_start and "--ServerApp.port=8888" in exec_start
    assert "--ServerApp.port_retries=0" in exec_start  # never drift to a port nobody forwards
    # The token comes from the root-only file the provisioning script writes, not argv.
    assert "JUPYTER_TOKEN_FILE=/etc/labhelper/jupyter-token" in unit["Environment"]
    assert "token" not in exec_start.lower()
    assert "ETC_DIR=$ROOT/etc/labhelper" in PROVISION.read_text()
    assert "TOKEN_FILE=$ETC_DIR/jupyter-token" in PROVISION.read_text()


# ----------------------------------------------------------------------------- the Vagrantfile


@pytest.fixture
def vagrant_env(tmp_path: Path) -> dict:
    need("vagrant")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAB_", "VAGRANT_"))}
    env.update(
        VAGRANT_HOME=str(tmp_path / "vagrant.d"),  # not the user's ~/.vagrant.d
        VAGRANT_DOTFILE_PATH=str(tmp_path / "dot-vagrant"),  # no .vagrant/ in the repository
        VAGRANT_CHECKPOINT_DISABLE="1",  # no version check over the network
        VAGRANT_BOX_UPDATE_CHECK_DISABLE="1",
        VAGRANT_SERVER_URL="http://127.0.0.1:9",  # a box lookup fails at once, offline
        VAGRANT_NO_COLOR="1",
    )
    return env


@functools.lru_cache(maxsize=1)
def _libvirt_plugin() -> bool:
    # A scratch VAGRANT_HOME, as in vagrant_env: only system-wide plugins (Debian's) count.
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, VAGRANT_HOME=home, VAGRANT_CHECKPOINT_DISABLE="1")
        return "vagrant-libvirt" in run(["vagrant", "plugin", "list"], env=env).stdout


def _has_libvirt_plugin(env: dict) -> bool:
    return _libvirt_plugin()


def test_vagrantfile_validates(vagrant_env: dict):
    env = dict(vagrant_env, LAB_MEMORY="6144", LAB_CPUS="3", LAB_PORT="18888", LAB_NESTED="on")
    # Providers whose plugin is absent here (VirtualBox, VMware, Parallels, Hyper-V) are
    # checked for everything but their own block; libvirt, when installed, in full.
    result = run(["vagrant", "validate", "--ignore-provider"], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    if _has_libvirt_plugin(env):
        result = run(["vagrant", "validate"], env=dict(env, VAGRANT_DEFAULT_PROVIDER="libvirt"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "validated successfully" in result.stdout


@pytest.mark.parametrize(
    "name,value", [("LAB_MEMORY", "lots"), ("LAB_CPUS", "0"), ("LAB_PORT", "80"), ("LAB_NESTED", "maybe")]
)
def test_vagrantfile_rejects_bad_settings(vagrant_env: dict, name: str, value: str):
    result = run(["vagrant", "validate", "--ignore-provider"], env=dict(vagrant_env, **{name: value}))
    assert result.returncode != 0
    assert f"{name}='{value}' is not valid" in result.stdout + result.stderr


def test_vagrantfile_reports_a_busy_port_with_the_fix(vagrant_env: dict):
    if not _has_libvirt_plugin(vagrant_env):
        pytest.skip("vagrant-libvirt is not installed: `vagrant up` needs a provider to reach the check")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = dict(vagrant_env, LAB_PORT=str(port), LAB_BOX="labhelper-test/no-such-box")
        # The port check is a trigger before `up`: it stops before any box or VM is touched.
        result = run(["vagrant", "up", "--provider=libvirt", "--no-provision"], env=env, timeout=90)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"Port {port} on this computer (127.0.0.1:{port}) is already in use" in output, output
    assert f"LAB_PORT={port + 1} vagrant up" in output


def test_vagrantfile_contract():
    text = VAGRANTFILE.read_text()
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert 'config.vm.box = LAB_BOX' in code and '"bento/ubuntu-24.04"' in code
    # Nested virtualization on every provider that has it.
    assert '"--nested-hw-virt", "on"] if LAB_NESTED' in code  # virtualbox
    assert "lv.nested = LAB_NESTED" in code and 'lv.cpu_mode = "host-passthrough"' in code  # libvirt
    assert 'vmx["vhv.enable"] = "TRUE" if LAB_NESTED' in code  # vmware_desktop
    assert '"--nested-virt", "on"] if LAB_NESTED' in code  # parallels
    assert "enable_virtualization_extensions = LAB_NESTED" in code  # hyperv
    # ... asked for by default on x86 hosts, where every provider above supports it.
    assert re.search(r'when "auto", "" then RbConfig::CONFIG\["host_cpu"\].*x86_64', code)
    # The forward reaches this computer's loopback only, and never moves silently.
    forward = re.search(r'config\.vm\.network "forwarded_port",(.*?)\n\s*\n', code, re.S).group(1)
    assert 'host_ip: "127.0.0.1"' in forward and "auto_correct: false" in forward
    assert "guest: GUEST_PORT" in forward and "GUEST_PORT = 8888" in code
    # The same provisioning script as `make`, in lab-VM mode.
    assert 'path: "scripts/provision.sh", args: ["--lab-vm"]' in code


# ----------------------------------------------------------------------------- provision.sh


def _script_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABHELPER_")}
    env.update(extra)
    return env


def test_provision_check_changes_nothing_and_reports():
    if not shutil.which("dpkg-query"):
        pytest.skip("no dpkg-query: not a Debian or Ubuntu machine")
    result = run(["bash", str(PROVISION), "--check"], env=_script_env())
    assert result.returncode in (0, 1), result.stderr
    line = result.stdout.strip().splitlines()[-1]
    if result.returncode == 0:
        assert re.fullmatch(r"provision\.sh: all \d+ system packages are installed", line)
    else:
        assert line.startswith("provision.sh: missing system packages: ")


def test_provision_rejects_unknown_option():
    result = run(["bash", str(PROVISION), "--frobnicate"], env=_script_env())
    assert result.returncode == 2 and "unknown option '--frobnicate'" in result.stderr


@pytest.mark.parametrize(
    "os_release",
    ['ID=fedora\nPRETTY_NAME="Fedora Linux 40 (Workstation Edition)"\n', None],
    ids=["fedora", "no-os-release"],
)
def test_provision_stops_on_an_unsupported_distribution(tmp_path: Path, os_release: str | None):
    path = tmp_path / "os-release"
    if os_release is not None:
        path.write_text(os_release)
    result = run(["bash", str(PROVISION)], env=_script_env(LABHELPER_OS_RELEASE=str(path)))
    assert result.returncode == 3
    assert "Debian 12 or Ubuntu 24.04" in result.stderr and "vagrant up" in result.stderr
    assert ("Fedora Linux 40" if os_release else "an unknown system") in result.stderr
    assert result.stdout == ""  # stopped before looking at, let alone installing, anything


def test_provision_accepts_a_debian_derivative(tmp_path: Path):
    if not shutil.which("dpkg-query"):
        pytest.skip("no dpkg-query: not a Debian or Ubuntu machine")
    path = tmp_path / "os-release"
    path.write_text('ID=linuxmint\nID_LIKE="ubuntu debian"\nPRETTY_NAME="Linux Mint 22"\n')
    result = run(["bash", str(PROVISION), "--check"], env=_script_env(LABHELPER_OS_RELEASE=str(path)))
    assert result.returncode in (0, 1), result.stderr


def _venv_stamp() -> str:
    """What provision.sh writes in the venv once built: pyproject's hash and the Python version."""
    python = Path("/usr/bin/python3")
    if not python.exists():
        pytest.skip("no /usr/bin/python3: the lab VM's venv is built from the system Python")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    version = run([str(python), "--version"]).stdout.strip()
    return f"{digest} {version}"


def test_lab_vm_mode_is_idempotent(tmp_path: Path):
    """--lab-vm into a scratch root: marker, token (0600, kept), unit, URL; a rerun changes nothing.

    The venv is pre-stamped as built, so the test does not download JupyterLab; building it
    is the same `pip install -e` as `make venv`.
    """
    if run(["bash", str(PROVISION), "--check"], env=_script_env()).returncode != 0:
        pytest.skip("system packages missing here: --lab-vm would install them (run `make test`)")
    root = tmp_path / "root"
    venv = root / "opt" / "labhelper" / "venv"
    venv.mkdir(parents=True)
    (venv / ".installed").write_text(_venv_stamp() + "\n")
    env = _script_env(LABHELPER_ROOT=str(root), LABHELPER_SRC=str(ROOT), LABHELPER_HOST_PORT="18888")

    first = run(["bash", str(PROVISION), "--lab-vm"], env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (root / "etc/labhelper/disposable").read_text().startswith("This machine is a disposable lab VM")
    token_file = root / "etc/labhelper/jupyter-token"
    token = token_file.read_text()
    assert re.fullmatch(r"[0-9a-f]{48}", token)  # no newline: JupyterLab reads the file verbatim
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    unit = (root / "etc/systemd/system/labhelper-jupyter.service").read_text()
    assert f"--ServerApp.root_dir={ROOT}/notebooks" in unit
    assert f"http://127.0.0.1:18888/lab/tree/00-start-here.ipynb?token={token}" in first.stdout
    assert "--ServerApp.ip=0.0.0.0" in unit  # Vagrant's forward arrives on the NAT interface
    assert "is up to date" in first.stdout and "building" not in first.stdout

    snapshot = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}
    second = run(["bash", str(PROVISION), "--lab-vm"], env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()} == snapshot
    for changed in ("marked", "generated", "installed /", "building"):
        assert changed not in second.stdout
    assert f"token={token}" in second.stdout  # the same URL: a bookmark keeps working

    url = run(["bash", str(PROVISION), "--url"], env=env)
    assert url.returncode == 0 and f"token={token}" in url.stdout


def test_lab_vm_mode_can_listen_on_loopback_only(tmp_path: Path):
    """On a cloud VM (cloud-init) nothing forwards: listen on 127.0.0.1, reach it by ssh -L."""
    if run(["bash", str(PROVISION), "--check"], env=_script_env()).returncode != 0:
        pytest.skip("system packages missing here: --lab-vm would install them (run `make test`)")
    root = tmp_path / "root"
    venv = root / "opt" / "labhelper" / "venv"
    venv.mkdir(parents=True)
    (venv / ".installed").write_text(_venv_stamp() + "\n")
    env = _script_env(LABHELPER_ROOT=str(root), LABHELPER_SRC=str(ROOT))
    result = run(["bash", str(PROVISION), "--lab-vm"], env=dict(env, LABHELPER_LISTEN="127.0.0.1"))
    assert result.returncode == 0, result.stderr
    unit = (root / "etc/systemd/system/labhelper-jupyter.service").read_text()
    assert "--ServerApp.ip=127.0.0.1" in unit and "--ServerApp.ip=0.0.0.0" not in unit
    bad = run(["bash", str(PROVISION), "--lab-vm"], env=dict(env, LABHELPER_LISTEN="everywhere"))
    assert bad.returncode == 2 and "LABHELPER_LISTEN='everywhere'" in bad.stderr


def test_url_before_provisioning_says_what_to_do(tmp_path: Path):
    env = _script_env(LABHELPER_ROOT=str(tmp_path))
    result = run(["bash", str(PROVISION), "--url"], env=env)
    assert result.returncode == 1 and "--lab-vm" in result.stderr


def test_lab_vm_mode_needs_the_repository(tmp_path: Path):
    if run(["bash", str(PROVISION), "--check"], env=_script_env()).returncode != 0:
        pytest.skip("system packages missing here: --lab-vm would install them (run `make test`)")
    env = _script_env(LABHELPER_ROOT=str(tmp_path / "root"), LABHELPER_SRC=str(tmp_path / "nowhere"))
    result = run(["bash", str(PROVISION), "--lab-vm"], env=env)
    assert result.returncode == 6 and "LABHELPER_SRC" in result.stderr
    assert not (tmp_path / "root").exists()  # stopped before writing anything

"""The delivery: Vagrantfile, provisioning script, JupyterLab unit -- checked without booting a VM.

Each check uses the real tool (vagrant with vagrant-libvirt, shellcheck, systemd-analyze) and
skips, naming it, where the tool is absent; `make test` installs them all through
`scripts/provision.sh --with-test-tools`, so in CI they run. Nothing here needs root: the
provisioning script writes its lab-VM files into a scratch tree (LABHELPER_ROOT).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import capabilities
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROVISION = ROOT / "scripts" / "provision.sh"
UNIT = ROOT / "scripts" / "labhelper-jupyter.service"
VAGRANTFILE = ROOT / "Vagrantfile"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.skip(capabilities.reason(tool, f"{tool} is not installed (scripts/provision.sh --with-test-tools installs it)"))
    return path


def run(command: list[str], env: dict | None = None, cwd: Path = ROOT, timeout: float = 120):
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- shellcheck


def test_scripts_are_shellcheck_clean():
    shellcheck = need("shellcheck")
    scripts = (sorted(ROOT.glob("scripts/*.sh")) + sorted(ROOT.glob("tests/*/*.sh"))
               + [p for p in [ROOT / ".ci" / "run"] if p.exists()])
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
    for program in ("jupyter", "python"):
        stub = venv / "bin" / program
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
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
    # JupyterLab in a leaf of the service's delegated cgroup, the lab's cgroups beside it (chapter 05)
    assert unit["Delegate"] == ["yes"]
    assert exec_start.startswith("/opt/labhelper/venv/bin/python -m labhelper.cgroups.delegate -- "
                                 "/opt/labhelper/venv/bin/jupyter lab")
    assert "--ServerApp.ip=0.0.0.0" in exec_start and "--ServerApp.port=8888" in exec_start
    assert "--ServerApp.port_retries=0" in exec_start  # never drift to a port nobody forwards
    # The token comes from the root-only file the provisioning script writes, not argv.
    assert "JUPYTER_TOKEN_FILE=/etc/labhelper/jupyter-token" in unit["Environment"]
    assert "token" not in exec_start.lower()
    assert "ETC_DIR=$ROOT/etc/labhelper" in PROVISION.read_text()
    assert "TOKEN_FILE=$ETC_DIR/jupyter-token" in PROVISION.read_text()


def test_unit_needs_nothing_from_the_synced_folder():
    """At boot the unit starts before Vagrant mounts /vagrant: everything it uses is on the VM's disk.

    If it read /vagrant, jupyter would exit at every boot, Restart= would hit the start limit,
    and the next provisioning's `systemctl start` would be refused (the reviewer's finding 1).
    """
    unit = _directives(UNIT.read_text())
    notebooks = "/var/lib/labhelper-notebooks"
    assert f"NOTEBOOKS=$ROOT{notebooks}" in PROVISION.read_text()  # the folder provisioning fills
    assert f"--ServerApp.root_dir={notebooks}" in unit["ExecStart"][0]
    assert unit["WorkingDirectory"] == [notebooks]
    # No folder, no start -- skipped, which is not a failure (no restart, no start limit).
    assert unit["ConditionPathIsDirectory"] == [notebooks]
    assert set(unit["ConditionPathExists"]) == {"/opt/labhelper/venv/bin/jupyter", "/etc/labhelper/jupyter-token"}
    used = [value for key, values in unit.items() for value in values]
    assert not [value for value in used if "/vagrant" in value], used
    # Not the course's cleanup folder: `labhelper cleanup` owns what is under /var/lib/labhelper/.
    assert not notebooks.startswith("/var/lib/labhelper/")


def test_provisioning_installs_labhelper_as_a_copy():
    """An editable install would make every kernel import labhelper from /vagrant."""
    text = PROVISION.read_text()
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert "pip install" in code and not re.search(r"pip install[^\n]*(-e|--editable)\b", code)


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
        pytest.skip(capabilities.reason("vagrant-libvirt", "vagrant-libvirt is not installed: `vagrant up` needs a provider to reach the check"))
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
    # ... asked for by default on x86 hosts, where every provider above supports it (see
    # test_nested_auto_knows_apple_silicon for which hosts those are).
    assert 'when "auto", "" then lab_nested_auto?' in code
    # The forward reaches this computer's loopback only, and never moves silently.
    forward = re.search(r'config\.vm\.network "forwarded_port",(.*?)\n\s*\n', code, re.S).group(1)
    assert 'host_ip: "127.0.0.1"' in forward and "auto_correct: false" in forward
    assert "guest: GUEST_PORT" in forward and "GUEST_PORT = 8888" in code
    # The same provisioning script as `make`, in lab-VM mode.
    assert 'path: "scripts/provision.sh", args: ["--lab-vm"]' in code


# The Vagrantfile's own Ruby, run outside Vagrant: a stub `Vagrant` module stands in for the
# two names it uses at load time, then the helper is called with each host's facts.
NESTED_AUTO_RB = r"""
require "json"
module Vagrant
  module Errors
    class VagrantError < StandardError
      def self.error_message(text)
        define_method(:message) { text }
      end
    end
  end
  def self.configure(_version); end
end
load ARGV[0]
answers = JSON.parse(ARGV[1]).map do |host_cpu, host_os, arm64|
  asked = []
  sysctl = ->(name) { asked << name; arm64 }
  [lab_nested_auto?(host_cpu: host_cpu, host_os: host_os, sysctl: sysctl), asked]
end
puts JSON.generate(answers: answers, here: lab_sysctl("hw.optional.arm64"))
"""


def test_nested_auto_knows_apple_silicon(tmp_path: Path):
    """LAB_NESTED=auto: on for x86 hosts, off on Apple Silicon -- even for an x86 Vagrant under Rosetta 2."""
    ruby = need("ruby")
    # name: ((host_cpu, host_os, what `sysctl -n hw.optional.arm64` says), nested?, sysctl asked)
    hosts = {
        "linux x86": (("x86_64", "linux-gnu", "1"), True, []),  # sysctl is not asked off macOS
        "windows x64": (("x64", "mingw32", "1"), True, []),
        "intel mac": (("x86_64", "darwin23", ""), True, ["hw.optional.arm64"]),  # the key is absent there
        "rosetta 2": (("x86_64", "darwin23", "1"), False, ["hw.optional.arm64"]),
        "apple silicon": (("arm64", "darwin23", "1"), False, []),
        "linux arm64": (("aarch64", "linux-gnu", ""), False, []),
    }
    script = tmp_path / "nested_auto.rb"
    script.write_text(NESTED_AUTO_RB)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    facts = [list(fact) for fact, _, _ in hosts.values()]
    result = run([ruby, str(script), str(VAGRANTFILE), json.dumps(facts)], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    got = dict(zip(hosts, report["answers"]))
    assert got == {name: [nested, asked] for name, (_, nested, asked) in hosts.items()}
    # The real sysctl reader: this is not a Mac, so no "1" (an absent key or tool reads "").
    assert report["here"] == ""


# ----------------------------------------------------------------------------- provision.sh


def _script_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABHELPER_")}
    env.update(extra)
    return env


def test_provision_check_changes_nothing_and_reports():
    if not shutil.which("dpkg-query"):
        pytest.skip(capabilities.reason("dpkg", "no dpkg-query: not a Debian or Ubuntu machine"))
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
        pytest.skip(capabilities.reason("dpkg", "no dpkg-query: not a Debian or Ubuntu machine"))
    path = tmp_path / "os-release"
    path.write_text('ID=linuxmint\nID_LIKE="ubuntu debian"\nPRETTY_NAME="Linux Mint 22"\n')
    result = run(["bash", str(PROVISION), "--check"], env=_script_env(LABHELPER_OS_RELEASE=str(path)))
    assert result.returncode in (0, 1), result.stderr


# ----------------------------------------------------------------------------- --lab-vm, in a scratch root
#
# The script writes under LABHELPER_ROOT instead of /, installs from a copy of this repository
# (in a folder whose name has the characters that broke the old sed: | & and a space), and
# its venv python is a stand-in that records each pip call, so nothing is downloaded.

NOTEBOOKS_IN_VM = "var/lib/labhelper-notebooks"

FAKE_PYTHON = r"""#!/bin/bash
# The venv's python, for the test: records `python -m pip ...` and what the folder it installs
# from held at that moment (provision.sh removes that folder afterwards).
last=${!#}
{
  printf 'pip %s\n' "$*"
  if [ -d "$last" ]; then
    printf 'staged %s| pycache %s\n' "$(cd "$last" && ls | tr '\n' ' ')" "$(find "$last" -name __pycache__ | wc -l)"
  fi
} >> "@LOG@"
[ ! -e "@FAIL@" ] || { echo "pip: planted failure" >&2; exit 1; }
"""

FAKE_SYSTEMCTL = r"""#!/bin/bash
# systemctl, for the test: one unit whose state is a word in a file. A unit that hit its start
# limit ("failed") refuses start and restart, as systemd does, until reset-failed.
echo "$*" >> "@LOG@"
state=$(cat "@STATE@")
case "$1" in
  daemon-reload|enable) ;;
  reset-failed) [ "$state" != failed ] || echo inactive > "@STATE@" ;;
  is-active) [ "$state" = active ] || exit 3 ;;
  start|restart)
    if [ "$state" = failed ]; then
      echo "Job for $2 failed. See 'systemctl status $2' (start-limit-hit)." >&2
      exit 1
    fi
    echo active > "@STATE@" ;;
  *) echo "fake systemctl: unexpected '$*'" >&2; exit 1 ;;
esac
"""


@dataclass
class Scratch:
    """A scratch lab VM: its root, the course copy it installs from, and what pip was asked."""

    root: Path
    src: Path
    env: dict
    pip_log: Path
    pip_fail: Path

    @property
    def notebooks(self) -> Path:
        return self.root / NOTEBOOKS_IN_VM

    @property
    def unit(self) -> str:
        return (self.root / "etc/systemd/system/labhelper-jupyter.service").read_text()

    def provision(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        return run(["bash", str(PROVISION), *args], env=dict(self.env, **extra))

    def pip_calls(self) -> list[str]:
        """The pip log since the last call (then emptied)."""
        lines = self.pip_log.read_text().splitlines() if self.pip_log.exists() else []
        self.pip_log.write_text("")
        return lines

    def snapshot(self) -> dict:
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in self.root.rglob("*") if p.is_file()}


def _need_packages() -> None:
    if run(["bash", str(PROVISION), "--check"], env=_script_env()).returncode != 0:
        pytest.skip(capabilities.reason("lab-vm-packages", "system packages missing here: --lab-vm would install them (run `make test`)"))


@pytest.fixture
def scratch(tmp_path: Path) -> Scratch:
    _need_packages()
    src = tmp_path / "course a|b&c"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("labhelper", "notebooks", "scripts"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    # What a learner's checkout also holds, and what must not travel into the VM's copies.
    (src / "labhelper" / "__pycache__").mkdir()
    (src / "labhelper" / "__pycache__" / "cli.cpython-312.pyc").write_bytes(b"\0")
    (src / "notebooks" / ".ipynb_checkpoints").mkdir()
    (src / "notebooks" / ".ipynb_checkpoints" / "00-start-here-checkpoint.ipynb").write_text("{}")

    root = tmp_path / "root"
    venv_bin = root / "opt" / "labhelper" / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    pip_log, pip_fail = tmp_path / "pip.log", tmp_path / "pip.fail"
    python = venv_bin / "python"
    python.write_text(FAKE_PYTHON.replace("@LOG@", str(pip_log)).replace("@FAIL@", str(pip_fail)))
    python.chmod(0o755)
    (tmp_path / "tmp").mkdir()
    env = _script_env(LABHELPER_ROOT=str(root), LABHELPER_SRC=str(src), LABHELPER_HOST_PORT="18888",
                      TMPDIR=str(tmp_path / "tmp"))
    return Scratch(root=root, src=src, env=env, pip_log=pip_log, pip_fail=pip_fail)


def _staged(calls: list[str]) -> list[str]:
    return [line for line in calls if line.startswith("staged ")]


def test_lab_vm_mode_is_idempotent(scratch: Scratch):
    """--lab-vm: marker, venv, token (0600, kept), the learner's notebooks, unit, URL; a rerun changes nothing."""
    first = scratch.provision("--lab-vm")
    assert first.returncode == 0, first.stdout + first.stderr
    root = scratch.root
    assert (root / "etc/labhelper/disposable").read_text().startswith("This machine is a disposable lab VM")
    token_file = root / "etc/labhelper/jupyter-token"
    token = token_file.read_text()
    assert re.fullmatch(r"[0-9a-f]{48}", token)  # no newline: JupyterLab reads the file verbatim
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    # labhelper installed as a copy, from a scratch folder (no build/ or egg-info in the repository).
    calls = scratch.pip_calls()
    pips = [line for line in calls if line.startswith("pip ")]
    assert pips[0] == "pip -m pip install -q --upgrade pip", calls
    stage = pips[1].removeprefix("pip -m pip install -q ")
    assert len(pips) == 2 and not stage.startswith(str(scratch.src)), calls
    assert _staged(calls) == ["staged README.md labhelper pyproject.toml | pycache 0"], calls
    assert not Path(stage).exists() and not any(Path(scratch.env["TMPDIR"]).iterdir())
    assert "building" in first.stdout
    assert not [p for p in scratch.src.rglob("*") if p.name in ("build", "labhelper.egg-info")]

    # The learner's notebooks: every chapter, as committed; no Jupyter checkpoints.
    course = sorted(p.relative_to(scratch.src / "notebooks") for p in (scratch.src / "notebooks").glob("*.ipynb"))
    assert course, "no notebooks/*.ipynb in the repository"
    copied = sorted(p.relative_to(scratch.notebooks) for p in scratch.notebooks.rglob("*") if p.is_file())
    assert copied == course
    for name in course:
        assert (scratch.notebooks / name).read_bytes() == (scratch.src / "notebooks" / name).read_bytes()
        assert stat.S_IMODE((scratch.notebooks / name).stat().st_mode) == 0o644

    # The unit is the template as is: no path of the checkout in it (it has | & and a space).
    assert scratch.unit == UNIT.read_text().rstrip("\n") + "\n"
    assert f"http://127.0.0.1:18888/lab/tree/00-start-here.ipynb?token={token}" in first.stdout
    assert "Your notebooks are kept in the VM, in /var/lib/labhelper-notebooks/" in first.stdout

    # The served lab asks nothing about news and checks for no update (JupyterLab's overrides of
    # its defaults, in the venv's settings folder), and overlay is loaded at every boot.
    overrides = json.loads((root / "opt/labhelper/venv/share/jupyter/lab/settings/overrides.json").read_text())
    assert overrides["@jupyterlab/apputils-extension:notification"] == {"fetchNews": "false", "checkForUpdates": False}
    modules = (root / "etc/modules-load.d/labhelper.conf").read_text().splitlines()
    assert [m for m in modules if not m.startswith("#")] == ["overlay"]

    snapshot = scratch.snapshot()
    second = scratch.provision("--lab-vm")
    assert second.returncode == 0, second.stdout + second.stderr
    assert scratch.snapshot() == snapshot
    assert scratch.pip_calls() == []
    for changed in ("marked", "generated", "installed /", "building", "installing", "added to", "wrote"):
        assert changed not in second.stdout
    assert "is up to date" in second.stdout and "has every chapter" in second.stdout
    assert f"token={token}" in second.stdout  # the same URL: a bookmark keeps working

    url = scratch.provision("--url")
    assert url.returncode == 0 and f"token={token}" in url.stdout


def test_lab_vm_mode_keeps_the_learners_notebooks(scratch: Scratch):
    """Provisioning adds what is missing and overwrites nothing: edits stay, new chapters appear."""
    assert scratch.provision("--lab-vm").returncode == 0
    scratch.pip_calls()
    first, second = sorted(scratch.notebooks.glob("*.ipynb"))[:2]
    original_second = second.read_bytes()
    # The learner edits one chapter, deletes another (to start it over), writes their own.
    first.write_text(first.read_text() + "\n")
    learners = first.read_bytes()
    second.unlink()
    (scratch.notebooks / "mine.ipynb").write_text("{}")
    # The course moves on: that chapter changes upstream, a new one arrives, with a data file.
    (scratch.src / "notebooks" / first.name).write_text("{}")
    (scratch.src / "notebooks" / "99-new.ipynb").write_text('{"new": 1}')
    (scratch.src / "notebooks" / "data").mkdir()
    (scratch.src / "notebooks" / "data" / "table.csv").write_text("a,b\n")

    result = scratch.provision("--lab-vm")
    assert result.returncode == 0, result.stdout + result.stderr
    assert first.read_bytes() == learners  # the learner's edit wins over the course's change
    assert second.read_bytes() == original_second  # deleted: back as the original
    assert (scratch.notebooks / "mine.ipynb").read_text() == "{}"
    assert (scratch.notebooks / "99-new.ipynb").read_text() == '{"new": 1}'
    assert (scratch.notebooks / "data" / "table.csv").read_text() == "a,b\n"
    added = re.search(r"added to \S+: (.*)", result.stdout)
    assert added and set(added.group(1).split()) == {second.name, "99-new.ipynb", "data/table.csv"}
    assert scratch.pip_calls() == []  # labhelper did not change


def test_lab_vm_mode_updates_labhelper_when_its_source_changes(scratch: Scratch):
    assert scratch.provision("--lab-vm").returncode == 0
    scratch.pip_calls()
    stamp = (scratch.root / "opt/labhelper/venv/.installed").read_text()

    # Python's caches are not the source.
    (scratch.src / "labhelper" / "__pycache__" / "host.cpython-312.pyc").write_bytes(b"\0")
    assert scratch.provision("--lab-vm").returncode == 0
    assert scratch.pip_calls() == []

    # A changed module (a `git pull`): labhelper alone is installed again, not its dependencies.
    init = scratch.src / "labhelper" / "__init__.py"
    init.write_text(init.read_text() + "\n# changed\n")
    result = scratch.provision("--lab-vm")
    assert result.returncode == 0, result.stderr
    calls = scratch.pip_calls()
    assert [c for c in calls if c.startswith("pip ")] == [
        c for c in calls if c.startswith("pip -m pip install -q --no-deps --force-reinstall ")] != []
    assert len(_staged(calls)) == 1 and "installing labhelper" in result.stdout
    assert (scratch.root / "opt/labhelper/venv/.installed").read_text() == stamp

    # A failed install is not recorded as done: the next run tries again.
    (scratch.src / "pyproject.toml").write_text((scratch.src / "pyproject.toml").read_text() + "\n")
    scratch.pip_fail.touch()
    failed = scratch.provision("--lab-vm")
    assert failed.returncode != 0 and "planted failure" in failed.stderr
    assert not any(Path(scratch.env["TMPDIR"]).iterdir())  # its scratch copy is gone too
    scratch.pip_calls()
    scratch.pip_fail.unlink()
    again = scratch.provision("--lab-vm")
    assert again.returncode == 0, again.stderr
    pips = [c for c in scratch.pip_calls() if c.startswith("pip ")]
    assert pips[0] == "pip -m pip install -q --upgrade pip" and len(pips) == 2  # dependencies too
    assert (scratch.root / "opt/labhelper/venv/.installed").read_text() != stamp


def test_lab_vm_mode_starts_a_unit_that_hit_its_start_limit(scratch: Scratch, tmp_path: Path):
    """The reviewer's finding 1: a unit in start-limit-hit refuses `systemctl start` until reset-failed."""
    log, state = tmp_path / "systemctl.log", tmp_path / "unit.state"
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(FAKE_SYSTEMCTL.replace("@LOG@", str(log)).replace("@STATE@", str(state)))
    systemctl.chmod(0o755)
    unit = "labhelper-jupyter.service"

    def provision() -> tuple[subprocess.CompletedProcess, list[str]]:
        log.write_text("")
        result = scratch.provision("--lab-vm", LABHELPER_SYSTEMCTL=str(systemctl))
        assert result.returncode == 0, result.stdout + result.stderr
        return result, log.read_text().splitlines()

    state.write_text("inactive")  # first provisioning: a new unit
    result, calls = provision()
    assert calls == ["daemon-reload", f"enable --quiet {unit}", f"reset-failed {unit}", f"restart {unit}"]
    assert "(re)started" in result.stdout and state.read_text().strip() == "active"

    # A boot where the server crashed 5 times within 60 s: nothing changed, yet it must start.
    state.write_text("failed")
    result, calls = provision()
    assert calls == [f"enable --quiet {unit}", f"reset-failed {unit}", f"is-active --quiet {unit}", f"start {unit}"]
    assert f"started {unit}" in result.stdout and state.read_text().strip() == "active"

    result, calls = provision()  # running: left alone
    assert not [c for c in calls if c.split()[0] in ("start", "restart", "daemon-reload")], calls
    assert f"{unit} is running" in result.stdout


def test_lab_vm_mode_can_listen_on_loopback_only(scratch: Scratch):
    """On a cloud VM (cloud-init) nothing forwards: listen on 127.0.0.1, reach it by ssh -L."""
    result = scratch.provision("--lab-vm", LABHELPER_LISTEN="127.0.0.1")
    assert result.returncode == 0, result.stderr
    assert "--ServerApp.ip=127.0.0.1" in scratch.unit and "--ServerApp.ip=0.0.0.0" not in scratch.unit
    bad = scratch.provision("--lab-vm", LABHELPER_LISTEN="everywhere")
    assert bad.returncode == 2 and "LABHELPER_LISTEN='everywhere'" in bad.stderr


def test_url_before_provisioning_says_what_to_do(tmp_path: Path):
    env = _script_env(LABHELPER_ROOT=str(tmp_path))
    result = run(["bash", str(PROVISION), "--url"], env=env)
    assert result.returncode == 1 and "--lab-vm" in result.stderr


def test_url_as_a_user_who_cannot_read_the_token_says_sudo():
    """The token exists but is root's (mode 0600): `--url` as the vagrant user must say to use sudo."""
    # A folder anyone can traverse (pytest's tmp_path is root's only), removed at the end.
    root = Path(tempfile.mkdtemp(prefix="lh-url-test-"))
    try:
        root.chmod(0o755)
        etc = root / "etc" / "labhelper"
        etc.mkdir(parents=True)
        etc.chmod(0o755)
        (etc / "jupyter-token").write_text("0" * 48)
        env = _script_env(LABHELPER_ROOT=str(root))
        if os.geteuid() == 0:
            # Root reads every file: ask as nobody instead, as `vagrant ssh` would be unprivileged.
            setpriv = need("setpriv")
            (etc / "jupyter-token").chmod(0o600)
            command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "bash", str(PROVISION), "--url"]
        else:
            (etc / "jupyter-token").chmod(0o000)
            command = ["bash", str(PROVISION), "--url"]
        result = run(command, env=env)
        assert result.returncode == 4, result.stdout + result.stderr
        assert "readable by root only: run 'sudo " in result.stderr and "--url'" in result.stderr
        assert "0" * 48 not in result.stdout
    finally:
        shutil.rmtree(root)


@pytest.mark.parametrize("missing", ["everything", "notebooks", "labhelper"])
def test_lab_vm_mode_needs_the_repository(tmp_path: Path, missing: str):
    _need_packages()
    src = tmp_path / "nowhere"
    if missing != "everything":  # a checkout with one folder missing is not the course either
        src.mkdir()
        shutil.copy2(ROOT / "pyproject.toml", src)
        shutil.copytree(ROOT / "scripts", src / "scripts")
        (src / ({"notebooks": "labhelper", "labhelper": "notebooks"}[missing])).mkdir()
    env = _script_env(LABHELPER_ROOT=str(tmp_path / "root"), LABHELPER_SRC=str(src))
    result = run(["bash", str(PROVISION), "--lab-vm"], env=env)
    assert result.returncode == 6 and "LABHELPER_SRC" in result.stderr
    assert not (tmp_path / "root").exists()  # stopped before writing anything


# ----------------------------------------------------------------------------- apt, with stand-ins

FAKE_TOOLS = {
    "id": 'echo 0',  # root, as far as the script can tell (it asks `id -u` only)
    "dpkg-query": "exit 1",  # nothing installed yet
    "apt-cache": "exit 0",  # every package exists
    "sleep": 'echo "sleep $*" >> "$FAKE_LOG"',  # no real waiting in a unit test
    "apt-get": r"""
echo "apt-get $*" >> "$FAKE_LOG"
case " $* " in
  *" update "*)
    n=$(cat "$FAKE_STATE" 2>/dev/null || echo 0)
    echo $((n + 1)) > "$FAKE_STATE"
    if [ "$n" -lt "$FAKE_LOCKED_UPDATES" ]; then
      echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 1234 (apt-get)" >&2
      echo "E: Unable to lock directory /var/lib/apt/lists/" >&2
      exit 100
    fi
    if [ -n "$FAKE_OTHER_ERROR" ]; then echo "E: $FAKE_OTHER_ERROR" >&2; exit 100; fi ;;
esac
""",
}


@pytest.mark.parametrize("case", ["lock-released", "other-error", "lock-never-released"])
def test_provision_waits_for_the_apt_lock(tmp_path: Path, case: str):
    """First boot of a fresh Ubuntu: unattended-upgrades holds apt's locks while Vagrant provisions."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKE_TOOLS.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    os_release = tmp_path / "os-release"
    os_release.write_text('ID=ubuntu\nID_LIKE=debian\nPRETTY_NAME="Ubuntu 24.04 LTS"\n')
    log = tmp_path / "calls.log"
    locked, other = {"lock-released": (2, ""), "other-error": (0, "The repository 'x' has no Release file."),
                     "lock-never-released": (10_000, "")}[case]
    env = _script_env(
        PATH=f"{bin_dir}:{os.environ['PATH']}", LABHELPER_OS_RELEASE=str(os_release),
        FAKE_LOG=str(log), FAKE_STATE=str(tmp_path / "updates"),
        FAKE_LOCKED_UPDATES=str(locked), FAKE_OTHER_ERROR=other,
    )
    result = run(["bash", str(PROVISION)], env=env)
    calls = log.read_text().splitlines()
    updates = [c for c in calls if c.startswith("apt-get") and " update" in c]
    installs = [c for c in calls if c.startswith("apt-get") and " install " in c]
    sleeps = [c for c in calls if c.startswith("sleep")]
    # Every apt-get waits for dpkg's lock itself.
    assert all(c.startswith("apt-get -o DPkg::Lock::Timeout=600 ") for c in updates + installs), calls
    if case == "lock-released":
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(updates) == 3 and sleeps == ["sleep 5", "sleep 5"]
        assert result.stdout.count("waiting for it, up to 600 s") == 1
        assert len(installs) == 1 and "install -y -qq --no-install-recommends " in installs[0]
        packages = installs[0].split("--no-install-recommends ", 1)[1].split()
        assert "python3-venv" in packages and "python3-pip" not in packages  # ensurepip comes with venv
    elif case == "other-error":
        assert result.returncode != 0 and "has no Release file" in result.stderr
        assert len(updates) == 1 and not sleeps and not installs  # not a lock: no point waiting
    else:
        assert result.returncode != 0 and "Could not get lock" in result.stderr
        assert len(sleeps) == 600 // 5 and len(updates) == len(sleeps) + 1 and not installs

import json
import os
import subprocess
import sys

import pytest

from labhelper import cli


def run(*args, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "labhelper", *args], capture_output=True, text=True, env=e, timeout=60)


def test_doctor_json_shape_and_exit_code(tmp_path):
    p = run("doctor", "--json", env={"LABHELPER_DISPOSABLE": "0"})
    data = json.loads(p.stdout)
    names = {c["name"] for c in data["checks"]}
    assert {"root", "disposable", "kvm", "cgroups", "strace", "dot"} <= names
    assert data["virtualization"]["case"]
    assert p.returncode == (0 if data["ok"] else 1)


def test_doctor_text_explains_missing(tmp_path):
    p = run("doctor", env={"LABHELPER_DISPOSABLE": "0"})
    if not os.path.exists("/etc/labhelper/disposable"):
        assert p.returncode == 1 and "MISSING" in p.stdout and "disposable" in p.stdout
        assert "Something required is missing" in p.stdout


def test_census_and_cleanup_on_an_empty_ledger(tmp_path):
    env = {"LABHELPER_LEDGER": str(tmp_path / "ledger")}
    p = run("census", "--json", env=env)
    assert p.returncode == 0 and p.stderr == ""
    p = run("cleanup", "--dry-run", env=env)
    assert p.returncode == 0 and p.stderr == ""


def test_unknown_command():
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2

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


def test_doctor_text_explains_missing(tmp_path, monkeypatch, capsys):
    # On any machine, the lab VM included: the doctor is run here with the disposable marker
    # pointing at a file that does not exist, so "disposable" is missing for certain.
    from labhelper import host
    monkeypatch.delenv("LABHELPER_DISPOSABLE", raising=False)
    monkeypatch.setattr(host, "DISPOSABLE_MARKER", tmp_path / "no-marker")
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("disposable"))
    assert "MISSING" in row and "not declared" in row
    assert "-> needed by chapters 00, 03, 04, 05, 06, 07 and 08; fix:" in out and "touch /etc/labhelper/disposable" in out
    assert "Something required is missing" in out


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


def _ledger_with_a_bad_file(tmp_path, raw):
    from labhelper import registry
    led = tmp_path / "ledger"
    led.mkdir()
    key = registry.Record(raw["kind"], str(raw["name"]), "", 0, None, 0).key
    (led / key).write_text(json.dumps(raw))
    return {"LABHELPER_LEDGER": str(led)}, led / key


def test_census_and_cleanup_survive_a_bad_typed_record(tmp_path):
    # B6: JSON that parses but whose fields have wrong types: a warning, not a traceback.
    env, bad = _ledger_with_a_bad_file(tmp_path, dict(kind="process", name="abc", owner="o", pid=1,
                                                      pid_start=None, created=0.0, data={}))
    for args in (("census",), ("census", "--json"), ("cleanup", "--dry-run")):
        p = run(*args, env=env)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        assert "not a ledger record" in p.stderr
    assert bad.exists()


def test_cleanup_dry_run_prints_each_problem_once_on_stderr(tmp_path):
    # P1/P2: once, on stderr, with what to do about it.
    env, bad = _ledger_with_a_bad_file(tmp_path, dict(kind="netns", name="lh-x", owner="o", pid="1",
                                                      pid_start=None, created=0.0, data={}))
    p = run("cleanup", "--dry-run", env=env)
    both = p.stdout + p.stderr
    assert both.count("not a ledger record") == 1 and str(bad) in p.stderr and "sets it aside" in p.stderr
    assert str(bad) not in p.stdout


def test_internal_error_is_short_and_asks_for_a_report(monkeypatch, capsys):
    # P4: a bug in labhelper: no raw traceback, exit 3, a request to report it.
    def broken(*a, **k):
        raise RuntimeError("something impossible")
    monkeypatch.setattr(cli._cleanup, "census", broken)
    assert cli.main(["census"]) == 3
    err = capsys.readouterr().err
    assert "labhelper census: internal error: RuntimeError: something impossible" in err
    assert "please report it" in err and "Traceback" not in err

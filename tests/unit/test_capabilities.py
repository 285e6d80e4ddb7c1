"""The rule that keeps a skip from hiding a regression (tests/capabilities.py): where
LABHELPER_EXPECT says a capability is here, a skip for its absence is a failure."""
import os
import re
import subprocess
import sys
from pathlib import Path

import capabilities
import pytest

TESTS = Path(__file__).resolve().parents[1]

SAMPLE = '''
import pytest
import capabilities

def test_passes():
    pass

def test_tagged():
    pytest.skip(capabilities.reason("kvm", "pretend /dev/kvm is missing"))

def test_not_applicable():
    pytest.skip(capabilities.reason("n/a", "a Python 3.14 path"))

def test_untagged():
    pytest.skip("no reason given in brackets")

@capabilities.needs("kvm", "as a mark")
def test_marked():
    if not capabilities.have("kvm"):
        raise AssertionError("the mark should have skipped")
'''


def _outcomes(tmp_path, expect: str | None) -> dict[str, str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "LABHELPER_EXPECT"}
    env["PYTHONPATH"] = str(TESTS)
    if expect is not None:
        env["LABHELPER_EXPECT"] = expect
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "capabilities", "-v", "-p", "no:cacheprovider",
                        "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_sample.py")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    found = dict(re.findall(r"::(test_\w+) (PASSED|FAILED|SKIPPED)", p.stdout))
    assert found, p.stdout + p.stderr
    return found


def test_without_expectations_skips_are_skips(tmp_path):
    got = _outcomes(tmp_path, None)
    assert got["test_tagged"] == "SKIPPED" and got["test_untagged"] == "SKIPPED" and got["test_passes"] == "PASSED"


def test_an_expected_capability_turns_its_skip_into_a_failure(tmp_path):
    got = _outcomes(tmp_path, "kvm,strace")
    assert got["test_tagged"] == "FAILED"
    assert got["test_untagged"] == "SKIPPED" and got["test_not_applicable"] == "SKIPPED"
    if not capabilities.have("kvm"):
        assert got["test_marked"] == "FAILED"


def test_all_fails_every_skip_but_the_not_applicable(tmp_path):
    got = _outcomes(tmp_path, "all")
    assert got["test_tagged"] == "FAILED" and got["test_untagged"] == "FAILED"
    assert got["test_not_applicable"] == "SKIPPED" and got["test_passes"] == "PASSED"


def test_judge_skip(monkeypatch):
    monkeypatch.setenv("LABHELPER_EXPECT", "kvm")
    assert "expected on this machine" in capabilities.judge_skip("Skipped: [kvm] no /dev/kvm")
    assert capabilities.judge_skip("Skipped: [strace] not installed") is None
    monkeypatch.delenv("LABHELPER_EXPECT")
    assert capabilities.judge_skip("Skipped: [kvm] no /dev/kvm") is None
    with pytest.raises(KeyError, match="no probe"):
        capabilities.probe("teleporter")

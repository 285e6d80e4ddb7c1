"""Chapter 05's exercise checks, each with right and wrong answers, on the real kernel (v1 here,
v2 in the guest stage)."""
from __future__ import annotations

import pytest

from labhelper import cgroups
from labhelper.exercises import ch05

pytestmark = pytest.mark.cgroups


def test_q1_thirty_percent(g):
    assert ch05.q1.check(g).ok is False                   # no limit yet
    g.limit(cpu=0.5)
    assert ch05.q1.check(g).ok is False                   # another quota
    g.limit(cpu=0.3)
    result = ch05.q1.check(g)
    assert result.ok is True, result.message
    assert ch05.q1.check("g").ok is False


def test_q2_between_two_allocations(g):
    assert ch05.q2.check(g).ok is False                   # no limit
    g.limit(memory="512M", swap=0)
    assert "too high" in ch05.q2.check(g).message
    g.limit(memory="24M", swap=0)
    assert "too low" in ch05.q2.check(g).message
    g.limit(memory="64M", swap=0)
    result = ch05.q2.check(g)
    assert result.ok is True, result.message


def test_q3_ten_processes(g):
    assert ch05.q3.check(g).ok is False
    g.limit(pids=20)
    assert ch05.q3.check(g).ok is False
    g.limit(pids=10)
    result = ch05.q3.check(g)
    assert result.ok is True, result.message


def test_q4_version_and_file():
    ver = cgroups.version()
    right = (ver, "memory.max" if ver == 2 else "memory.limit_in_bytes")
    assert ch05.q4.check(right).ok is True
    assert ch05.q4.check((3 - ver, right[1])).ok is False
    assert ch05.q4.check((ver, "memory.high")).ok is False
    assert ch05.q4.check("v2").ok is False

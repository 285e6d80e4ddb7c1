"""Chapter 02 exercises, the parts that need no /dev/kvm (the rest: tests/system/test_kvm_exercises_ch02.py)."""
from __future__ import annotations

import capabilities

from labhelper.exercises import ch02
from labhelper.kvm import guests

needs_as = capabilities.needs("binutils", "GNU binutils is not installed")


def test_q2_right_and_wrong():
    assert ch02.q2.check(ch02.COUNT_ME_EXITS).ok
    high = ch02.q2.check(ch02.COUNT_ME_EXITS + 5)
    low = ch02.q2.check(1)
    assert not high.ok and "too many" in high.message and "cpuid" not in high.message.split("KVM")[0]
    assert not low.ok and "too few" in low.message
    for r in (high, low):
        assert str(ch02.COUNT_ME_EXITS) not in r.message        # never gives the answer away
    assert not ch02.q2.check("7").ok and not ch02.q2.check(True).ok and not ch02.q2.check(...).ok


def test_q1_and_q3_refuse_what_is_not_source():
    for q in (ch02.q1, ch02.q3):
        r = q.check(42)
        assert not r.ok and "string" in r.message
        assert not q.check(...).ok


@needs_as
def test_q1_and_q3_report_assembler_errors():
    r = ch02.q1.check("    mov ax, [0x600\n    hlt\n")
    assert not r.ok and "assembler refused" in r.message and "line 1" in r.message


@needs_as
def test_checks_say_when_kvm_is_missing(monkeypatch):
    # A right answer and a wrong one: without a VM neither can be judged, and neither is "wrong".
    monkeypatch.setenv("LABHELPER_KVM_DEVICE", "/nonexistent")
    for q, src in ((ch02.q1, guests.ADD_TWO), (ch02.q3, guests.pv_source(ch02.FAST_MESSAGE)),
                   (ch02.q1, "    hlt\n"), (ch02.q3, guests.serial_source(ch02.FAST_MESSAGE))):
        r = q.check(src)
        assert r.ok is None and not r, r
        assert "/dev/kvm is not usable" in r.message and "Cannot check here" in repr(r)
    # What needs no VM is still judged: a syntax error is wrong anywhere.
    assert ch02.q1.check("    mov ax, [0x600\n").ok is False


def test_checks_without_binutils_cannot_check(monkeypatch):
    from labhelper.kvm import guests as g
    monkeypatch.setattr(g, "tools", lambda: {"as": None, "ld": "/usr/bin/ld", "objcopy": None})
    r = ch02.q3.check("    hlt  # a source no earlier test assembled (the assembler's cache)\n")
    assert r.ok is None and "binutils" in r.message, r


def test_hints_and_solutions():
    for q in (ch02.q1, ch02.q2, ch02.q3):
        assert q.hint().body and q.solution().body and repr(q).startswith("Exercise 02.")
    assert "0x510" in ch02.q3.hint().body and "ADD_TWO" in ch02.q1.solution().body

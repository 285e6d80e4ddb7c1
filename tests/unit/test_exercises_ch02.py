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


def _ran(monkeypatch, result, refused=()):
    """Replace the VM run: the checks then judge `result` as if the guest had produced it."""
    monkeypatch.setattr(ch02, "_run_guest", lambda source, prepare=None: (result, None, list(refused)))


def test_q1_without_hlt_says_a_guest_must_end_with_hlt(monkeypatch):
    from labhelper.kvm import exits
    from labhelper.kvm.machine import RunResult
    crashed = RunResult("KVM_EXIT_INTERNAL_ERROR", 3, {"IoOut": 1}, b"", (1234 + 4321,),
                        exits.InternalError(1))
    _ran(monkeypatch, crashed)
    no_hlt = guests.ADD_TWO.replace("hlt", "")
    r = ch02.q1.check(no_hlt)
    assert not r.ok and "no `hlt`" in r.message and "must end with `hlt`" in r.message
    assert "ran on into" in r.message and "KVM_INTERNAL_ERROR_EMULATION" in r.message
    # With a hlt in the source (only in a comment does not count) the crash is described otherwise.
    assert "no `hlt`" not in ch02.q1.check(guests.ADD_TWO).message
    assert "no `hlt`" in ch02.q1.check(no_hlt + "    # hlt would go here\n").message
    # The right answer, halting, is still right: the fake run reports the sum of what the check put in memory.
    def halts_with_the_sum(source, prepare=None):
        memory = {}
        prepare(type("M", (), {"write": lambda self, addr, data: memory.update({addr: data})})())
        a, b = int.from_bytes(memory[0x600][:2], "little"), int.from_bytes(memory[0x600][2:], "little")
        return RunResult("hlt", 2, {"IoOut": 1, "Hlt": 1}, b"", ((a + b) & 0xFFFF,), exits.Hlt()), None, []
    monkeypatch.setattr(ch02, "_run_guest", halts_with_the_sum)
    assert ch02.q1.check(guests.ADD_TWO).ok


def test_has_hlt():
    assert ch02._has_hlt("    hlt\n") and ch02._has_hlt("done: HLT") and ch02._has_hlt("nop; hlt")
    assert not ch02._has_hlt("    nop  # hlt\n") and not ch02._has_hlt("    mov ax, hltx\n")


def test_q3_bad_mailbox_says_the_buffer_was_refused_and_why(monkeypatch):
    from labhelper.kvm import exits
    from labhelper.kvm.machine import RunResult
    why = "buffer [0xff00, +512) refused: no memory slot covers guest address 0xff00 (+512)"
    _ran(monkeypatch, RunResult("hlt", 2, {"IoOut": 1, "Hlt": 1}, b"", (), exits.Hlt()), [why])
    r = ch02.q3.check("    hlt\n")
    assert not r.ok and "refused your buffer" in r.message and why in r.message
    assert "inside guest memory" in r.message and "printed nothing" in r.message
    # The right answer is still right.
    good = ch02.FAST_MESSAGE.encode()
    _ran(monkeypatch, RunResult("hlt", 2, {"IoOut": 1, "Hlt": 1}, good, (), exits.Hlt()))
    assert ch02.q3.check("    hlt\n").ok

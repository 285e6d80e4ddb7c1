"""Chapter 08's checks, given made-up measurements (the notebook passes the real ones): a right
answer, wrong ones on both sides, and "cannot check" where a measurement could not be made."""
from __future__ import annotations

from labhelper.comparison import Boot, Timing
from labhelper.exercises import ch08
from labhelper.syscost import Cost, Costs

BOOT = Boot("/boot/vmlinuz-x", "6.1.0-test", "tcg", 4.0, 1.0, 200 << 20, 256 << 20)
LIFE = Timing("container", (0.01, 0.01, 0.01))                 # 400 lives per boot


def _costs(*pairs):
    return Costs(tuple(Cost(k, k, True, (ns,) * 3, 10) for k, ns in pairs))


def test_q1_right_within_the_tolerance_and_wrong_outside():
    assert ch08.q1.check(400, boot=BOOT, life=LIFE).ok
    assert ch08.q1.check(300, boot=BOOT, life=LIFE).ok                 # within 1.5x
    high, low = ch08.q1.check(1000, boot=BOOT, life=LIFE), ch08.q1.check(40, boot=BOOT, life=LIFE)
    assert not high.ok and "too many" in high.message and not low.ok and "too few" in low.message
    assert "400" not in high.message + low.message                     # the answer is not given away
    for bad in ("400", True, -1, float("nan"), ...):
        assert ch08.q1.check(bad, boot=BOOT, life=LIFE).ok is False
    nothing = ch08.q1.check(400, boot=None, life=LIFE)
    assert nothing.ok is None and "no kernel was booted" in nothing.message


def test_q2_reads_the_measured_ratio():
    path = _costs(("getpid", 100), ("container_getpid", 200), ("vm_exit", 8000))     # 40 per exit
    assert ch08.q2.check(40, costs=path).ok and ch08.q2.check(55, costs=path).ok
    assert ch08.q2.check(80, costs=path).ok is False and ch08.q2.check(20, costs=path).ok is False
    assert ch08.q2.check(40).ok is False                               # no measurement passed
    no_kvm = ch08.q2.check(40, costs=_costs(("getpid", 100), ("container_getpid", 200)))
    assert no_kvm.ok is None and "/dev/kvm" in no_kvm.message
    assert ch08.q2.check("40", costs=path).ok is False


def test_q3_compares_with_what_each_kernel_said():
    seen = {"container": "6.18.0-host", "vm": "6.1.0-test"}
    assert ch08.q3.check({"container": "6.18.0-host", "vm": "6.1.0-test"}, measured=seen).ok
    swapped = ch08.q3.check({"container": "6.1.0-test", "vm": "6.18.0-host"}, measured=seen)
    assert not swapped.ok and "container" in swapped.message
    assert ch08.q3.check({"container": "6.18.0-host"}, measured=seen).ok is False
    assert ch08.q3.check("6.18", measured=seen).ok is False
    assert ch08.q3.check({"container": "a", "vm": "b"}).ok is None   # nothing booted, nothing measured


def test_hints_and_solutions():
    for q in (ch08.q1, ch08.q2, ch08.q3):
        assert q.hint().body and q.solution().body and repr(q).startswith("Exercise 08.")

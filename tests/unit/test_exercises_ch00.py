import dataclasses

import capabilities

from labhelper import host
from labhelper.exercises import CheckResult, ch00


def test_q1_right_and_wrong():
    # The right answer comes from the test's own reading of /proc/self/mountinfo, not from
    # host.facts(), which the checker itself uses: a wrong detection must fail here.
    actual = capabilities.cgroup_mode()
    assert ch00.q1.check(actual).ok
    wrong_answer = "v1" if actual != "v1" else "v2"
    result = ch00.q1.check(wrong_answer)
    assert not result.ok and actual not in result.message  # never gives the answer away
    assert not ch00.q1.check(2).ok and not ch00.q1.check("cgroup3").ok
    assert not ch00.q1.check(...).ok


def _machine_with(monkeypatch, **cgroup_and_kvm):
    real = host.facts()
    fake = dataclasses.replace(real, cgroup=dataclasses.replace(real.cgroup, mode=cgroup_and_kvm.get("mode", "v2")),
                               kvm=dataclasses.replace(real.kvm, flavour=cgroup_and_kvm.get("flavour", "kvm_intel")))
    monkeypatch.setattr(host, "facts", lambda *a, **k: fake)


def test_q1_in_the_lab_vm(monkeypatch):
    # What a learner in the lab VM (pure cgroup v2) meets, on any machine.
    _machine_with(monkeypatch, mode="v2")
    assert ch00.q1.check("v2").ok and ch00.q1.check(" V2 ").ok
    assert not ch00.q1.check("hybrid").ok and not ch00.q1.check("v1").ok


def test_q2_right_and_wrong():
    actual = capabilities.kvm_flavour()
    assert ch00.q2.check(actual).ok
    other = "kvm_amd" if actual != "kvm_amd" else "kvm_intel"
    assert not ch00.q2.check(other).ok and not ch00.q2.check("vmware").ok


def test_q2_on_an_amd_lab_vm(monkeypatch):
    _machine_with(monkeypatch, flavour="kvm_amd")
    assert ch00.q2.check("kvm_amd").ok and not ch00.q2.check("kvm_intel").ok and not ch00.q2.check("none").ok


def test_hint_solution_and_display():
    assert "cgroup" in repr(ch00.q1.hint()) and "check(" in repr(ch00.q1.solution())
    assert ch00.q1.hint()._repr_markdown_().startswith("**Hint:**")
    r = CheckResult(True, "fine")
    assert repr(r) == "✅ Correct: fine" and "color" in r._repr_html_() and bool(r)


def test_checker_that_crashes_gives_a_message():
    from labhelper.exercises import Exercise

    def bad(answer):
        raise ZeroDivisionError("oops")

    r = Exercise("x", "t", bad, "h", "s").check(1)
    assert not r.ok and "could not be checked" in r.message


def test_cannot_check_is_neither_right_nor_wrong():
    from labhelper.exercises import cannot_check
    r = cannot_check("no /dev/kvm here")
    assert r.ok is None and not r and repr(r) == "⚠️ Cannot check here: no /dev/kvm here"

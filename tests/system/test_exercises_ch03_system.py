"""Chapter 03 exercises: each check fed the solution and wrong answers, on the real kernel. The
checks read /proc and join namespaces, so they need root; the census around each test checks
that the held processes went with their cgroups."""
from __future__ import annotations

import socket

import pytest

from labhelper import namespaces, syscalls
from labhelper.exercises import ch03

pytestmark = pytest.mark.cgroups


def test_q1_right():
    with namespaces.hold(["uts"], hostname="ex1") as held:
        r = ch03.q1.check(held)
        assert r.ok, r.message
        assert socket.gethostname() in r.message


@pytest.mark.parametrize("names, hostname, words", [
    (["uts"], "ex2", "not 'ex1'"),
    (["ipc"], None, "shares this machine's UTS namespace"),
])
def test_q1_wrong(names, hostname, words):
    with namespaces.hold(names, hostname=hostname) as held:
        r = ch03.q1.check(held)
    assert r.ok is False and words in r.message, r.message


@pytest.mark.parametrize("exercise", [ch03.q1, ch03.q2, ch03.q3, ch03.q4])
def test_a_closed_or_missing_process_is_not_an_answer(exercise):
    held = namespaces.hold(["uts"])
    held.close()
    for answer in (held, None, "held", 0, True):
        r = exercise.check(answer)
        assert r.ok is False and "pass the process" in r.message, r.message


def test_q2_right():
    with namespaces.hold(["pid"]) as held:
        r = ch03.q2.check(held)
        assert r.ok, r.message
        assert f"NSpid: {held.pid} 1" in r.message


def test_q2_wrong():
    with namespaces.hold(["uts"]) as held:
        r = ch03.q2.check(held)
    assert r.ok is False and "one pid only" in r.message, r.message


def test_q3_right():
    with namespaces.hold(["mnt"]) as held:
        namespaces.enter(held.pid, ["mnt"], syscalls.mount, "ex3", "/mnt", "tmpfs")
        r = ch03.q3.check(held)
        assert r.ok, r.message


@pytest.mark.parametrize("names, words", [
    (["mnt"], "nothing of type tmpfs is mounted on /mnt"),
    (["uts"], "shares this machine's mount namespace"),
])
def test_q3_wrong(names, words):
    with namespaces.hold(names) as held:
        r = ch03.q3.check(held)
    assert r.ok is False and words in r.message, r.message


@pytest.mark.parametrize("uid", [None, 1234])
def test_q4_right(uid):
    kwargs = {} if uid is None else {"uid": uid}
    with namespaces.hold(["user"], **kwargs) as held:
        r = ch03.q4.check(held, uid or 65534)
        assert r.ok, r.message
        assert ch03.q4.check(held, 0).ok is False


@pytest.mark.parametrize("names, answer, words", [
    (["user"], 0, "not that one"),
    (["user"], "65534", "the uid outside"),
    (["uts"], 65534, "this machine's user namespace"),
])
def test_q4_wrong(names, answer, words):
    with namespaces.hold(names) as held:
        r = ch03.q4.check(held, answer)
    assert r.ok is False and words in r.message, r.message


def test_hints_and_solutions_name_the_api():
    assert "namespaces.hold" in repr(ch03.q1.solution()) and "hostname='ex1'" in repr(ch03.q1.solution())
    for q in (ch03.q1, ch03.q2, ch03.q3, ch03.q4):
        assert q.hint() and q.solution()

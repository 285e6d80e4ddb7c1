"""Chapter 03 exercises: each check fed the solution and wrong answers, on the real kernel. The
checks read /proc and join namespaces, so they need root; the census around each test checks
that the held processes went with their cgroups."""
from __future__ import annotations

import socket

import pytest

from labhelper import namespaces, process, syscalls
from labhelper.exercises import ch03
from labhelper.flags import CLONE_NEWNS, MountFlags

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
    assert r.ok is False and "in this notebook's PID namespace" in r.message, r.message


def test_q3_right():
    with namespaces.hold(["mnt"]) as held:
        namespaces.enter(held.pid, ["mnt"], syscalls.mount, "ex3", "/mnt", "tmpfs")
        r = ch03.q3.check(held)
        assert r.ok, r.message


@pytest.mark.parametrize("names, words", [
    (["mnt"], "no tmpfs is mounted on /mnt in it"),
    (["uts"], "shares this machine's mount namespace"),
])
def test_q3_wrong(names, words):
    with namespaces.hold(names) as held:
        r = ch03.q3.check(held)
    assert r.ok is False and words in r.message, r.message


def _q3_where_mnt_is_a_mount_point_already(shared: bool):
    # In a scratch mount namespace of its own, /mnt is a mount point already (a cloud VM's
    # scratch disk, say), and shared if asked: a private tmpfs over it must still pass, one
    # that propagated back must not.
    syscalls.mount(None, "/", None, MountFlags.MS_REC | MountFlags.MS_PRIVATE)
    syscalls.mount("lh-scratch", "/mnt", "tmpfs", 0, "size=1m")
    if shared:
        syscalls.mount(None, "/mnt", None, MountFlags.MS_SHARED)
    with namespaces.hold(["mnt"], propagation="shared" if shared else "private") as held:
        namespaces.enter(held.pid, ["mnt"], syscalls.mount, "ex3", "/mnt", "tmpfs")
        return ch03.q3.check(held)


@pytest.mark.parametrize("shared, ok, words", [(False, True, "does not have it anywhere"),
                                               (True, False, "mounted out here too (on /mnt)")])
def test_q3_when_mnt_is_a_mount_point_here(shared, ok, words):
    r = process.run_in_child(_q3_where_mnt_is_a_mount_point_already, shared, unshare=CLONE_NEWNS)
    assert r.ok is ok and words in r.message, r.message


def test_q4_root_made_by_root_is_not_the_answer():
    with namespaces.hold(["user"], uid=None) as held:
        r = ch03.q4.check(held, 0)
    assert r.ok is False and "the real root" in r.message, r.message


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

"""Chapter 01 exercises, each check fed right and wrong answers.

The checks measure the machine by tracing; here the measurements are replaced by fixed values
so that these tests need neither root nor strace (tests/system/test_trace_system.py runs the
real measurements).
"""
from __future__ import annotations

import os

import pytest

from labhelper import syscalls
from labhelper.exercises import ch01


@pytest.fixture(autouse=True)
def measured(monkeypatch):
    monkeypatch.setattr(ch01, "_mkdir_syscall", lambda: "mkdir")
    monkeypatch.setattr(ch01, "_python_startup_calls", lambda: 700)
    monkeypatch.setattr(ch01, "_missing_file_errno", lambda: "ENOENT")
    monkeypatch.setattr(ch01, "_can_trace", lambda: False)


def test_q1_mkdir():
    assert ch01.q1.check("mkdir").ok
    assert ch01.q1.check(" mkdir() ").ok and ch01.q1.check("sys_mkdir").ok
    near = ch01.q1.check("mkdirat")
    assert not near.ok and "close" in near.message
    assert not ch01.q1.check("openat").ok and "files" in ch01.q1.check("openat").message
    assert not ch01.q1.check("execve").ok
    assert not ch01.q1.check("teleport").ok
    assert not ch01.q1.check(83).ok and "string" in ch01.q1.check(83).message
    assert not ch01.q1.check(...).ok


def test_q1_never_gives_the_answer_away():
    for answer in ("openat", "mkdirat", "rmdir", "x"):
        assert "mkdir(2)" not in ch01.q1.check(answer).message


def test_q1_on_aarch64(monkeypatch):
    monkeypatch.setattr(ch01, "_mkdir_syscall", lambda: "mkdirat")
    assert ch01.q1.check("mkdirat").ok and not ch01.q1.check("mkdir").ok


def my_write(fd):
    data = b"hello, kernel\n"
    return syscalls.raw_syscall("write", fd, data, len(data))


def test_q2_write_by_number():
    result = ch01.q2.check(my_write)
    assert result.ok, result.message


def test_q2_wrong_answers():
    def nothing(fd):
        return 0

    def wrong_text(fd):
        data = b"hello kernel"
        return syscalls.raw_syscall("write", fd, data, len(data))

    def through_os_write(fd):
        return os.write(fd, b"hello, kernel\n")

    def no_return(fd):
        data = b"hello, kernel\n"
        syscalls.raw_syscall("write", fd, data, len(data))

    assert "empty" in ch01.q2.check(nothing).message
    assert "not b'hello, kernel" in ch01.q2.check(wrong_text).message
    r = ch01.q2.check(through_os_write)
    assert not r.ok and "by number" in r.message
    assert "return" in ch01.q2.check(no_return).message
    assert not ch01.q2.check("my_write").ok
    assert not ch01.q2.check(...).ok
    boom = ch01.q2.check(lambda fd: 1 / 0)
    assert not boom.ok and "ZeroDivisionError" in boom.message


def test_q3_startup_count_with_tolerance():
    assert ch01.q3.check(700).ok
    assert ch01.q3.check(600).ok and ch01.q3.check(850).ok  # within 25 %
    # The edges, as the task states them ("within 25 % counts"): a tolerance twice as wide, or
    # half as wide, fails here.
    assert ch01.q3.check(700 * 0.76).ok and ch01.q3.check(700 * 1.24).ok
    assert not ch01.q3.check(700 * 0.74).ok and not ch01.q3.check(700 * 1.26).ok
    assert "25 %" in ch01.q3.task
    low, high = ch01.q3.check(100), ch01.q3.check(5000)
    assert not low.ok and "too few" in low.message
    assert not high.ok and "too many" in high.message
    assert "700" not in low.message + high.message  # the count is not given away
    assert not ch01.q3.check("700").ok and not ch01.q3.check(True).ok


def test_q3_without_strace(monkeypatch):
    monkeypatch.setattr(ch01, "_python_startup_calls", lambda: None)
    r = ch01.q3.check(700)
    assert not r.ok and "apt-get install strace" in r.message


def test_q4_errno_name():
    assert ch01.q4.check("ENOENT").ok and ch01.q4.check(" enoent ").ok
    assert "number" in ch01.q4.check(2).message
    assert "may not open" in ch01.q4.check("EACCES").message
    assert not ch01.q4.check("EEXIST").ok and not ch01.q4.check("nope").ok
    assert "ENOENT" not in ch01.q4.check("EEXIST").message


def test_hints_and_solutions_say_something():
    for q in (ch01.q1, ch01.q2, ch01.q3, ch01.q4):
        assert q.hint().body and q.solution().body and q.id.startswith("01.")
        assert repr(q).startswith(f"Exercise {q.id}: ")


def test_q2_wrong_count_points_at_the_count_argument():
    def too_short(fd):
        data = b"hello, kernel\n"
        return syscalls.raw_syscall("write", fd, data, 5)

    r = ch01.q2.check(too_short)
    assert not r.ok and "count" in r.message and "third" in r.message and "len(data)" in r.message
    assert "5 of the message's 14 bytes" in r.message
    assert ch01.q2.check(my_write).ok          # the right count is still right


def test_q2_count_larger_than_the_buffer():
    def too_long(fd):
        return os.write(fd, b"hello, kernel\n" + b"\0" * 6)

    # Not a raw_syscall, but the bytes are what a too-large count writes: the count is named first.
    r = ch01.q2.check(too_long)
    assert not r.ok and "count" in r.message and "larger than your buffer" in r.message


def test_q1_sys_prefix_is_accepted_with_its_caveat():
    r = ch01.q1.check("sys_mkdir")
    assert r.ok and "caveat" in r.message and "kernel's C function" in r.message
    for plain in ("mkdir", "MKDIR", "mkdir()", " Mkdir() "):
        r = ch01.q1.check(plain)
        assert r.ok and "caveat" not in r.message, plain
    assert not ch01.q1.check("sys_mkdirat").ok              # the prefix does not make a wrong name right
    assert "case" in ch01.q1.task and "()" in ch01.q1.task

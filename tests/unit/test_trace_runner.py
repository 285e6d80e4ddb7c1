"""labhelper.trace.runner without running strace: the Trace object on captured strace output
(tests/unit/data/strace), the strace command line, and what is refused or missing before strace
would start. Tracing for real is tested in tests/system/test_trace_system.py. No root needed."""
from __future__ import annotations

import os
import threading
import time

import pytest

from labhelper import trace as T
from labhelper.errors import Refused, RequirementError
from labhelper.trace import runner
from labhelper.trace import TraceError

from strace_data import load


# --- the Trace object --------------------------------------------------------------------------

def test_category_filter():
    t = T.Trace(("sh",), tuple(load("shell_children.txt")))
    files = t.filter(category="file")
    assert files.calls and all(r.category == "file" for r in files.calls)
    procs = t.filter(category="process")
    assert {"execve", "wait4", "vfork"} <= set(procs.syscalls)
    failed = t.filter(failed=True)
    assert failed.calls and all(r.failed for r in failed)
    assert t.summary(category="memory").names() and all(r.category == "memory" for r in t.summary("memory"))
    assert len(t.filter(category="file")) + len(t.filter(category="process")) <= len(t)
    with pytest.raises(ValueError, match="unknown category") as info:
        t.filter(category="disk")
    assert isinstance(info.value, Refused)
    with pytest.raises(Refused, match="unknown category"):
        t.summary(category="disk")


def test_trace_object_views():
    t = T.Trace(("sh", "-c", "x"), tuple(load("shell_children.txt")))
    assert t.exit == "exited with 3" and not t.ok
    assert t.count("mkdir") == 1 and t.first("mkdir").path == "d1"
    assert t.find("openat", path="/nonexistent")[0].errno == "ENOENT"
    assert len(t.pids) == 5 and t.syscalls[0] == "execve"
    assert repr(t).startswith("<Trace 'sh -c x': exited with 3, ") and "5 processes/threads" in repr(t)
    assert "openat" in t._repr_html_()
    assert t.lines(2).splitlines()[0].startswith("execve(")
    from labhelper.trace import TraceError
    with pytest.raises(TraceError, match="exited with 3"):
        t.check()


# --- the strace command line; what is missing or refused before strace starts ------------------

def test_missing_strace_says_how_to_install(tmp_path, monkeypatch):
    missing = str(tmp_path / "no-strace-here")
    with pytest.raises(RequirementError) as info:
        T.strace_path(missing)
    assert "apt-get install strace" in str(info.value) and info.value.missing == ("strace",)
    monkeypatch.setenv("LABHELPER_STRACE", missing)
    with pytest.raises(RequirementError, match="apt-get install strace"):
        T.trace("true")
    with pytest.raises(RequirementError, match="apt-get install strace"):
        T.trace(lambda: None)
    monkeypatch.delenv("LABHELPER_STRACE")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RequirementError, match="not installed"):
        T.strace_path()
    assert not list(tmp_path.iterdir())  # nothing was created


def test_strace_argv_flags():
    argv = T.strace_argv("/usr/bin/strace", "/tmp/out", 99)
    for flag in ("-f", "-ttt", "-T", "-yy", "-q"):
        assert flag in argv
    assert argv[argv.index("-s") + 1] == "99" and argv[argv.index("-o") + 1] == "/tmp/out"
    only = T.strace_argv("s", "o", only="file")
    assert only[-2] == "-e" and only[-1].startswith("trace=") and "?openat" in only[-1].split(",")
    assert "?mmap" not in only[-1]
    with pytest.raises(ValueError, match="only= must be one of") as info:
        T.strace_argv("s", "o", only="disk")
    assert isinstance(info.value, Refused)


def test_strace_argv_also_traces_the_calls_asked_besides_a_category():
    argv = T.strace_argv("s", "o", only="process", also=("read", "access", "clone"))
    names = argv[-1].removeprefix("trace=").split(",")
    assert "?read" in names and "?access" in names and names.count("?clone") == 1 and "?execve" in names


class _Strace:
    """Stands in for strace's Popen: running until told."""
    def __init__(self):
        self.code = None

    def poll(self):
        return self.code


def test_a_traced_function_is_let_go_only_once_strace_has_written_its_first_call(tmp_path):
    # TracerPid is set by PTRACE_SEIZE, before strace asks for the system calls: waiting for it
    # let a child run untraced now and then. The first line strace writes is the sure sign.
    output = tmp_path / "trace.out"
    output.write_text("")
    strace, started = _Strace(), time.monotonic()
    writer = threading.Timer(0.3, lambda: output.write_text("123 1.0 read(3<pipe:[1]>, "))
    writer.start()
    try:
        runner._wait_attached(os.getpid(), strace, str(output), timeout=10)
    finally:
        writer.cancel()
    assert time.monotonic() - started >= 0.29
    with pytest.raises(TraceError, match="did not start tracing"):
        runner._wait_attached(os.getpid(), _Strace(), str(tmp_path / "empty"), timeout=0.2)
    strace.code = 1                     # strace gave up: no wait, the caller reports it
    started = time.monotonic()
    runner._wait_attached(os.getpid(), strace, str(tmp_path / "empty"), timeout=10)
    assert time.monotonic() - started < 1


def test_an_empty_command_is_refused_before_anything_runs():
    # /bin/true stands in for strace: the refusal comes before it would be started
    for empty in ([], "", "   "):
        with pytest.raises(ValueError, match="nothing to trace: the command is empty") as info:
            T.trace(empty, strace="/bin/true")
        assert isinstance(info.value, Refused)

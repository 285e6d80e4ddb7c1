"""labhelper.trace.parser: strace's lines into Records, on strace output captured on a real
machine (tests/unit/data/strace, loaded by strace_data.py).

The fixtures were made with ``strace -f -ttt -T -yy -s 64 -o FILE`` (strace 6.1, Debian 12);
three were cut after the Python interpreter's start-up to keep them small. forms.txt gathers
the rarer line forms in one place, including a raw non-UTF-8 byte. No root needed here.
"""
from __future__ import annotations

import os

import pytest

from labhelper import trace as T

from strace_data import DATA, load, one


# --- single lines ------------------------------------------------------------------------------

def test_complete_call_with_decoded_fds():
    r = one('19369 1795824870.460904 openat(AT_FDCWD</tmp/x>, "/etc/hostname", O_RDONLY|O_CLOEXEC)'
            ' = 3</etc/hostname> <0.000021>')
    assert (r.pid, r.kind, r.syscall) == (19369, "call", "openat")
    assert r.time == pytest.approx(1795824870.460904)
    assert r.args == ("AT_FDCWD</tmp/x>", '"/etc/hostname"', "O_RDONLY|O_CLOEXEC")
    assert (r.retval, r.retval_text, r.errno, r.errtext) == (3, "3</etc/hostname>", None, None)
    assert r.duration == pytest.approx(0.000021)
    assert r.path == "/etc/hostname" and r.category == "file" and not r.failed


def test_failed_call_has_errno_name_and_text():
    r = one('7 1.5 openat(AT_FDCWD, "/nonexistent", O_RDONLY) = -1 ENOENT (No such file or directory) <0.000024>')
    assert (r.retval, r.errno, r.errtext) == (-1, "ENOENT", "No such file or directory")
    assert r.failed and r.retval_text.startswith("-1 ENOENT")


def test_repr_is_short_and_readable():
    r = one('7 1.5 openat(AT_FDCWD, "/nonexistent", O_RDONLY) = -1 ENOENT (No such file or directory) <0.000024>')
    assert repr(r) == '<7 openat(AT_FDCWD, "/nonexistent", O_RDONLY) = -1 ENOENT (No such file or directory)>'
    long = one('7 1.5 write(1, "' + "a" * 200 + '", 200) = 200 <0.000001>')
    assert len(repr(long)) < 100 and repr(long).endswith("...) = 200>")


def test_unfinished_and_resumed_halves():
    first = one("19369 1795824870.468712 wait4(-1,  <unfinished ...>")
    second = one("19369 1795824870.490589 <... wait4 resumed>[{WIFEXITED(s) && WEXITSTATUS(s) == 0}], 0, NULL)"
                 " = 19370 <0.021863>")
    assert (first.kind, first.syscall, first.args_text, first.retval) == ("unfinished", "wait4", "-1, ", None)
    assert (second.kind, second.syscall, second.retval) == ("resumed", "wait4", 19370)
    merged = T.merge([first, second])
    assert len(merged) == 1
    m = merged[0]
    assert m.kind == "call" and m.time == first.time and m.duration == pytest.approx(0.021863)
    assert m.args == ("-1", "[{WIFEXITED(s) && WEXITSTATUS(s) == 0}]", "0", "NULL")


def test_call_with_no_arguments_before_the_break():
    first = one("1 1.0 vfork( <unfinished ...>")
    assert first.args_text == ""
    m = T.merge([first, one("1 1.1 <... vfork resumed>) = 42 <0.000717>")])[0]
    assert (m.kind, m.args, m.retval) == ("call", (), 42)


def test_signal_lines():
    r = one("19369 1.0 --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=19370, si_uid=0, "
            "si_status=0, si_utime=0, si_stime=0} ---")
    assert (r.kind, r.signal, r.syscall) == ("signal", "SIGCHLD", None)
    assert "si_pid=19370" in r.args_text
    stopped = one("8081 1.0 --- stopped by SIGSTOP ---")
    assert (stopped.kind, stopped.signal) == ("signal", "SIGSTOP")


def test_exit_and_killed_lines():
    e = one("5 1.0 +++ exited with 3 +++")
    assert (e.kind, e.retval) == ("exit", 3)
    k = one("5 1.0 +++ killed by SIGKILL +++")
    assert (k.kind, k.signal) == ("killed", "SIGKILL")
    core = one("5 1.0 +++ killed by SIGSEGV (core dumped) +++")
    assert (core.kind, core.signal) == ("killed", "SIGSEGV")


def test_prefix_variants():
    no_pid = one('openat(AT_FDCWD, "/etc/passwd", O_RDONLY|O_CLOEXEC) = 3')
    assert (no_pid.pid, no_pid.time, no_pid.retval) == (None, None, 3)
    bracket = one('[pid  4322] 12:34:56.123456 write(1, "hi\\n", 3) = 3 <0.000010>')
    assert bracket.pid == 4322 and bracket.time == pytest.approx(12 * 3600 + 34 * 60 + 56.123456)
    assert bracket.strings() == ["hi\n"]


def test_empty_line_is_none_and_unknown_line_is_kept():
    assert T.parse_line("") is None and T.parse_line("   \n") is None
    other = one("strace: Process 4321 attached")
    assert other.kind == "other" and "attached" in other.args_text


# --- whole captured files ----------------------------------------------------------------------

def test_every_line_of_the_captured_files_is_understood():
    for path in sorted(DATA.glob("*.txt")):
        for r in T.parse(path.read_bytes()):
            assert r.kind != "other" or r.args_text.startswith("strace:"), (path.name, r.line)
            if r.kind in ("call", "resumed"):
                # every return value is understood: a number, or "?" (no return: exit, killed)
                assert r.retval is not None or r.retval_text.startswith("?"), (path.name, r.line)


def test_cat_hostname_single_process():
    records = load("cat_hostname.txt")
    assert {r.pid for r in records} == {records[0].pid}
    assert records[0].syscall == "execve" and records[0].strings()[0] == "/usr/bin/cat"
    opens = [r for r in records if r.syscall == "openat" and r.path == "/etc/hostname"]
    assert len(opens) == 1 and opens[0].retval >= 0
    assert records[-1].kind == "exit" and records[-1].retval == 0


def test_shell_children_pairs_are_merged():
    raw = load("shell_children.txt", merged=False)
    merged = T.merge(raw)
    n_unfinished = sum(r.kind == "unfinished" for r in raw)
    n_resumed = sum(r.kind == "resumed" for r in raw)
    assert n_unfinished == n_resumed > 0
    assert not [r for r in merged if r.kind in ("unfinished", "resumed")]
    assert len(merged) == len(raw) - n_resumed
    # five processes: the shell and ls, mkdir, rmdir, cat
    assert len({r.pid for r in merged}) == 5
    exits = {r.pid: r.retval for r in merged if r.kind == "exit"}
    shell = merged[0].pid
    assert exits[shell] == 3 and sorted(exits.values()) == [0, 0, 0, 1, 3]
    mkdir = [r for r in merged if r.syscall in ("mkdir", "mkdirat")]
    assert len(mkdir) == 1 and mkdir[0].path == "d1" and mkdir[0].retval == 0
    wait = [r for r in merged if r.syscall == "wait4" and r.retval and r.retval > 0]
    assert len(wait) == 4 and all(r.args[1].startswith("[{WIFEXITED") for r in wait)
    execs = [r.strings()[0] for r in merged if r.syscall == "execve"]
    assert execs == ["/bin/sh", "/usr/bin/ls", "/usr/bin/mkdir", "/usr/bin/rmdir", "/usr/bin/cat"]
    sigchld = [r for r in merged if r.kind == "signal"]
    assert len(sigchld) == 4 and {r.signal for r in sigchld} == {"SIGCHLD"}


def test_threads_killed_mid_call():
    raw = load("threads_killed.txt", merged=False)
    died = [r for r in raw if r.kind == "resumed" and r.retval_text == "?"]
    assert died and died[-1].syscall == "clock_nanosleep" and died[-1].args_text == ""
    merged = T.merge(raw)
    killed = [r for r in merged if r.kind == "killed"]
    assert len(killed) == 2 and {r.signal for r in killed} == {"SIGKILL"}
    kill = [r for r in merged if r.syscall == "kill"]
    assert kill and kill[0].retval is None and kill[0].args == (str(merged[0].pid), "SIGKILL")
    # the sleeping thread's call, merged, has its three printed arguments and no return value
    sleeper = [r for r in merged if r.syscall == "clock_nanosleep" and r.retval is None]
    assert sleeper and len(sleeper[-1].args) == 3
    t = T.Trace(("python3",), tuple(merged))
    assert t.exit == "killed by SIGKILL" and t.killed_by == "SIGKILL" and not t.ok


def test_signals_fixture():
    merged = load("signals.txt")
    sigs = [r.signal for r in merged if r.kind == "signal"]
    for expected in ("SIGUSR1", "SIGSTOP", "SIGCONT", "SIGCHLD", "SIGSEGV"):
        assert expected in sigs
    assert any(r.kind == "signal" and r.args_text.startswith("stopped by") for r in merged)
    restarted = [r for r in merged if r.errno == "ERESTART_RESTARTBLOCK"]
    assert restarted and restarted[0].retval is None and restarted[0].errtext == "Interrupted by signal"
    assert any(r.kind == "killed" and r.signal == "SIGSEGV" for r in merged)
    assert any(r.kind == "exit" and r.retval == 3 for r in merged)
    assert any(r.syscall == "rt_sigreturn" for r in merged)


def test_special_characters_in_paths_and_sockets():
    merged = load("names_sockets.txt")
    created = [r for r in merged if r.syscall == "openat" and "O_CREAT" in r.args_text]
    names = [r.path for r in created]
    assert names == ["a(b", "a)b", "a[b", 'a"b', "a<b", "a b", "a,b", "a->b", "\nx",
                     os.fsdecode(b"bad\xffname")]
    for r in created:
        assert len(r.args) == 4 and r.retval >= 0
        # the returned fd is decoded to the full path; '<' and '>' come back unescaped
        assert r.retval_text.startswith(f"{r.retval}</")
    writes = [r for r in merged if r.syscall == "write" and "caf" in r.args_text]
    assert writes
    data = T.unescape(writes[0].args[1])
    assert data.startswith(b'\xff\xfe\x00 caf\xc3\xa9 "q" \\ \tz') and writes[0].args[1].endswith('"...')
    closes = [r for r in merged if r.syscall == "close" and "a->b" == (r.path or "").rsplit("/", 1)[-1]]
    assert closes and closes[0].args == (closes[0].args_text,)
    pair = [r for r in merged if r.syscall == "socketpair"]
    assert pair and len(pair[0].args) == 4 and pair[0].args[3].count("UNIX-STREAM") == 2
    tcp = [r for r in merged if r.syscall == "close" and "TCP:[" in r.args_text and "->" in r.args_text]
    assert tcp and len(tcp[0].args) == 1
    abstract = [r for r in merged if r.syscall == "bind" and "sun_path=@" in r.args_text]
    assert abstract and len(abstract[0].args) == 3
    cats = {r.syscall: r.category for r in merged if r.is_call}
    assert cats["socket"] == "network" and cats["openat"] == "file" and cats["bind"] == "network"


def test_rare_forms_and_a_raw_non_utf8_byte():
    raw = (DATA / "forms.txt").read_bytes()
    assert b"\xff" in raw  # the fixture really holds a byte that is not UTF-8
    records = T.parse(raw)
    by_name = {}
    for r in records:
        by_name.setdefault(r.syscall or r.kind, []).append(r)
    assert by_name["restart_syscall"][0].retval == 0
    assert by_name["restart_syscall"][0].args == ("<... resuming interrupted clock_nanosleep ...>",)
    detached = by_name["wait4"][0]
    assert detached.kind == "unfinished" and detached.retval_text == "<detached ...>"
    assert by_name["fcntl"][0].retval == 0x8000 and "flags O_RDONLY" in by_name["fcntl"][0].retval_text
    assert by_name["poll"][0].retval == 0 and by_name["poll"][0].retval_text == "0 (Timeout)"
    assert len(by_name["poll"][0].args) == 3
    assert by_name["mmap"][0].retval == 0x7F1234560000
    assert by_name["exit_group"][0].retval is None and by_name["exit_group"][0].duration is None
    assert by_name["futex"][0].retval is None and by_name["futex"][0].retval_text == "? <unavailable>"
    assert by_name["syscall_0x1c7"][0].errno == "ENOSYS"
    assert by_name["getpid"][0].retval == 4321
    (bad,) = [r for r in records if r.syscall == "openat" and r.pid == 4321]
    assert "\\xff" in bad.args_text and bad.errno == "ENOENT"  # kept readable, not dropped
    w = [r for r in records if r.syscall == "write" and r.pid == 4321][0]
    assert T.unescape(w.args[1]) == b'\xff\xfe "q" \\ \tA'
    assert w.path == "/tmp/café"
    sig = [r for r in records if r.kind == "signal"][0]
    assert sig.signal == "SIGTSTP"
    assert any(r.kind == "exit" and r.retval is None and "superseded" in r.args_text for r in records)
    assert any(r.kind == "killed" and r.signal == "SIGSEGV" for r in records)
    # the read that was interrupted: its two halves merge, errno from the second half
    merged = T.merge(records)
    (read,) = [r for r in merged if r.syscall == "read"]
    assert read.kind == "call" and read.errno == "ERESTARTSYS" and read.args == ("0</dev/pts/0<char 136:0>>", '"x"', "1")


def test_merge_keeps_unmatched_halves():
    lone_resumed = one("9 1.0 <... read resumed>\"x\", 1) = 1 <0.1>")
    lone_unfinished = one("8 1.0 read(0,  <unfinished ...>")
    out = T.merge([lone_resumed, lone_unfinished, one("8 1.1 +++ killed by SIGKILL +++")])
    assert [r.kind for r in out] == ["resumed", "unfinished", "killed"]
    # a resumed half of another call does not steal the pending one
    out = T.merge([one("8 1.0 read(0,  <unfinished ...>"), one("8 1.1 <... write resumed>) = 1")])
    assert [r.kind for r in out] == ["unfinished", "resumed"]


@pytest.mark.parametrize("text, expected", [
    ('"a\\tb"', b"a\tb"),
    ('"\\177ELF\\2\\1"...', b"\x7fELF\x02\x01"),
    ('"\\x4f\\x93"', b"\x4f\x93"),
    ('"q\\"\\\\"', b'q"\\'),
    ('"caf\\303\\251"', "café".encode()),
    ('"\\0"', b"\0"),
])
def test_unescape(text, expected):
    assert T.unescape(text) == expected


def test_split_args_edge_cases():
    assert T.split_args("") == ()
    assert T.split_args("3</a,b>, \"x, y\", [1, 2], {a=1, b=2}") == ("3</a,b>", '"x, y"', "[1, 2]", "{a=1, b=2}")
    assert T.split_args("4<TCP:[1.2.3.4:80->5.6.7.8:9]>, 1") == ("4<TCP:[1.2.3.4:80->5.6.7.8:9]>", "1")
    assert T.split_args("{sa_family=AF_UNIX}, [128 => 2]") == ("{sa_family=AF_UNIX}", "[128 => 2]")
    assert T.split_args("a, b, ") == ("a", "b")

"""labhelper.namespaces without root: the table, the checks made before any fork or system call,
and reading namespace ids from fake /proc trees (symlinks shaped like the kernel's)."""
from __future__ import annotations

import os

import pytest

from labhelper import namespaces, process
from labhelper.errors import LabError, Refused
from labhelper.flags import CloneFlags

from fake import write


def fake_proc(root, processes: dict[int, tuple[str, dict[str, int]]]):
    """A fake /proc: for each pid, comm and ns/TYPE -> 'TYPE:[INODE]' links."""
    proc = root / "proc"
    for pid, (comm, ids) in processes.items():
        write(proc / str(pid) / "comm", comm + "\n")
        (proc / str(pid) / "ns").mkdir()
        for t, inode in ids.items():
            os.symlink(f"{t}:[{inode}]", proc / str(pid) / "ns" / t)
    return str(proc)


HOST = {"mnt": 4026531841, "uts": 4026531838, "ipc": 4026531839, "pid": 4026531836, "net": 4026531840,
        "user": 4026531837, "cgroup": 4026531835, "time": 4026531834}


def test_the_table_has_the_eight_types_and_the_seeds_six():
    assert [n.name for n in namespaces.NAMESPACES] == ["mnt", "uts", "ipc", "pid", "net", "user", "cgroup", "time"]
    assert {n.name for n in namespaces.NAMESPACES if n.in_seed} == {"mnt", "pid", "net", "ipc", "uts", "user"}
    assert namespaces.NAMESPACES[0].since.startswith("2.4.19")
    assert next(n for n in namespaces.NAMESPACES if n.name == "user").since.startswith("3.8")
    # The flags are the kernel's (include/uapi/linux/sched.h).
    assert namespaces.flags_of("uts") == 0x04000000
    assert namespaces.flags_of(["mnt", "pid", "time"]) == 0x00020000 | 0x20000000 | 0x00000080


def test_names_are_checked_and_put_in_table_order():
    assert namespaces.names_of(["pid", "uts", "pid"]) == ("uts", "pid")
    assert namespaces.names_of("net") == ("net",)
    with pytest.raises(Refused, match="unknown namespace 'network'") as e:
        namespaces.names_of(["uts", "network"])
    assert "the eight are: mnt, uts" in str(e.value)
    with pytest.raises(Refused, match="no namespace given"):
        namespaces.names_of([])


def test_ids_reads_the_links(tmp_path):
    proc = fake_proc(tmp_path, {7: ("sleep", HOST)})
    assert namespaces.ids(7, proc) == HOST


def test_ids_skips_a_type_this_kernel_lacks(tmp_path):
    old = {k: v for k, v in HOST.items() if k != "time"}
    proc = fake_proc(tmp_path, {7: ("sleep", old)})
    assert "time" not in namespaces.ids(7, proc)


def test_ids_of_a_missing_process_says_so(tmp_path):
    proc = fake_proc(tmp_path, {7: ("sleep", HOST)})
    with pytest.raises(LabError, match="there is no process 8"):
        namespaces.ids(8, proc)


@pytest.mark.parametrize("bad", [0, -3, True, "7", 2.0, None])
def test_a_pid_is_a_positive_number(bad, tmp_path):
    with pytest.raises(Refused, match="positive pid"):
        namespaces.ids(bad, fake_proc(tmp_path, {}))


def test_compare_and_its_table(tmp_path):
    inside = dict(HOST, uts=4026532001, pid=4026532002)
    proc = fake_proc(tmp_path, {7: ("sleep", HOST), 9: ("sh", inside)})
    c = namespaces.compare(7, 9, proc)
    assert c.different() == ("uts", "pid")
    assert set(c.shared()) == set(HOST) - {"uts", "pid"}
    text = repr(c)
    assert "uts" in text and "4026532001" in text and text.count("different") == 2


def test_lsns_counts_members_and_names_the_lowest_pid(tmp_path):
    inside = dict(HOST, uts=4026532001)
    proc = fake_proc(tmp_path, {1: ("init", HOST), 50: ("held", inside), 40: ("bash", HOST), 51: ("child", inside)})
    write(tmp_path / "proc" / "60" / "comm", "gone\n")             # exited while listed: no ns folder
    rows = namespaces.lsns(proc)
    uts = {r.inode: r for r in rows if r.type == "uts"}
    assert uts[4026531838].nprocs == 2 and uts[4026531838].pid == 1 and uts[4026531838].command == "init"
    assert uts[4026532001].nprocs == 2 and uts[4026532001].pid == 50 and uts[4026532001].command == "held"
    assert len(rows) == 8 + 1
    assert [r.type for r in namespaces.lsns(proc, types="uts")] == ["uts", "uts"]
    assert "NPROCS" in repr(rows) and "held" in repr(rows)


@pytest.mark.parametrize("kwargs, message", [
    ({"names": ["pid"], "hostname": "x"}, "needs its own UTS namespace"),
    ({"names": ["uts"], "hostname": ""}, "1 to 64"),
    ({"names": ["uts"], "hostname": "a b"}, "1 to 64"),
    ({"names": ["uts"], "hostname": "x" * 65}, "1 to 64"),
    ({"names": ["uts"], "hostname": "é"}, "1 to 64"),
    ({"names": ["uts"], "hostname": 3}, "1 to 64"),
    ({"names": ["mnt"], "propagation": "rshared"}, "propagation must be"),
    ({"names": ["uts"], "offset": 5}, "needs its own time namespace"),
    ({"names": ["time"], "offset": True}, "number of seconds"),
    ({"names": ["time"], "offset": 1.5}, "number of seconds"),
    ({"names": ["time"], "offset": 11 * 365 * 86400}, "number of seconds"),
    ({"names": ["user"], "uid": -1}, "uid must be"),
    ({"names": ["user"], "uid": "nobody"}, "uid must be"),
    ({"names": ["user"], "uid": 2 ** 32 - 1}, "uid must be"),
    ({"names": ["netns"]}, "unknown namespace"),
])
def test_bad_options_are_refused_before_any_fork(kwargs, message, monkeypatch):
    def no_fork(*a, **k):
        raise AssertionError("forked although the input was bad")
    monkeypatch.setattr(process, "run_in_child", no_fork)
    monkeypatch.setattr(process, "spawn", no_fork)
    names = kwargs.pop("names")
    with pytest.raises(Refused, match=message):
        namespaces.run(names, print, **kwargs)
    with pytest.raises(Refused, match=message):
        namespaces.hold(names, **kwargs)


def test_good_options_make_the_setup():
    s = namespaces._setup_of(["uts", "time", "user"], "lab-1.x", 1000, 3600, "slave")
    assert s.flags == CloneFlags.CLONE_NEWUTS | CloneFlags.CLONE_NEWTIME | CloneFlags.CLONE_NEWUSER
    assert (s.hostname, s.uid, s.offset, s.propagation) == ("lab-1.x", 1000, 3600, "slave")


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/x", "a\0b", "a\nb", "x" * 256, "$(reboot)", "a b",
                                  ".hidden", 5, None])
def test_pin_names_are_refused_before_any_system_call(name, monkeypatch):
    def no_call(*a, **k):
        raise AssertionError("a system call was made for a bad name")
    monkeypatch.setattr(os, "pidfd_open", no_call)
    with pytest.raises(Refused, match="is not a name for pinned namespaces"):
        namespaces.pin(os.getpid(), name)
    with pytest.raises(Refused, match="is not a name for pinned namespaces"):
        namespaces.unpin(name)


@pytest.mark.parametrize("pid", ["self", 0, -1, "1", True])
def test_enter_and_pin_take_a_real_pid(pid, monkeypatch):
    monkeypatch.setattr(process, "run_in_child", lambda *a, **k: pytest.fail("forked"))
    with pytest.raises(Refused, match="positive pid"):
        namespaces.enter(pid, ["uts"], print)
    with pytest.raises(Refused, match="positive pid"):
        namespaces.pin(pid, "good")


def test_enter_a_process_that_is_gone(monkeypatch):
    monkeypatch.setattr(process, "run_in_child", lambda *a, **k: pytest.fail("forked"))
    gone = 2 ** 22 + 1                      # above pid_max's ceiling: never a process
    with pytest.raises(LabError, match=f"there is no process {gone}"):
        namespaces.enter(gone, ["uts"], print)


def test_held_repr_and_idempotent_close(monkeypatch):
    removed = []
    monkeypatch.setattr(namespaces.cgroups, "remove", removed.append)
    r, w = os.pipe()

    class Child:
        def wait(self, timeout):
            return None
    held = namespaces.Held(42, ("uts", "pid"), "/sys/fs/cgroup/labhelper/ns-1", Child(), w)
    assert repr(held) == "Held(uts, pid: pid 42)"
    held.close()
    held.close()
    assert held.closed and repr(held) == "Held(uts, pid: closed)"
    assert os.read(r, 1) == b""             # the release pipe was closed: the process ends
    os.close(r)
    assert removed == ["/sys/fs/cgroup/labhelper/ns-1"] * 2   # cgroups.remove is idempotent itself


@pytest.mark.parametrize("restricted, words", [("1", "AppArmor restricts"), ("0", "user.max_user_namespaces"),
                                               ("", "user.max_user_namespaces")])
def test_a_refused_user_namespace_says_why(restricted, words, monkeypatch):
    real = namespaces.procfs.read_text

    def fake(path, *a, **k):
        if path.endswith("apparmor_restrict_unprivileged_userns"):
            return restricted
        return real(path, *a, **k)
    monkeypatch.setattr(namespaces.procfs, "read_text", fake)
    hint = namespaces._userns_refused(65534)
    assert words in hint and "uid 65534" in hint


def test_the_explorer_table_marks_what_differs():
    from labhelper.teach.widgets import Seen
    seen = Seen([("hostname (uts)", "vm", "inside"), ("its uid (user)", 0, 0)])
    text = repr(seen).splitlines()
    assert text[1].endswith("<-") and not text[2].endswith("<-")
    html = seen._repr_html_()
    assert html.count("font-weight:bold") == 1 and "&lt;" not in html and "inside" in html

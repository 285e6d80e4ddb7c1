import json
import os
import signal
import subprocess
import sys

import pytest

from labhelper import registry
from labhelper.errors import FaultInjected, LabError, LedgerError
from labhelper.procfs import start_time

from fake import proc_tree, stat_line, write


@pytest.fixture(autouse=True)
def _disposable(monkeypatch):
    """The ledger's writes pass the safety guard (tests/unit/test_guard.py checks the refusals)."""
    monkeypatch.setenv("LABHELPER_DISPOSABLE", "1")


@pytest.fixture
def led(tmp_path):
    return registry.Ledger(tmp_path / "ledger")


def test_add_find_remove(led):
    r = led.add("netns", "lh-a", owner="ch04")
    assert r.pid == os.getpid() and r.pid_start == start_time(os.getpid())
    assert led.find("netns", "lh-a") == r
    assert [x.name for x in led.records()] == ["lh-a"]
    led.remove("netns", "lh-a")
    led.remove("netns", "lh-a")  # idempotent
    assert led.records() == []


def test_names_cannot_escape_the_ledger_folder(led):
    # R18: a name that is not one of ours is refused before anything is written...
    for kind, name in (("dir", "../../etc/passwd\nx" + "y" * 500), ("dir", "/etc"), ("link", "eth0"),
                       ("process", "1; rm -rf /"), ("cgroup", "/sys/fs/cgroup/user.slice")):
        with pytest.raises(ValueError):
            led.add(kind, name, owner="o")
    assert not led.root.exists()
    # ...and the file name of any record is a hash: '/', '..' or length cannot reach outside.
    key = registry.Record.key_of("dir", "../../etc/passwd\nx" + "y" * 500)
    assert "/" not in key and len(key) < 64 and key.startswith("dir.")
    r = led.add("dir", "/var/lib/labhelper/c1", owner="o")
    assert os.listdir(led.root) == [r.key]


def test_missing_folder_is_an_empty_ledger(tmp_path):
    assert registry.Ledger(tmp_path / "never").records() == []


def test_unknown_kind_rejected(led):
    with pytest.raises(LedgerError, match="unknown kind"):
        led.add("spaceship", "x")
    assert not led.root.exists() or os.listdir(led.root) == []


def test_corrupt_record_is_reported_and_kept(led):
    led.add("mount", "/run/labhelper/a")
    bad = write(led.root / "mount.0000.json", "{not json")
    wrong = write(led.root / "link.1111.json", json.dumps({"kind": "link"}))
    records = led.records()
    assert [r.name for r in records] == ["/run/labhelper/a"]
    assert len(led.problems) == 2 and all("sets it aside" in p for p in led.problems)
    assert sorted(name for name, _ in led.bad) == ["link.1111.json", "mount.0000.json"]
    assert bad.exists() and wrong.exists()  # reading changes nothing


def test_write_is_atomic_no_temp_files_left(led):
    for i in range(20):
        led.add("link", f"lh-{i}")
    assert all(name.endswith(".json") and not name.startswith(".") for name in os.listdir(led.root))


_KILLED_MID_WRITE = """
import json, os, signal, sys
from labhelper import registry
led = registry.Ledger(sys.argv[1])
real_write = os.write
def half_then_die(fd, data):
    real_write(fd, bytes(data)[:25])                    # half a record on disk...
    os.kill(os.getpid(), signal.SIGKILL)                # ...and the writer dies (a kernel restart)
os.write = half_then_die
led.add("netns", "lh-a", owner=sys.argv[2])
"""


@pytest.mark.parametrize("earlier", [False, True])
def test_a_writer_killed_mid_write_leaves_a_whole_record_or_none(led, earlier):
    # The record goes to a file with no name (O_TMPFILE) that is linked into place once whole: a
    # reader sees the old record or the new one, never half of one, and no temporary file is
    # left. (Written in place, this leaves half a record.)
    if earlier:
        led.add("netns", "lh-a", owner="first")
    p = subprocess.run([sys.executable, "-c", _KILLED_MID_WRITE, str(led.root), "second"],
                       env=dict(os.environ, LABHELPER_DISPOSABLE="1"), capture_output=True, timeout=60)
    assert p.returncode == -signal.SIGKILL, p.stderr
    records = led.records()
    assert led.problems == [], led.problems          # no half record anywhere
    assert [r.owner for r in records] == (["first"] if earlier else [])
    assert sorted(os.listdir(led.root)) == sorted(r.key for r in records)   # no temporary file left


def test_unwritable_ledger_gives_clear_error(tmp_path):
    blocker = write(tmp_path / "file", "")
    with pytest.raises(LedgerError, match="cannot write the ledger"):
        registry.Ledger(blocker / "sub").add("link", "lh-x")


def test_stale_record_pid_reused(tmp_path):
    # The creator (pid 4242, started at tick 1000) is gone and its pid now belongs to a process
    # that started at tick 5000: the record must not call that process its creator (R7).
    proc = proc_tree(tmp_path, "", {4242: ("0::/user.slice\n", 5000)})
    rec = registry.Record("netns", "lh-a", "ch04", 4242, 1000, 0.0)
    assert not rec.creator_alive(str(proc))
    write(proc / "4242" / "stat", stat_line(4242, "x", 1000))
    assert rec.creator_alive(str(proc))


def test_fault_point(monkeypatch):
    registry.fault_point("veth")  # no LABHELPER_FAULT: nothing happens
    monkeypatch.setenv("LABHELPER_FAULT", "veth:raise")
    registry.fault_point("netns")  # another step: nothing
    with pytest.raises(FaultInjected, match="veth"):
        registry.fault_point("veth")
    monkeypatch.setenv("LABHELPER_FAULT", "veth:explode")
    with pytest.raises(ValueError, match="sigkill, sigint or raise"):
        registry.fault_point("veth")


def test_fault_point_sigkill_kills_the_process_group(tmp_path):
    code = "from labhelper import registry; registry.fault_point('cgroup'); print('survived')"
    env = dict(os.environ, LABHELPER_FAULT="cgroup:sigkill")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       start_new_session=True, timeout=30)
    assert p.returncode == -signal.SIGKILL and "survived" not in p.stdout


@pytest.mark.parametrize("change", [{"name": "abc", "kind": "process"}, {"data": []}, {"pid": "12"},
                                    {"pid": True}, {"pid_start": "x"}, {"created": None}, {"owner": 5},
                                    {"kind": "spaceship"}])
def test_records_with_wrong_field_types_are_problems(led, change):
    # B6: well-formed JSON whose fields have the wrong types must not reach the census as a Record.
    raw = dict(kind="netns", name="lh-a", owner="o", pid=1, pid_start=None, created=0.0, data={}) | change
    key = registry.Record(raw["kind"], str(raw["name"]), "", 0, None, 0).key
    write(led.root / key, json.dumps(raw))
    assert led.records() == []
    assert len(led.problems) == 1 and "not a ledger record" in led.problems[0]
    assert "sets it aside" in led.problems[0]  # P2: says what happens to it


def test_unreadable_ledger_folder_is_a_problem_with_a_hint(led, monkeypatch):
    # B8: as non-root, /run/labhelper/ledger (0700 root) cannot be listed: no crash, a hint.
    led.add("netns", "lh-a")

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(registry.os, "listdir", denied)
    assert led.records() == []
    assert len(led.problems) == 1 and "root only" in led.problems[0] and "sudo labhelper" in led.problems[0]


def test_stale_temp_files(led):
    # P3: temp files older than a minute are left by a writer killed mid-write.
    import time
    led.root.mkdir(parents=True)
    old = write(led.root / ".netns.aa.1.tmp", "{")
    write(led.root / ".netns.bb.2.tmp", "{")
    write(led.root / "not-a-temp.tmp", "{")
    os.utime(old, (time.time() - 61, time.time() - 61))
    assert led.stale_temp_files() == [old.name]


def test_a_second_record_of_an_object_in_use_is_refused_and_the_first_kept(led):
    # R18: a name in use is an error that leaves the first object's record intact.
    first = led.add("netns", "lh-a", owner="first")
    with pytest.raises(ValueError, match="in use"):
        led.add("netns", "lh-a", owner="second")
    assert led.records() == [first] and [n for n in os.listdir(led.root)] == [first.key]


def test_a_symlink_in_place_of_the_ledger_is_never_followed(tmp_path):
    # Issue 10: records must not be written into (nor temp files deleted from) a symlink's target.
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / ".old.1.tmp").write_text("{")
    os.utime(target / ".old.1.tmp", (0, 0))
    os.symlink(target, tmp_path / "ledger")
    led = registry.Ledger(tmp_path / "ledger")
    with pytest.raises(LabError, match="symlink"):
        led.add("netns", "lh-a")
    assert led.records() == [] and any("symlink" in p for p in led.problems)
    assert led.stale_temp_files() == []
    assert sorted(os.listdir(target)) == [".old.1.tmp"]        # nothing written, nothing taken


# --- records kept on the object (a lab cgroup's folder) ------------------------------------------

def test_a_record_on_a_folder_is_read_back_and_junk_there_is_ignored(tmp_path, monkeypatch):
    # Extended attributes in the trusted namespace need root: a fake getxattr stands in for them.
    folder = str(tmp_path / "labhelper" / "lh-c1")
    record = registry.new_record("cgroup", folder, owner="ch05")
    store = {folder: json.dumps(record.__dict__).encode()}

    def getxattr(path, name, follow_symlinks=True):
        assert name == registry.ON_OBJECT and not follow_symlinks
        if path not in store:
            raise OSError(61, "No data available")
        return store[path]
    monkeypatch.setattr(os, "getxattr", getxattr)
    assert registry.read_from(folder) == record
    assert registry.read_from(str(tmp_path)) is None                      # none there
    for junk in (b"\xff", b"[]", b"{}", b"[" * 10000, json.dumps({**record.__dict__, "pid": "1"}).encode(),
                 json.dumps({**record.__dict__, "name": "/etc"}).encode()):
        store[folder] = junk
        assert registry.read_from(folder) is None, junk[:20]


def test_a_record_as_a_mount_source_reads_back_and_other_sources_are_not_records():
    record = registry.new_record("mount", "/var/lib/labhelper/ch06/rootfs", owner="ch06")
    source = registry.as_mount_source(record)
    assert source.startswith("labhelper:ch06:") and len(source.encode()) <= 255
    back = registry.from_mount_source(record.name, source, {"made": []})
    assert (back.kind, back.name, back.owner, back.pid, back.pid_start, back.data) == \
        ("mount", record.name, "ch06", record.pid, record.pid_start, {"made": []})
    assert back.key == record.key and abs(back.created - record.created) < 1
    no_start = registry.Record("mount", record.name, "ch06", 5, None, 1.5)
    assert registry.from_mount_source(record.name, registry.as_mount_source(no_start)).pid_start is None
    # An owner that would make the source ambiguous, or too long, keeps its record in the ledger.
    for owner in ("a:b", "x" * 65, "", "-dash", "sp ace"):
        assert registry.as_mount_source(registry.Record("mount", record.name, owner, 5, 7, 1.0)) is None, owner
    for other in ("overlay", "tmpfs", "/dev/sda1", "labhelper", "labhelper:lab:1:2", "labhelper:lab:x:2:3",
                  "labhelper:lab:1:2:3:4", "labhelper:a:b:1:2:3", source + "\n"):
        assert registry.from_mount_source(record.name, other) is None, other


def test_a_record_is_made_only_on_a_disposable_machine(tmp_path, monkeypatch):
    monkeypatch.delenv("LABHELPER_DISPOSABLE")
    monkeypatch.setattr(registry.host, "DISPOSABLE_MARKER", tmp_path / "absent")
    with pytest.raises(LabError, match="not declared disposable"):
        registry.new_record("cgroup", str(tmp_path / "labhelper" / "x"))


def test_a_cgroup_where_folders_keep_no_attributes_is_recorded_in_the_ledger(tmp_path, monkeypatch):
    # A fake hierarchy (a temporary folder) whose filesystem refuses extended attributes: the
    # record goes to the ledger instead, and removing the cgroup forgets it.
    from labhelper.cgroups import tree
    monkeypatch.setenv("LABHELPER_LEDGER", str(tmp_path / "ledger"))
    monkeypatch.setattr(registry, "put_on", lambda path, record: False)
    path = tree.create("c1", owner="ch05", root=str(tmp_path))
    assert path == str(tmp_path / "labhelper" / "c1") and os.path.isdir(path)
    assert registry.ledger().find("cgroup", path).owner == "ch05"
    tree.remove(path)
    assert not os.path.exists(path) and registry.ledger().find("cgroup", path) is None
    assert not os.path.exists(tmp_path / "labhelper")           # the lab's parent went with its last child


def test_a_cgroup_whose_record_cannot_be_written_is_not_left(tmp_path, monkeypatch):
    from labhelper.cgroups import tree

    def refuse(path, record):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(registry, "put_on", refuse)
    with pytest.raises(PermissionError):
        tree.create("c1", root=str(tmp_path))
    assert os.listdir(tmp_path) == []

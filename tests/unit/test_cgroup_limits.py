"""Chapter 05's limits without root: values checked before any write (R20), and v1 and v2 writing
and reading them in fake cgroupfs trees (temporary folders), as youki tests its cgroup code."""
from __future__ import annotations

import pytest

from labhelper.cgroups import files, limits, v1, v2
from labhelper.errors import Refused, RequirementError

GiB = 1024 ** 3


def ok(**kw):
    return limits.check(cores=2, ram=8 * GiB, **kw)


@pytest.mark.parametrize("text,bytes_", [(67108864, 67108864), ("64M", 64 << 20), ("64MiB", 64 << 20),
                                         ("1G", GiB), ("1.5g", int(1.5 * GiB)), ("512k", 512 << 10)])
def test_sizes(text, bytes_):
    assert limits.parse_size(text) == bytes_


@pytest.mark.parametrize("kw,why", [
    ({"memory": -1}, "negative"), ({"memory": "lots"}, "not a size"), ({"memory": True}, "not a size"),
    ({"memory": "1M"}, "below the lab's floor"), ({"memory": "64G"}, "more than this machine"),
    ({"cpu": 0}, "more than 0"), ({"cpu": -0.5}, "more than 0"), ({"cpu": 3}, "more than the 2 CPU"),
    ({"cpu": "half"}, "a number of CPUs"), ({"cpu": 0.001}, "below 0.01"), ({"cpu": float("nan")}, "a number"),
    ({"pids": -1}, "0 or more"), ({"pids": 1.5}, "whole number"), ({"pids": "64"}, "whole number"),
    ({"pids": 1 << 23}, "PID_MAX_LIMIT"), ({"cpu_weight": 0}, "1 to 10000"), ({"cpu_weight": 20000}, "1 to 10000"),
    ({"io_write": "1M"}, "needs the device"), ({"io_write": "1M", "io_device": "sda"}, "MAJOR:MINOR"),
    ({"io_write": 0, "io_device": "7:0"}, "no limit"),
])
def test_r20_bad_values_are_refused_with_the_rule_they_break(kw, why):
    with pytest.raises(Refused, match=why):
        ok(**kw)


def test_r20_the_kernels_rules_and_the_labs_policy():
    assert ok(pids=0).pids == 0                        # valid for the kernel: nothing may fork
    assert ok(memory="6M").memory == 6 << 20           # the lab's floor, Docker's
    assert ok(cpu=2).cpu == 2.0 and ok(cpu=0.01).cpu == 0.01
    with pytest.raises(Refused, match="Docker"):       # the message says whose rule it is
        ok(memory="5M")


# --- fake cgroupfs trees -----------------------------------------------------------------------------

V2_FILES = {"cgroup.controllers": "cpu io memory pids\n", "cgroup.subtree_control": "", "memory.max": "max\n",
            "memory.high": "max\n", "memory.swap.max": "max\n", "cpu.max": "max 100000\n", "cpu.weight": "100\n",
            "pids.max": "max\n", "io.max": "", "cgroup.freeze": "0\n", "cgroup.events": "populated 0\nfrozen 0\n",
            "memory.current": "1048576\n", "memory.peak": "67108864\n",
            "memory.events": "low 0\nhigh 0\nmax 36\noom 1\noom_kill 1\n",
            "cpu.stat": "usage_usec 389884\nuser_usec 1\nsystem_usec 2\nnr_periods 8\nnr_throttled 7\nthrottled_usec 334297\n",
            "pids.current": "3\n", "pids.events": "max 85\n",
            "io.stat": "7:0 rbytes=4096 wbytes=1048576 rios=1 wios=256\n8:0 rbytes=0 wbytes=4096\n",
            "cpu.pressure": "some avg10=1.50 avg60=0.50 avg300=0.10 total=1\nfull avg10=0.25 avg60=0 avg300=0 total=1\n"}


def tree(tmp_path, spec: dict[str, str]) -> str:
    for name, text in spec.items():
        (tmp_path / name).write_text(text)
    return str(tmp_path)


def test_v2_writes_each_limit_in_its_file(tmp_path):
    f = tree(tmp_path, V2_FILES)
    written = v2.apply(f, ok(memory="64M", memory_high="48M", swap=0, cpu=0.5, cpu_weight=50, pids=64,
                             io_write="1M", io_device="7:0"))
    assert (tmp_path / "memory.max").read_text() == f"{64 << 20}\n"
    assert (tmp_path / "cpu.max").read_text() == "50000 100000\n"
    assert (tmp_path / "io.max").read_text() == f"7:0 wbps={1 << 20}\n"
    assert written["pids.max"] == "64" and written["memory.swap.max"] == "0" and written["cpu.weight"] == "50"


def test_v2_refuses_a_controller_the_parent_does_not_give(tmp_path):
    f = tree(tmp_path, {**V2_FILES, "cgroup.controllers": "pids\n"})
    with pytest.raises(RequirementError, match="(?s)memory controller.*Delegate=yes"):
        v2.apply(f, ok(memory="64M"))
    assert (tmp_path / "memory.max").read_text() == "max\n"      # nothing written


def test_v2_enables_only_what_its_parent_gives(tmp_path):
    f = tree(tmp_path, {**V2_FILES, "cgroup.controllers": "memory pids\n"})
    assert v2.enable(f) == ("memory", "pids")
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +pids\n"


def test_v2_stats(tmp_path):
    s = v2.stats(tree(tmp_path, V2_FILES))
    assert (s.version, s.memory_current, s.memory_peak, s.oom_kills, s.memory_max_hits) == (2, 1 << 20, 64 << 20, 1, 36)
    assert (s.cpu_usage_us, s.cpu_periods, s.cpu_throttled_periods, s.cpu_throttled_us) == (389884, 8, 7, 334297)
    assert (s.pids_current, s.pids_refused, s.io_read_bytes, s.io_write_bytes) == (3, 85, 4096, (1 << 20) + 4096)
    assert s.pressure == {"cpu": {"some": 1.5, "full": 0.25}}


V1 = {"memory": {"memory.limit_in_bytes": "9223372036854771712\n", "memory.memsw.limit_in_bytes": "9223372036854771712\n",
                 "memory.usage_in_bytes": "212992\n", "memory.max_usage_in_bytes": "67108864\n",
                 "memory.failcnt": "36\n", "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"},
      "cpu": {"cpu.cfs_quota_us": "-1\n", "cpu.cfs_period_us": "100000\n", "cpu.shares": "1024\n",
              "cpu.stat": "nr_periods 20\nnr_throttled 20\nthrottled_time 977466000\n", "cpuacct.usage": "38632000\n"},
      "pids": {"pids.max": "max\n", "pids.current": "0\n", "pids.events": "max 85\n"},
      "blkio": {"blkio.throttle.read_bps_device": "", "blkio.throttle.write_bps_device": "",
                "blkio.throttle.io_service_bytes": "7:0 Read 4096\n7:0 Write 8192\n7:0 Total 12288\nTotal 12288\n"},
      "freezer": {"freezer.state": "THAWED\n"}}


def v1_tree(tmp_path) -> dict[str, str]:
    folders = {}
    for controller, spec in V1.items():
        (tmp_path / controller).mkdir()
        folders[controller] = tree(tmp_path / controller, spec)
    folders["cpuacct"] = folders["cpu"]
    return folders


def test_v1_writes_the_same_limits_under_its_own_names(tmp_path):
    folders = v1_tree(tmp_path)
    v1.apply(folders, ok(memory="64M", swap="32M", cpu=0.5, cpu_weight=50, pids=64, io_read="2M", io_device="7:0"))
    read = lambda c, n: (tmp_path / c / n).read_text()  # noqa: E731
    assert read("memory", "memory.limit_in_bytes") == f"{64 << 20}\n"
    assert read("memory", "memory.memsw.limit_in_bytes") == f"{96 << 20}\n"      # memory and swap together
    assert read("cpu", "cpu.cfs_quota_us") == "50000\n" and read("cpu", "cpu.cfs_period_us") == "100000\n"
    assert read("cpu", "cpu.shares") == "512\n"                                # weight 50 of 100 = shares 512 of 1024
    assert read("blkio", "blkio.throttle.read_bps_device") == f"7:0 {2 << 20}\n"


def test_v1_has_no_memory_high_and_says_what_it_has(tmp_path):
    with pytest.raises(Refused, match="no memory.high.*soft_limit"):
        v1.apply(v1_tree(tmp_path), ok(memory_high="64M"))


def test_v1_stats_in_v2_units(tmp_path):
    s = v1.stats(v1_tree(tmp_path))
    assert (s.version, s.memory_current, s.memory_peak, s.oom_kills, s.memory_max_hits) == (1, 212992, 64 << 20, 1, 36)
    assert (s.cpu_usage_us, s.cpu_throttled_periods, s.cpu_throttled_us) == (38632, 20, 977466)   # ns -> us
    assert (s.pids_current, s.pids_refused, s.io_read_bytes, s.io_write_bytes) == (0, 85, 4096, 8192)


def test_a_refused_write_names_the_file_the_value_and_the_errno(tmp_path):
    (tmp_path / "pids.max").mkdir()            # writing to a folder fails: EISDIR, at open(2)
    with pytest.raises(OSError) as info:
        files.write(str(tmp_path), "pids.max", 64)
    assert "pids.max" in str(info.value) and "EISDIR" in str(info.value)
    with pytest.raises(OSError) as info:
        files.write(str(tmp_path), "nothere", 1)
    assert "ENOENT" in str(info.value) and "controller is not enabled" in str(info.value)


def test_freeze_waits_for_the_kernel_to_say_frozen(tmp_path):
    f = tree(tmp_path, V2_FILES)
    with pytest.raises(TimeoutError):           # a fake tree never says frozen 1
        v2.freeze(f, True, timeout=0.05)
    assert (tmp_path / "cgroup.freeze").read_text() == "1\n"
    (tmp_path / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    v2.freeze(f, True, timeout=0.05)


# --- loop devices (chapter 05's disks) ---------------------------------------------------------------

def test_loop_structures_have_the_kernels_sizes_and_names_are_checked():
    from labhelper import loop, marks
    import ctypes
    assert ctypes.sizeof(loop._LoopConfig) == 304 and ctypes.sizeof(loop._LoopInfo64) == 232
    assert marks.loop_name("/dev/loop12") == "/dev/loop12"
    for bad in ("/dev/sda", "/dev/loop", "/dev/loop1/../sda", "loop1", None):
        with pytest.raises(Refused):
            marks.loop_name(bad)


def test_the_census_finds_loop_devices_by_their_backing_file(tmp_path):
    from labhelper import loop, marks
    for name, backing in (("loop0", "/run/labhelper/loop/a/disk.img\n"), ("loop1", "/home/me/disk.img\n"),
                          ("loop2", None), ("sda", None)):
        (tmp_path / "block" / name / "loop").mkdir(parents=True)
        if backing:
            (tmp_path / "block" / name / "loop" / "backing_file").write_text(backing)
    scan = marks.Scan(tmp_path, tmp_path, tmp_path, tmp_path)
    found = loop.find_loops(scan)
    assert [(o.name, o.where) for o in found] == [("/dev/loop0", ("/run/labhelper/loop/a",))]


def test_the_lab_goes_below_a_delegated_cgroup_only_inside_the_hierarchy(tmp_path, monkeypatch):
    from labhelper.cgroups import delegation
    mount = tmp_path / "cg"
    (mount / "system.slice" / "lab.service").mkdir(parents=True)
    monkeypatch.delenv(delegation.ROOT_ENV, raising=False)
    assert delegation.base(str(mount)) == str(mount)
    monkeypatch.setenv(delegation.ROOT_ENV, str(mount / "system.slice" / "lab.service"))
    assert delegation.base(str(mount)) == str(mount / "system.slice" / "lab.service")
    monkeypatch.setenv(delegation.ROOT_ENV, str(tmp_path))                   # outside the hierarchy
    assert delegation.base(str(mount)) == str(mount)
    monkeypatch.setenv(delegation.ROOT_ENV, str(mount / "nothere"))
    assert delegation.base(str(mount)) == str(mount)


def test_a_refused_limit_leaves_the_others_unwritten(tmp_path):
    # v1: a refusal of v1's own comes before any write, the I/O limit included
    folders = v1_tree(tmp_path / "v1" if (tmp_path / "v1").mkdir() is None else tmp_path)
    with pytest.raises(Refused, match="memory.high"):
        v1.apply(folders, ok(memory="64M", memory_high="48M", io_write="1M", io_device="7:0"))
    assert (tmp_path / "v1" / "blkio" / "blkio.throttle.write_bps_device").read_text() == ""
    assert (tmp_path / "v1" / "memory" / "memory.limit_in_bytes").read_text().startswith("92233")
    # v2: the I/O limit, the only one the kernel may still refuse, is written first
    f = tmp_path / "v2"
    f.mkdir()
    tree(f, {k: v for k, v in V2_FILES.items() if k != "io.max"})
    (f / "io.max").mkdir()                                # a write that fails
    with pytest.raises(OSError):
        v2.apply(str(f), ok(memory="64M", pids=8, io_write="1M", io_device="7:0"))
    assert (f / "memory.max").read_text() == "max\n" and (f / "pids.max").read_text() == "max\n"

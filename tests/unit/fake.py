"""Fake /proc, /sys and cgroupfs trees in a temporary folder, for tests that must not need root."""
from __future__ import annotations

from pathlib import Path

V1_MOUNTINFO = """\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
25 22 0:24 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:25 / /sys/fs/cgroup/unified rw,nosuid shared:8 - cgroup2 cgroup2 rw,nsdelegate
28 25 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:10 - cgroup cgroup rw,memory
29 25 0:28 / /sys/fs/cgroup/pids rw,nosuid shared:11 - cgroup cgroup rw,pids
30 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:12 - cgroup cgroup rw,cpu,cpuacct
31 25 0:30 / /sys/fs/cgroup/systemd rw,nosuid shared:13 - cgroup cgroup rw,xattr,name=systemd
"""

V2_MOUNTINFO = """\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
35 22 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""


def write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def stat_line(pid: int, comm: str = "sleep", start: int = 1000) -> str:
    # /proc/PID/stat: field 22 is the start time; the command may hold spaces and parentheses.
    fields = ["S", "1"] + ["0"] * 17 + [str(start)] + ["0"] * 30
    return f"{pid} ({comm}) " + " ".join(fields) + "\n"


def proc_tree(root: Path, mountinfo: str, processes: dict[int, tuple[str, int]] | None = None) -> Path:
    """A fake /proc: self/mountinfo, and for each pid: cgroup text and start time."""
    proc = root / "proc"
    write(proc / "self" / "mountinfo", mountinfo)
    for pid, (cgroup, start) in (processes or {}).items():
        write(proc / str(pid) / "cgroup", cgroup)
        write(proc / str(pid) / "stat", stat_line(pid, "odd ) name", start))
    return proc

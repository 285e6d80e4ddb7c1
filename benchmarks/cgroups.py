"""Chapter 05's speed goal, measured side by side in one run (not a test):

- create a cgroup, set a memory limit, join it, leave it and remove it with labhelper within
  1.5x of the same system calls made from C (benchmarks/c/cgroup_reference.c, built with gcc in
  this run and called through ctypes: same process, same clock), each cgroup's record included
  (kept on the cgroup folder itself: registry.put_on).

Both sides work in the hierarchy where this machine's memory limits go (cgroup2 on v2, the v1
memory hierarchy otherwise), below the lab's parent cgroup, and alternate round by round.
Exit status 1 if the goal is missed.

    LABHELPER_DISPOSABLE=1 .venv/bin/python benchmarks/cgroups.py [--rounds N] [--per-round K]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from labhelper import cgroups, procfs  # noqa: E402
from labhelper.cgroups import delegation, files, tree, v2  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LIMIT = str(64 << 20)


def where() -> tuple[str, str, str]:
    """(hierarchy mount, limit file, this process's own cgroup folder in it)."""
    table = procfs.mountinfo()
    v2 = cgroups.version(table) == 2
    limit_file = "memory.max" if v2 else "memory.limit_in_bytes"
    if v2:
        mount = delegation.v2_mount(table)
    else:
        mount = next(m.mountpoint for m in table if m.fstype == "cgroup" and "memory" in m.super_options.split(","))
    for entry in procfs.cgroups_of("self"):
        if (entry.hierarchy == "0" and not entry.controllers) if v2 else "memory" in entry.controllers:
            return mount, limit_file, procfs.cgroup_host_paths(entry, table)[0]
    raise SystemExit("cannot find this process's own cgroup")


def ours(parent_mount: str, limit_file: str, home: str, k: int, tag: str) -> float:
    pid = os.getpid()
    t0 = time.perf_counter()
    for i in range(k):
        path = tree.create(f"{tag}-{i}", root=parent_mount)
        files.write(path, limit_file, LIMIT)
        tree.add(path, pid)
        files.write(home, "cgroup.procs", pid)          # back home (not a lab cgroup: no tree.add)
        tree.remove(path)
    return (time.perf_counter() - t0) / k


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--per-round", type=int, default=100)
    args = parser.parse_args()
    gcc = shutil.which("gcc")
    if gcc is None:
        print("skipped: gcc is not installed (apt-get install gcc libc6-dev): no C reference")
        return 0
    os.environ.setdefault("LABHELPER_OWNER", "benchmark")
    mount, limit_file, home = where()
    keeper = tree.create(f"bench-keep-{os.getpid()}", root=mount)     # the lab's parent stays for both sides
    parent = os.path.dirname(keeper)
    if cgroups.version() == 2:
        v2.enable(parent)                   # memory.max appears in its children only then
    try:
        with tempfile.TemporaryDirectory(prefix="lh-bench-") as tmp:
            lib = os.path.join(tmp, "ref.so")
            subprocess.run([gcc, "-O2", "-Wall", "-shared", "-fPIC", "-o", lib,
                            os.path.join(HERE, "c", "cgroup_reference.c")], check=True)
            ref = ctypes.CDLL(lib)
            ref.cycle.argtypes = [ctypes.c_char_p] * 4 + [ctypes.c_int]

            def c_side(k: int) -> float:
                t0 = time.perf_counter()
                rc = ref.cycle(parent.encode(), limit_file.encode(), LIMIT.encode(), home.encode(), k)
                if rc != 0:
                    raise SystemExit(f"the C reference failed at step {-rc}")
                return (time.perf_counter() - t0) / k

            c_side(5)
            ours(mount, limit_file, home, 5, f"bw{os.getpid()}")            # warm up both
            c_times, our_times = [], []
            for r in range(args.rounds):
                sides = [0, 1] if r % 2 == 0 else [1, 0]
                for side in sides:
                    if side == 0:
                        c_times.append(c_side(args.per_round))
                    else:
                        our_times.append(ours(mount, limit_file, home, args.per_round, f"b{os.getpid()}-{r}"))
    finally:
        for name in os.listdir(parent):
            if name.startswith("c-ref-"):     # what a failed C run left
                os.rmdir(os.path.join(parent, name))
        tree.remove(keeper)
    c, o = statistics.median(c_times), statistics.median(our_times)
    ratio = o / c
    verdict = "ok" if ratio <= 1.5 else "OVER"
    print(f"{'measure':44} {'median':>10} {'ratio':>7} goal")
    print(f"{'C: mkdir, limit, join, leave, rmdir':44} {c * 1e6:8.0f}us {1:6.2f}x")
    print(f"{'labhelper: create, limit, add, add, remove':44} {o * 1e6:8.0f}us {ratio:6.2f}x <= 1.5x {verdict}")
    print(f"(cgroup v{cgroups.version()}, {limit_file}, below {parent})")
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())

"""Foundation speed goals, measured side by side in one run (not a test):

- ``import labhelper`` (and its CLI) stays under 0.3 s: heavy libraries are imported lazily;
- running a function in a child (process.run_in_child) costs at most 2x a bare fork + waitpid.

    .venv/bin/python benchmarks/foundation.py [--rounds N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from labhelper import process, syscost  # noqa: E402


def bare_fork() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def in_child() -> None:
    process.run_in_child(int)


def median_us(fn, rounds: int) -> float:
    return syscost.measure(fn, samples=rounds, batch=1, warmup=0).median / 1000


def import_seconds(module: str, rounds: int = 7) -> float:
    times = []
    for _ in range(rounds):
        out = subprocess.run([sys.executable, "-c", f"import time; t=time.perf_counter(); import {module}; "
                              "print(time.perf_counter()-t)"], capture_output=True, text=True, check=True)
        times.append(float(out.stdout))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args()
    # Interleave the two, so that load on the machine hits both alike.
    bare, ours = [], []
    for _ in range(4):
        bare.append(median_us(bare_fork, args.rounds // 4))
        ours.append(median_us(in_child, args.rounds // 4))
    b, o = statistics.median(bare), statistics.median(ours)
    print(f"{'what':40} {'median':>12} {'ratio':>8} goal")
    print(f"{'bare fork + waitpid':40} {b:10.0f}us {1:8.2f}")
    print(f"{'process.run_in_child(int)':40} {o:10.0f}us {o / b:8.2f} <= 2.0")
    for module in ("labhelper", "labhelper.cli", "labhelper.cleanup"):
        s = import_seconds(module)
        print(f"{'import ' + module:40} {s * 1000:10.0f}ms {'':8} < 300 ms")
    heavy = subprocess.run([sys.executable, "-c", "import sys, labhelper.cli, labhelper.teach.lab, labhelper.teach.diagrams; "
                            "print(sorted(m for m in ('pyroute2','graphviz','ipywidgets','matplotlib') if m in sys.modules))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    print(f"heavy modules imported by `import labhelper.cli`: {heavy} (goal: [])")


if __name__ == "__main__":
    main()

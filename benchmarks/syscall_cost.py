#!/usr/bin/env python3
"""What a system call costs from Python (labhelper.syscost) next to the same calls from C.

    .venv/bin/python benchmarks/syscall_cost.py [--samples N] [--batch N] [--runs N]

1. Compiles benchmarks/c/syscall_cost.c with gcc into a temporary folder (removed afterwards)
   and runs it; measures the same calls with labhelper.syscost in this process; prints both
   medians and the ratio Python / C. Both use the same protocol (samples of back-to-back
   batches, interleaved), so the ratio shows what Python and ctypes add to each call.
2. Tracing overhead: runs real commands plainly, under `strace -f -o /dev/null`, and under
   labhelper.trace.trace (strace plus parsing), and prints the medians and the ratios.

Numbers depend on the machine (CPU, mitigations, virtualization): compare within one run only.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from labhelper import syscost  # noqa: E402
from labhelper import trace as T  # noqa: E402

# labhelper.syscost key -> the C program's key for the same kind of call
PEERS = {
    "python_call": "call",
    "vdso": "vdso",
    "getpid": "getpid",
    "ctypes_noop": "call",
    "ctypes_getpid": "syscall_getpid",
    "wrapper_getpid": "syscall_getpid",
    "read_1": "read_1",
    "read_64k": "read_64k",
}


def c_reference(samples: int, batch: int, read_size: int) -> dict[str, tuple[float, float, float]] | None:
    gcc = shutil.which("gcc")
    if gcc is None:
        print("gcc is not installed: no C reference (apt-get install gcc libc6-dev)")
        return None
    with tempfile.TemporaryDirectory(prefix="lh-bench-") as tmp:
        exe = os.path.join(tmp, "syscall_cost")
        subprocess.run([gcc, "-O2", "-o", exe, str(HERE / "c" / "syscall_cost.c")], check=True)
        out = subprocess.run([exe, str(samples), str(batch), str(read_size)], check=True,
                             capture_output=True, text=True, timeout=300).stdout
    result = {}
    for line in out.splitlines():
        key, median, p10, p90 = line.split()
        result[key] = (float(median), float(p10), float(p90))
    return result


def cost_table(samples: int, batch: int, read_size: int) -> None:
    print(f"== System call costs: labhelper.syscost (Python) vs C, {samples} samples x {batch} calls ==")
    c = c_reference(samples, batch, read_size)
    py = syscost.measure_all(samples=samples, batch=batch, read_size=read_size)
    print(f"{'call':<40} {'mode':<6} {'Python':>9} {'C':>9} {'ratio':>7}  C peer")
    for cost in py:
        peer = PEERS[cost.key]
        if c is not None and peer in c:
            cm = c[peer][0]
            print(f"{cost.label:<40} {'kernel' if cost.kernel else 'user':<6} {cost.median:7.0f}ns "
                  f"{cm:7.1f}ns {cost.median / cm:6.1f}x  {peer}")
        else:
            print(f"{cost.label:<40} {'kernel' if cost.kernel else 'user':<6} {cost.median:7.0f}ns {'n/a':>9} {'':>7}")
    print()
    switch_py = py["getpid"].median - py["vdso"].median
    switch_ctypes = py["ctypes_getpid"].median - py["ctypes_noop"].median
    wrapper = py["wrapper_getpid"].median - py["ctypes_getpid"].median
    print(f"Python: getpid (a mode switch) minus clock_gettime (vDSO, none): {switch_py:.0f} ns")
    print(f"ctypes: syscall(SYS_getpid) minus abs(), the same call shape:  {switch_ctypes:.0f} ns")
    print(f"labhelper's sys_getpid() wrapper on top of the ctypes call:    {wrapper:.0f} ns (Python work, not kernel)")
    if c is not None:
        switch_c = c["syscall_getpid"][0] - c["call"][0]
        print(f"C:      syscall(SYS_getpid) minus an empty function call:       {switch_c:.0f} ns")
        print(f"C:      clock_gettime through the vDSO:                         {c['vdso'][0]:.0f} ns")
    print()


def _median_time(fn, runs: int) -> float:
    """Median seconds of one ``fn()`` over ``runs`` runs."""
    return syscost.measure(fn, samples=runs, batch=1, warmup=0).median / 1e9


def tracing_overhead(runs: int) -> None:
    print(f"== Tracing overhead: wall time of a real command, median of {runs} runs ==")
    strace = shutil.which("strace")
    if strace is None:
        print("strace is not installed: skipped (apt-get install strace)")
        return
    commands = [["ls", "-l", "/usr/bin"], [sys.executable, "-c", "pass"]]
    print(f"{'command':<28} {'plain':>9} {'strace':>9} {'trace()':>9} {'strace/plain':>13} {'trace()/plain':>14} {'syscalls':>9}")
    for cmd in commands:
        def plain():
            subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)

        def under_strace():
            subprocess.run([strace, "-f", "-o", "/dev/null", "--", *cmd], stdout=subprocess.DEVNULL, check=True)

        calls = []

        def under_trace():
            calls.append(len(T.trace(cmd)))

        plain()  # warm the page cache
        p, s, t = (_median_time(f, runs) for f in (plain, under_strace, under_trace))
        name = " ".join(Path(cmd[0]).name if i == 0 else a for i, a in enumerate(cmd))
        print(f"{name:<28} {p * 1e3:7.1f}ms {s * 1e3:7.1f}ms {t * 1e3:7.1f}ms {s / p:12.1f}x {t / p:13.1f}x "
              f"{statistics.median(calls):9.0f}")
    print("strace stops the program at every system call (ptrace): a traced program runs slower,")
    print("and trace() adds parsing the output into records on top.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--read-size", type=int, default=65536)
    ap.add_argument("--runs", type=int, default=10, help="runs per command for the tracing overhead")
    args = ap.parse_args()
    cost_table(args.samples, args.batch, args.read_size)
    tracing_overhead(args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

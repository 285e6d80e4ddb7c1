"""Chapter 06's speed goal for overlay mounts, measured side by side in one run (not a test):

- mount an overlay of 20 lower folders (new mount API, one ``lowerdir+`` per layer, each folder
  opened without following a symlink and handed over open, where the kernel takes that) and unmount
  it with labhelper (overlay.mount + Overlay.unmount: checks, the record (the mount's own source,
  registry.as_mount_source), the work folder's scratch removed) within 1.5x of the same system
  calls made from C (benchmarks/c/overlay_reference.c, built with gcc in this run and called through ctypes: same
  process, same clock). The two sides alternate round by round. Exit status 1 if the goal is missed.

    LABHELPER_DISPOSABLE=1 .venv/bin/python benchmarks/overlay.py [--layers 20] [--rounds N] [--per-round K]
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
from labhelper import cleanup, mounts, overlay  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--per-round", type=int, default=50)
    args = parser.parse_args()
    gcc = shutil.which("gcc")
    if gcc is None:
        print("skipped: gcc is not installed (apt-get install gcc libc6-dev): no C reference")
        return 0
    if not overlay.new_api():
        print("skipped: this kernel's overlayfs has no lowerdir+ (Linux 6.8): no new-API overlay to compare")
        return 0
    owner = f"bench-overlay-{os.getpid()}"
    base = mounts.make_dir(f"/var/lib/labhelper/bench-overlay-{os.getpid()}", owner=owner)
    try:
        lowers = []
        for i in range(args.layers):
            path = f"{base}/layers/{i:02d}"
            os.makedirs(f"{path}/etc")
            with open(f"{path}/etc/file-{i}", "w") as fh:
                fh.write(str(i))
            lowers.append(path)
        for side in ("c", "py"):
            for folder in ("upper", "work", "merged"):      # the mount point exists, as a rootfs folder does
                os.makedirs(f"{base}/{side}-{folder}")
        with tempfile.TemporaryDirectory(prefix="lh-bench-") as tmp:
            lib = os.path.join(tmp, "ref.so")
            subprocess.run([gcc, "-O2", "-Wall", "-shared", "-fPIC", "-o", lib,
                            os.path.join(HERE, "c", "overlay_reference.c")], check=True)
            ref = ctypes.CDLL(lib)
            c_lowers = (ctypes.c_char_p * len(lowers))(*[p.encode() for p in lowers])

            def c_side(k: int) -> float:
                t0 = time.perf_counter()
                rc = ref.cycle(c_lowers, len(lowers), f"{base}/c-merged".encode(), f"{base}/c-upper".encode(),
                               f"{base}/c-work".encode(), k, by_fd)
                if rc != 0:
                    raise SystemExit(f"the C reference failed at step {-rc}")
                return (time.perf_counter() - t0) / k

            def ours(k: int) -> float:
                t0 = time.perf_counter()
                for _ in range(k):
                    ov = overlay.mount(f"{base}/py-merged", lowers, f"{base}/py-upper", f"{base}/py-work", owner=owner)
                    ov.unmount()
                return (time.perf_counter() - t0) / k

            ours(3)                     # warm up both; labhelper finds out how this kernel takes
            by_fd = int(bool(overlay._layer_fds))        # folders, and the C side does the same
            c_side(3)
            c_times, our_times = [], []
            for r in range(args.rounds):
                for side in ([0, 1] if r % 2 == 0 else [1, 0]):
                    if side == 0:
                        c_times.append(c_side(args.per_round))
                    else:
                        our_times.append(ours(args.per_round))
    finally:
        cleanup.cleanup(owner=owner)
    c, o = statistics.median(c_times), statistics.median(our_times)
    ratio = o / c
    verdict = "ok" if ratio <= 1.5 else "OVER"
    print(f"{'measure':52} {'median':>10} {'ratio':>7} goal")
    print(f"{'C: open, fsopen..move_mount, umount2, rmdir scratch':52} {c * 1e6:8.0f}us {1:6.2f}x")
    print(f"{'labhelper: overlay.mount + Overlay.unmount':52} {o * 1e6:8.0f}us {ratio:6.2f}x <= 1.5x {verdict}")
    print(f"({args.layers} lower folders, new mount API; labhelper's checks and record included: the record is the "
          "mount's own source, written by the call that makes the mount)")
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())

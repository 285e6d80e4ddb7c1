"""Chapter 07's speed goal for a container start, measured side by side in one run (not a test):

- ``/bin/true`` in a new container with all namespaces but the network's set up (pid, mount,
  uts, ipc, net, cgroup), pivot_root, /proc, /dev, /sys and a cgroup: labhelper in-process
  (``container.run(None, ..., rootfs=...)``: the cgroup with its device rules, the fork, init's
  steps, the wait, the removal) at most 1.0x crun's ``crun run`` and at most 0.5x runc's ``runc
  run``, like for like: all three start from the same overlay root filesystem mount, one overlay
  of the busybox layer mounted once, with a bundle written by container.oci from the same options
  (/proc, /dev, /sys, masked paths, capabilities, seccomp, a cgroup with the device rules); the lab's
  parent cgroup exists for all three (it stays between crun's and runc's starts: a lab cgroup is
  held for the run so that it stays between labhelper's too). Shown, not
  judged: labhelper from the image, with an overlay and a folder of its own per container, as
  ``docker run`` does.
- crun and runc are run by a shell in a loop of N starts, timed inside that shell (``date
  +%s%N`` around the loop), so each of their starts includes a fork and an execve of the runtime,
  as when Docker's containerd-shim starts one. crun 1.8 refuses a hybrid cgroup host; there its
  shell runs in ``unshare -m`` after ``umount /sys/fs/cgroup/unified`` (v1 only then), once.
- The sides rotate round by round; the figure per side is the median of its rounds, per start.
  Below, labhelper's own time per phase (``Result.timings``), medians. Exit status 1 if a goal
  is missed; "skipped:" when a runtime or busybox is missing.

    LABHELPER_DISPOSABLE=1 .venv/bin/python benchmarks/container.py [--rounds N] [--per-round K]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from labhelper import cgroups, cleanup, comparison, container, images, mounts, overlay, rootfs  # noqa: E402
from labhelper.container import oci  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=20)
    args = parser.parse_args()
    missing = [p for p in ("crun", "runc") if shutil.which(p) is None]
    if missing:
        print(f"skipped: {' and '.join(missing)} not installed (apt-get install crun runc): no peer to compare with")
        return 0
    owner = f"bench-container-{os.getpid()}"
    base = mounts.make_dir(f"/var/lib/labhelper/bench-container-{os.getpid()}", owner=owner)
    hybrid = oci.hybrid()
    try:
        store = images.Store(f"{base}/images", owner=owner)
        try:
            img = rootfs.base_image(store)
        except Exception as exc:           # noqa: BLE001 - no busybox and no host fallback
            print(f"skipped: no base image: {exc}")
            return 0
        for sub in ("upper", "work", "rootfs"):
            os.makedirs(f"{base}/shared/{sub}")
        shared = overlay.mount(f"{base}/shared/rootfs", [store.layer_dir(img.layers[0].chain_id)],
                               f"{base}/shared/upper", f"{base}/shared/work", owner=owner)
        bundles = {}
        for rt in ("crun", "runc"):
            os.makedirs(f"{base}/bundle-{rt}")
            oci.bundle(f"{base}/bundle-{rt}", shared.target, ["/bin/true"], name=f"bench-{rt}", hostname="bench")
            bundles[rt] = f"{base}/bundle-{rt}"
        prefix = f"lhbench-{os.getpid()}"
        # Like for like in the cgroup hierarchies too: crun and runc make the lab's parent cgroup
        # (labhelper/) at their first start and leave it, so each of their starts makes and
        # removes its own cgroup only. labhelper removes the parent with its last lab cgroup, and
        # would make and remove it again at every start here (16 more mkdir and rmdir on v1): a
        # lab cgroup held for the whole run keeps it, as any other lab cgroup of a chapter does.
        held = cgroups.group(f"bench-hold-{os.getpid()}", owner=owner)

        def ours(k: int, full: bool = False) -> tuple[float, list[dict]]:
            # Like for like: the same overlay root as crun's and runc's (rootfs=...); ``full``:
            # labhelper's own overlay and folder per container, from the image (shown, not judged).
            where = {"store": store} if full else {"rootfs": shared.target}
            t0 = time.perf_counter()
            phases = []
            for _ in range(k):
                r = container.run(img.name if full else None, ["/bin/true"], owner=owner, **where)
                if r.exit_code != 0:
                    raise SystemExit(f"labhelper's container failed: {r}")
                phases.append(r.timings)
            return (time.perf_counter() - t0) / k, phases

        sides = {"labhelper": [], "crun": [], "runc": [], "full": []}
        phases: list[dict] = []
        full_phases: list[dict] = []
        ours(2)
        ours(2, full=True)
        for rt in ("crun", "runc"):
            comparison.runtime_loop(rt, bundles[rt], 2, f"{prefix}-warm")
        order = ["labhelper", "crun", "runc", "full"]
        for r in range(args.rounds):
            for side in order[r % 4:] + order[:r % 4]:
                if side in ("labhelper", "full"):
                    t, ph = ours(args.per_round, full=side == "full")
                    sides[side].append(t)
                    (full_phases if side == "full" else phases).extend(ph)
                else:
                    sides[side].append(comparison.runtime_loop(side, bundles[side], args.per_round, f"{prefix}-{r}"))
        shared.unmount()
        held.remove()
    finally:
        cleanup.cleanup(owner=owner)
    med = {k: statistics.median(v) for k, v in sides.items()}
    to_crun, to_runc = med["labhelper"] / med["crun"], med["labhelper"] / med["runc"]
    ok_crun, ok_runc = to_crun <= 1.0, to_runc <= 0.5
    print(f"{'measure':44} {'median':>9}  ratio")
    print(f"{'runc run (a shell loop)':44} {med['runc'] * 1e3:7.2f}ms")
    print(f"{'crun run (a shell loop)':44} {med['crun'] * 1e3:7.2f}ms")
    print(f"{'labhelper container.run (in-process)':44} {med['labhelper'] * 1e3:7.2f}ms")
    print(f"{'  from the image: own overlay and folder':44} {med['full'] * 1e3:7.2f}ms  "
          f"{med['full'] / med['crun']:.2f}x crun (shown)")
    print(f"{'labhelper / crun':44} {'':9}  {to_crun:.2f}x <= 1.0x {'ok' if ok_crun else 'OVER'}")
    print(f"{'labhelper / runc':44} {'':9}  {to_runc:.2f}x <= 0.5x {'ok' if ok_runc else 'OVER'}")
    print("where labhelper's time goes (median per phase; from the image):")
    for name in dict.fromkeys(list(phases[0]) + list(full_phases[0])):
        cells = [f"{statistics.median(p[name] for p in ph) * 1e3:7.2f}ms" if name in ph[0] else "       - "
                 for ph in (phases, full_phases)]
        print(f"  {name:42} {cells[0]}  {cells[1]}")
    print(f"({args.rounds} rounds of {args.per_round} starts each; cgroup v{cgroups.version()}"
          f"{', crun in a mount namespace without the v2 hierarchy' if hybrid else ''})")
    return 0 if ok_crun and ok_runc else 1


if __name__ == "__main__":
    sys.exit(main())

"""Chapter 08's table, regenerated on any host: a container against a VM, side by side in one run.

Every row comes from labhelper.comparison, the functions the chapter calls:

- start: chapter 07's container (made, /bin/true, removed) and chapter 02's VM (made, first
  instruction, closed), in rounds that alternate which goes first; a real kernel booted to its init
  under QEMU (KVM where the host has kvm_intel or kvm_amd, else TCG), a few times;
- memory: a container running sleep (its cgroup's charge), a VM at its init (QEMU's resident memory);
- a system call: getpid on the host, in a container, an exit of chapter 02's VM, and a system call
  inside a VM to its own kernel (where the host's KVM can run that guest);
- chapter 07's table: labhelper, runc and crun starting /bin/true on the same root, interleaved.

Medians; ratios against the container. Not a test: nothing is judged, the exit status is 0
unless something could not run at all. "skipped:" names what this host lacks.

    LABHELPER_DISPOSABLE=1 .venv/bin/python benchmarks/compare.py [--rounds N] [--boots N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from labhelper import cleanup, comparison, host, images, mounts, overlay, rootfs  # noqa: E402
from labhelper.errors import RequirementError  # noqa: E402


def row(what: str, value: float, unit: str, scale: float, against: float | None = None) -> None:
    ratio = f"{value / against:10.1f}x" if against else ""
    print(f"{what:52} {value / scale:12.3f} {unit:3} {ratio}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--boots", type=int, default=3)
    args = parser.parse_args()
    owner = f"bench-compare-{os.getpid()}"
    base = mounts.make_dir(f"/var/lib/labhelper/bench-compare-{os.getpid()}", owner=owner)
    kvm = host.facts().kvm.openable
    try:
        store = images.Store(f"{base}/images", owner=owner)
        img = rootfs.base_image(store)
        lives: dict[str, list[float]] = {"container": [], "vm": []}
        for r in range(args.rounds):
            sides = ["container", "vm"] if r % 2 == 0 else ["vm", "container"]
            for side in sides:
                if side == "container":
                    lives[side].extend(comparison.container_life(store, args.per_round, owner=owner).samples)
                elif kvm:
                    lives[side].extend(comparison.vm_life(args.per_round).samples)
        boots = []
        try:
            boots = [comparison.boot() for _ in range(args.boots)]
        except RequirementError as exc:
            print(f"skipped: a kernel's boot: {exc}")
        charged = comparison.container_memory(store, owner=owner)
        path = comparison.syscall_path()
        inside_vm = None
        if kvm:
            try:
                inside_vm = comparison.vm_syscalls()
            except RequirementError as exc:
                print(f"skipped: system calls inside a VM: {exc}")
        for sub in ("upper", "work", "rootfs", "bundles"):
            os.makedirs(f"{base}/{sub}")
        shared = overlay.mount(f"{base}/rootfs", [store.layer_dir(img.layers[0].chain_id)], f"{base}/upper",
                               f"{base}/work", owner=owner)
        starts = comparison.runtime_starts(shared.target, f"{base}/bundles", rounds=args.rounds,
                                           per_round=args.per_round, owner=owner)
        shared.unmount()
    finally:
        cleanup.cleanup(owner=owner)

    container = statistics.median(lives["container"])
    print(f"{'':52} {'median':>12}     {'vs container':>11}")
    print("start")
    row("  a container: made, /bin/true, removed", container, "ms", 1e-3)
    if lives["vm"]:
        row("  chapter 02's VM: made, first instruction, closed", statistics.median(lives["vm"]), "ms", 1e-3,
            container)
    if boots:
        accel = boots[0].accelerator
        row(f"  Linux booted to its init ({accel})", statistics.median(b.to_init for b in boots), "ms", 1e-3,
            container)
    print("memory")
    row("  a container running sleep (its cgroup)", charged, "MiB", 2 ** 20)
    if boots:
        row("  a VM at its init (QEMU's resident memory)", statistics.median(b.qemu_rss for b in boots), "MiB", 2 ** 20,
            charged)
    print("a system call")
    in_container = path["container_getpid"].median
    for cost in path:
        row(f"  {cost.label}", cost.median, "ns", 1, in_container)
    if inside_vm:
        row("  a system call inside a VM, to its own kernel", inside_vm.per_call_ns, "ns", 1, in_container)
        print(f"  (exits to the VMM in the whole run of {inside_vm.calls} calls: {sum(inside_vm.exits.values())})")
    print("chapter 07: /bin/true in a new container on one root, per start")
    ours = starts["labhelper"].median
    for side, timing in starts.items():
        row(f"  {side}", timing.median, "ms", 1e-3, ours)
    facts = host.facts()
    print(f"(host: Linux {facts.kernel}, cgroup {facts.cgroup.mode}, KVM {facts.kvm.flavour}; "
          f"{args.rounds} rounds of {args.per_round}; {len(boots)} boots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

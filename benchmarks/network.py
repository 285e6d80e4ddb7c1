"""Chapter 04's speed goals, measured side by side in one run (not a test):

- creating and removing a named network namespace with labhelper.network: within 1.5x of
  `ip netns add` + `ip netns del` (ip running them in one process, `ip -batch`, so that no
  process start is counted on its side);
- setting up and tearing down a two-container veth network (two namespaces, a veth pair with
  its ends born in them, an address on each, each end and each loopback up, then both
  namespaces removed): within 1.2x of the same steps by `ip -batch` (one batch on the host, one
  per namespace with `ip -n NS -batch`, one to remove).

The kernel tears network namespaces down asynchronously, and that work slows whatever runs
next: so the two sides alternate round by round, and each row says which path it takes. The
figure per side is the median of its rounds; the ratio is ours / ip's. Exit status 1 if a goal
is missed. The whole run must be on a machine declared disposable (it makes namespaces).

    LABHELPER_DISPOSABLE=1 .venv/bin/python benchmarks/network.py [--rounds N] [--per-round K]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from labhelper import network  # noqa: E402

TAG = f"bn{os.getpid()}"


def ip_batch(lines: list[str], netns: str | None = None) -> None:
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    subprocess.run(cmd, input="\n".join(lines) + "\n", text=True, check=True, capture_output=True)


def ours_netns(k: int) -> float:
    t0 = time.perf_counter()
    for i in range(k):
        name = network.create(f"{TAG}-o{i}")
        network.remove_ns(name)
    return (time.perf_counter() - t0) / k


def ip_netns(k: int) -> float:
    lines = []
    for i in range(k):
        lines += [f"netns add lh-{TAG}-i{i}", f"netns del lh-{TAG}-i{i}"]
    t0 = time.perf_counter()
    ip_batch(lines)
    return (time.perf_counter() - t0) / k


def ours_pair(k: int) -> float:
    t0 = time.perf_counter()
    for i in range(k):
        a, b = network.create(f"{TAG}-a{i}"), network.create(f"{TAG}-b{i}")
        network.veth((a, "eth0"), (b, "eth0"))
        for ns, ip in ((a, "10.66.0.1/24"), (b, "10.66.0.2/24")):
            network.add_address(ns, "eth0", ip)
            network.up(ns, "eth0")
            network.up(ns, "lo")
        network.remove_ns(a)
        network.remove_ns(b)
    return (time.perf_counter() - t0) / k


def ip_pair(k: int) -> float:
    t0 = time.perf_counter()
    for i in range(k):
        a, b = f"lh-{TAG}-x{i}", f"lh-{TAG}-y{i}"
        ip_batch([f"netns add {a}", f"netns add {b}", f"link add eth0 netns {a} type veth peer name eth0 netns {b}"])
        for ns, ip in ((a, "10.66.0.1/24"), (b, "10.66.0.2/24")):
            ip_batch([f"address add {ip} dev eth0", "link set eth0 up", "link set lo up"], netns=ns)
        ip_batch([f"netns del {a}", f"netns del {b}"])
    return (time.perf_counter() - t0) / k


def ip_separate(k: int) -> float:
    """What a program that runs `ip` once per step pays (shown, not judged)."""
    t0 = time.perf_counter()
    for i in range(k):
        subprocess.run(["ip", "netns", "add", f"lh-{TAG}-s{i}"], check=True)
        subprocess.run(["ip", "netns", "del", f"lh-{TAG}-s{i}"], check=True)
    return (time.perf_counter() - t0) / k


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--per-round", type=int, default=40)
    args = parser.parse_args()
    os.environ.setdefault("LABHELPER_OWNER", "benchmark")
    network.remove_ns(network.create(f"{TAG}-warm"))       # start the helper, warm the caches
    rows = {"netns": ([], []), "pair": ([], [])}
    for r in range(args.rounds):
        # Alternate which side goes first, so neither always follows the other's teardown.
        sides = [("ours", 0), ("ip", 1)] if r % 2 == 0 else [("ip", 1), ("ours", 0)]
        for _, idx in sides:
            rows["netns"][idx].append((ours_netns, ip_netns)[idx](args.per_round))
        for _, idx in sides:
            rows["pair"][idx].append((ours_pair, ip_pair)[idx](max(1, args.per_round // 4)))
    separate = ip_separate(max(1, args.per_round // 4))
    goals = {"netns": 1.5, "pair": 1.2}
    labels = {"netns": ("netns create + remove", "labhelper: helper unshare + bind mount",
                        "ip -batch: netns add + del"),
              "pair": ("two-container veth network", "labhelper: rtnetlink on sockets in each netns",
                       "ip -batch: host, -n a, -n b, host")}
    ok = True
    print(f"{'measure':28} {'path':45} {'median':>10} {'ratio':>7} goal")
    for key in ("netns", "pair"):
        ours, ip = (statistics.median(v) for v in rows[key])
        ratio = ours / ip
        verdict = "ok" if ratio <= goals[key] else "OVER"
        ok &= verdict == "ok"
        title, our_path, ip_path = labels[key]
        print(f"{title:28} {ip_path:45} {ip * 1000:8.2f}ms {1:6.2f}x")
        print(f"{title:28} {our_path:45} {ours * 1000:8.2f}ms {ratio:6.2f}x <= {goals[key]}x {verdict}")
    print(f"{'netns create + remove':28} {'ip netns add; ip netns del (2 processes)':45} {separate * 1000:8.2f}ms "
          f"{separate / statistics.median(rows['netns'][1]):6.2f}x (shown)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

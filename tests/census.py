"""An independent census of kernel objects with the project's marks (docs/reliability.md).

Deliberately written without labhelper, so a bug in labhelper's own census cannot hide a leak:
mounts under the lab folders (and overlays whose upperdir is there), cgroup folders under a
``labhelper`` cgroup in every mounted hierarchy, /run/netns/lh-*, links named lh-*, processes
in a lab cgroup or with their root in a lab folder, fds on /dev/kvm or kvm anon inodes held by
processes other than the test runner, nftables tables inet lh-* (the lab's firewall), loop
devices backed by a file in a lab folder, and ledger records.
"""
from __future__ import annotations

import os
import shutil
import subprocess

LAB_DIRS = ("/var/lib/labhelper", "/run/labhelper")


def _under(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in LAB_DIRS)


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def _nft_tables() -> list[str]:
    """Tables of family inet named lh-*, as `nft list tables` prints them (no nft: none)."""
    nft = shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)
    if nft is None:
        return []
    out = subprocess.run([nft, "list", "tables", "inet"], capture_output=True, text=True).stdout
    return [line.split()[2] for line in out.splitlines()
            if line.startswith("table inet ") and line.split()[2].startswith("lh-")]


def take() -> frozenset[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    cgroup_mounts = []
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or not rfields:
            continue
        point = fields[4].replace("\\040", " ")
        if rfields[0] in ("cgroup", "cgroup2"):
            cgroup_mounts.append(point)
        upper = [o[9:] for o in (rfields[2].split(",") if len(rfields) > 2 else []) if o.startswith("upperdir=")]
        if _under(point) or (upper and _under(upper[0])):
            found.add(("mount", point))
    for point in cgroup_mounts:
        # a "labhelper" cgroup anywhere: at the root, or below a delegated cgroup
        for dirpath, dirnames, _ in os.walk(point):
            if os.path.basename(dirpath) == "labhelper":
                dirnames[:] = []
                for inner, _, _ in os.walk(dirpath):
                    found.add(("cgroup", inner))
    for name in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
        if name.startswith("lh-"):
            found.add(("netns", name))
    for name in os.listdir("/sys/class/net"):
        if name.startswith("lh-"):
            found.add(("link", name))
    for name in _nft_tables():
        found.add(("firewall", name))
    for name in os.listdir("/sys/block") if os.path.isdir("/sys/block") else []:
        backing = _read(f"/sys/block/{name}/loop/backing_file").strip()
        if name.startswith("loop") and backing and _under(backing):
            found.add(("loop", f"/dev/{name}"))
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        stat = _read(f"/proc/{pid}/stat")
        if stat[stat.rfind(")") + 2:][:1] == "Z":
            continue  # a zombie has exited and holds nothing; its parent (maybe PID 1) reaps it
        cg = _read(f"/proc/{pid}/cgroup")
        if any(l.split(":", 2)[-1].startswith("/labhelper") for l in cg.splitlines()):
            found.add(("process", pid))
        try:
            if _under(os.readlink(f"/proc/{pid}/root")):
                found.add(("process-root", pid))
        except OSError:
            pass
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target == "/dev/kvm" or target.startswith("anon_inode:kvm"):
                found.add(("kvm-fd", f"{pid}:{target}"))
    ledger = os.environ.get("LABHELPER_LEDGER", "/run/labhelper/ledger")
    if os.path.isdir(ledger):
        for name in os.listdir(ledger):
            found.add(("ledger", name))
    return frozenset(found)


def diff(before: frozenset, after: frozenset) -> str:
    """'' when nothing changed, else a readable list of what appeared and what vanished."""
    new, gone = sorted(after - before), sorted(before - after)
    lines = [f"  + {k} {n}" for k, n in new] + [f"  - {k} {n} (a foreign object vanished!)" for k, n in gone]
    return "\n".join(lines)

"""The same container as an OCI bundle: a ``config.json`` that runc or crun runs (chapter 08).

Docker does not start containers itself: it writes a bundle, a root folder and a config.json in
the format of the Open Container Initiative's runtime specification, and hands it to a runtime
(runc by default; crun, youki, gVisor's runsc, Kata's VM runtime take the same bundle). Writing
the bundle from the very options ``labhelper run`` takes shows what labhelper's runtime does in
that common language, and lets a test start the same root under labhelper and under runc and
compare what the process sees from inside (tests/system/test_container_interop_system.py).

What maps to what (labhelper's step -> the spec's field):

    namespaces (runtime.NAMESPACES)       linux.namespaces: pid, network, ipc, uts, mount, cgroup
    /proc, /dev (init._dev), /sys         mounts: proc, a tmpfs /dev with devpts, shm, mqueue, sysfs ro
                                          (the device nodes themselves: runc makes the default six)
    the cgroup, on v2 (read-only)         mounts: cgroup at /sys/fs/cgroup (ro); on v1 none, as here
    volumes                               mounts: bind (rbind, ro or rw)
    masked, read-only paths               linux.maskedPaths, linux.readonlyPaths
    limits (cgroups.check)                linux.resources: memory.limit, cpu.quota/period, pids.limit
    device rules (cgroups.devices)        linux.resources.devices: deny all, then Docker's list
    capabilities (DOCKER_DEFAULT)         process.capabilities: bounding, effective, permitted
    no_new_privs, seccomp (seccomp.DENIED) process.noNewPrivileges; linux.seccomp: allow all but the
                                          denied calls, which fail with EPERM
    hostname, user, cwd, env, command     hostname, process.user, cwd, env, args

:data:`DELIBERATE` lists what still differs when both run, and why.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess

from .. import capabilities, cgroups, host, images, seccomp
from ..cgroups import devices
from ..cgroups.limits import CPU_PERIOD_US
from ..errors import Refused
from . import config, init, runtime

__all__ = ["spec", "bundle", "shell", "run_bundle", "runtimes", "hybrid", "DELIBERATE", "VERSION"]

VERSION = "1.0.2"           # of the runtime spec: what runc 1.1 and crun 1.8 read

# What a process sees differently under labhelper and under runc from the same bundle, on
# purpose (the interop test fails on any other difference).
DELIBERATE = {
    "/dev nodes": "labhelper binds the host's six device nodes (null, zero, full, random, urandom, tty) onto a "
                  "nodev /dev, so that a node made there with mknod (CAP_MKNOD is in Docker's set) opens "
                  "nothing; runc makes the six with mknod on a /dev that cannot be nodev then, and its device "
                  "cgroup alone refuses the rest. Seen from inside: six bind mounts more under labhelper",
    "masked files": "all three bind a /dev/null over /proc/kcore and the other masked files: labhelper and crun "
                    "the host's (a devtmpfs mount), runc its own (in its /dev tmpfs); crun's bind is read-only, "
                    "labhelper's and runc's read-write (a write vanishes in /dev/null)",
    "/dev/core": "crun adds the symlink /dev/core -> /proc/kcore (masked: it reads nothing), as Docker's "
                 "old default did; labhelper and runc do not",
}

_SECCOMP_ARCH = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}


def _mounts(cfg: config.Config, cgroup2: bool) -> list[dict]:
    nosuid_noexec_nodev = ["nosuid", "noexec", "nodev"]
    out = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": nosuid_noexec_nodev},
        # Not nodev, unlike labhelper's /dev: runc makes the device nodes there with mknod, where
        # labhelper binds the host's (DELIBERATE).
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": nosuid_noexec_nodev + ["mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": nosuid_noexec_nodev},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": nosuid_noexec_nodev + ["ro"]},
    ]
    if cgroup2:
        out.append({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                    "options": nosuid_noexec_nodev + ["relatime", "ro"]})
    for v in cfg.volumes:
        out.append({"destination": v.destination, "type": "bind", "source": v.source,
                    "options": ["rbind", "ro" if v.read_only else "rw"]})
    return out


def _resources(cfg: config.Config) -> dict:
    rules = [{"allow": False, "access": "rwm"}]          # deny everything first, as Docker does
    for r in devices.DOCKER_RULES:
        rule = {"allow": True, "type": r.kind, "access": r.access}
        if r.major is not None:
            rule["major"] = r.major
        if r.minor is not None:
            rule["minor"] = r.minor
        rules.append(rule)
    out: dict = {"devices": rules}
    limits = cgroups.check(**cfg.limits)
    if limits.memory is not None:
        out["memory"] = {"limit": limits.memory}
    if limits.cpu is not None:
        out["cpu"] = {"quota": round(limits.cpu * CPU_PERIOD_US), "period": CPU_PERIOD_US}
    if limits.pids is not None:
        out["pids"] = {"limit": limits.pids}
    return out


def _seccomp() -> dict:
    machine = os.uname().machine
    if machine not in _SECCOMP_ARCH:
        raise Refused(f"the lab's seccomp profile knows x86_64 and aarch64, not {machine}",
                      hint="seccomp=False writes a bundle without one")
    known = seccomp.NUMBERS.get(machine, {})
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": [_SECCOMP_ARCH[machine]],
            "syscalls": [{"names": [n for n in seccomp.DENIED if n in known], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": 1}]}


def spec(cfg: config.Config, settings: dict, rootfs: str, cgroup2: bool | None = None) -> dict:
    """The config.json of ``cfg`` (config.check's) with ``settings`` (runtime.settings: the image
    merged in), its root at ``rootfs``. ``cgroup2``: whether this host is pure v2 (default: ask)."""
    if cgroup2 is None:
        cgroup2 = cgroups.version() == 2
    caps = [f"CAP_{name.upper()}" for name in capabilities.DOCKER_DEFAULT]
    uid, gid = settings["user"] or (0, 0)
    namespaces = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")]
    out = {
        "ociVersion": VERSION,
        "process": {
            "terminal": False, "user": {"uid": uid, "gid": gid}, "args": list(settings["command"]),
            "env": list(settings["env"]), "cwd": settings["workdir"],
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": False},
        "hostname": settings["hostname"],
        "mounts": _mounts(cfg, cgroup2),
        "linux": {
            "namespaces": namespaces,
            # Under the lab's parent cgroup: the census sees it, cleanup can remove what is left.
            "cgroupsPath": f"/labhelper/oci-{cfg.name}",
            "resources": _resources(cfg),
            "maskedPaths": list(init.MASKED),
            "readonlyPaths": list(init.READ_ONLY),
        },
    }
    if cfg.seccomp:
        out["linux"]["seccomp"] = _seccomp()
    return out


def bundle(folder: str, rootfs: str, command, *, image: images.Image | None = None, **options) -> str:
    """Write ``folder``/config.json for ``command`` in the root folder ``rootfs`` with
    ``labhelper run``'s options (checked the same way: Refused, nothing written, for a bad one),
    and return its path. ``image``: whose settings (Env, WorkingDir, User...) merge in."""
    cfg = config.check(None, command, rootfs=rootfs, **options)
    if cfg.publish:
        raise Refused("a bundle has no published ports: that is the engine's work (docker-proxy, or this lab's "
                      "proxy), not the runtime's")
    path = os.path.join(folder, "config.json")
    with open(path, "w") as fh:
        json.dump(spec(cfg, runtime.settings(cfg, image), rootfs), fh, indent=2)
    return path


def runtimes() -> list[str]:
    """The OCI runtimes installed here, of those the lab compares with."""
    return [name for name in ("runc", "crun") if shutil.which(name)]


def hybrid() -> str | None:
    """The cgroup2 mount point of a hybrid host (cgroup v1 controllers with a cgroup2 hierarchy
    beside them, as this course's CI host), else None."""
    info = host.cgroup_info()
    if info.mode != "hybrid":
        return None
    return next(h.mountpoint for h in info.hierarchies if h.version == 2)


def shell(runtime: str, line: str) -> list[str]:
    """argv running the shell ``line`` that calls ``runtime``. crun 1.8 refuses a host with
    hybrid cgroups (v1 controllers and an empty cgroup2 hierarchy, as this course's CI host): it
    runs there in a mount namespace of its own where the cgroup2 hierarchy is unmounted, so that
    it sees v1 only; the host's mounts do not change."""
    unified = hybrid() if runtime == "crun" else None
    if unified:
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", f"umount {shlex.quote(unified)} && {line}"]
    return ["sh", "-c", line]


def run_bundle(runtime: str, folder: str, name: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """``runtime run --bundle folder name``: the container's output and exit status, as text."""
    line = f"exec {runtime} run --bundle {shlex.quote(folder)} {shlex.quote(name)}"
    try:
        return subprocess.run(shell(runtime, line), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    finally:
        cgroups.remove_empty_parents()          # what it made on the way to its own cgroup

"""What a container is asked to be, checked whole before anything is made (R3, R18, R19, R20).

Every value that reaches the kernel comes through here first: a name that is a plain word, limits
the kernel would accept and that mean something (cgroups.check), paths that are absolute and
normal, volume sources that are lab folders (never /, /etc, /proc, the lab's own folders, or a
symlink to any of them), environment entries without a NUL. Refused, with nothing changed, is the
answer to anything else.
"""
from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field

from .. import marks
from ..cgroups import check as check_limits
from ..errors import Refused
from ..network.proxy import Publish, parse as parse_publish

__all__ = ["Config", "Volume", "check", "CONTAINERS", "RESERVED", "parse_volume", "parse_user"]

CONTAINERS = "/var/lib/labhelper/containers"    # one folder per container: upper, work, rootfs
# Lab folders that hold the lab's own state: never a volume (a container could rewrite the
# ledger, an image's layers, or another container's files).
RESERVED = ("/run/labhelper/ledger", "/var/lib/labhelper/images", CONTAINERS, "/run/labhelper/ns")
# Where a volume may never be mounted in the container: what the runtime mounts itself.
_SYSTEM_DESTINATIONS = ("/proc", "/sys", "/dev")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
MAX_TIMEOUT = 24 * 3600.0


@dataclass(frozen=True)
class Volume:
    """A host folder shown in the container: ``source`` (a lab folder) at ``destination``."""
    source: str
    destination: str
    read_only: bool = False

    def __repr__(self) -> str:
        return f"{self.source}:{self.destination}{':ro' if self.read_only else ''}"


@dataclass(frozen=True)
class Config:
    image: str | None                       # None: a root folder given as it is (rootfs)
    command: tuple[str, ...] | None         # None: the image's own (Entrypoint + Cmd)
    name: str
    hostname: str
    env: tuple[str, ...] = ()
    workdir: str | None = None
    user: tuple[int, int] | None = None     # (uid, gid); None: the image's, else root
    limits: dict = field(default_factory=dict)      # memory, cpu, pids: checked (cgroups.check)
    volumes: tuple[Volume, ...] = ()
    net: str = "none"
    network: str | None = None             # with net="bridge": the lab bridge's name (network.bridge)
    timeout: float = 60.0
    interactive: bool = False
    seccomp: bool = True
    rootfs: str | None = None               # a lab folder to use as the root as it is (runc's bundle)
    publish: tuple[Publish, ...] = ()       # -p 127.0.0.1:HOSTPORT:PORT, through a proxy (network.proxy)
    extra: dict = field(default_factory=dict, compare=False)


def _path(value, what: str) -> str:
    """An absolute container path, made normal (``/a/../b`` is ``/b``: inside the container, ``..``
    never climbs above its root)."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise Refused(f"the {what} must be a path, not {value!r}")
    if not value.startswith("/"):
        raise Refused(f"the {what} {value!r} must be an absolute path (as Docker wants it)")
    normal = os.path.normpath(value)
    return "/" if normal.startswith("//") else normal


def parse_volume(spec) -> Volume:
    """``SRC:DST[:ro|:rw]`` (Docker's -v), or a Volume."""
    if isinstance(spec, Volume):
        src, dst, ro = spec.source, spec.destination, spec.read_only
    elif isinstance(spec, str):
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise Refused(f"volume {spec!r}: SOURCE:DESTINATION, or SOURCE:DESTINATION:ro")
        src, dst, ro = parts[0], parts[1], len(parts) == 3 and parts[2] == "ro"
    else:
        raise Refused(f"a volume is 'SOURCE:DESTINATION[:ro]', not {spec!r}")
    src = marks.lab_path(src, "share as a volume")           # a lab folder only: R19
    for reserved in RESERVED:
        if marks.is_under(src, reserved) or marks.is_under(reserved, src):
            raise Refused(f"refusing to share {src} as a volume: it holds the lab's own state ({reserved})")
    dst = _path(dst, "volume destination")
    if dst == "/" or any(marks.is_under(dst, d) for d in _SYSTEM_DESTINATIONS):
        raise Refused(f"volume destination {dst}: not /, nor in /proc, /sys or /dev (the runtime mounts those)")
    return Volume(src, dst, bool(ro))


def parse_user(value) -> tuple[int, int] | None:
    """``UID``, ``UID:GID``, "root", or None (the image's)."""
    if value is None:
        return None
    if value == "root":
        return (0, 0)
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not re.fullmatch(r"\d{1,10}(:\d{1,10})?", text):
        raise Refused(f"user {value!r}: UID or UID:GID in numbers (names would be read from the image)")
    uid, _, gid = text.partition(":")
    ids = (int(uid), int(gid or uid))
    if any(i > 0xFFFFFFFE for i in ids):
        raise Refused(f"user {value!r}: ids are below 4294967295")
    return ids


def new_name() -> str:
    return "c-" + secrets.token_hex(4)


def check(image: str, command=None, *, name: str | None = None, hostname: str | None = None, env=None,
          workdir: str | None = None, user=None, memory=None, cpus=None, pids=None, volumes=(), net: str = "none",
          network: str | None = None, timeout: float = 60.0, interactive: bool = False, seccomp: bool = True,
          rootfs: str | None = None, publish=()) -> Config:
    """The whole request, checked; Refused (nothing made) for anything wrong. ``rootfs``: run in
    this lab folder as it is (what runc does with a bundle's rootfs), instead of an image's layers
    (then ``image`` is None, and the command must be given)."""
    if rootfs is not None:
        if image is not None:
            raise Refused("give an image, or a rootfs folder to use as it is, not both")
        rootfs = marks.lab_path(rootfs, "use as a container's root")
        for reserved in RESERVED:
            if marks.is_under(rootfs, reserved) and not marks.is_under(rootfs, CONTAINERS):
                raise Refused(f"refusing to use {rootfs} as a root: it holds the lab's own state ({reserved})")
        if command is None:
            raise Refused("a rootfs folder has no image settings: give the command")
    elif not isinstance(image, str) or not image:
        raise Refused(f"an image is named by a string, not {image!r}")
    if command is not None:
        if isinstance(command, str):
            raise Refused(f"the command is a list of words (argv), not the string {command!r}; for a shell line "
                          "use ['/bin/sh', '-c', '...']")
        command = tuple(command)
        if not command or not all(isinstance(a, str) and "\0" not in a for a in command) or not command[0]:
            raise Refused(f"the command must be a non-empty list of strings, not {list(command)!r}")
    name = name or new_name()
    marks.plain_name(name, "container name")
    if len(name) > 64:
        raise Refused(f"container name {name!r} is {len(name)} characters: at most 64")
    hostname = hostname if hostname is not None else name
    if not isinstance(hostname, str) or not _HOSTNAME.fullmatch(hostname):
        raise Refused(f"hostname {hostname!r}: letters, digits and '-', 1 to 63 of them, not starting or "
                      "ending with '-'")
    entries = []
    for entry in (env.items() if isinstance(env, dict) else env or ()):
        key, value = entry if isinstance(entry, tuple) else (str(entry).partition("=")[0], str(entry).partition("=")[2])
        if not isinstance(entry, tuple) and "=" not in str(entry):
            raise Refused(f"environment entry {entry!r}: NAME=VALUE")
        if not _ENV_NAME.fullmatch(str(key)) or "\0" in str(value):
            raise Refused(f"environment entry {key!r}: a name of letters, digits and '_', and a value without NUL")
        entries.append(f"{key}={value}")
    if workdir is not None:
        workdir = _path(workdir, "working directory")
        if any(marks.is_under(workdir, d) for d in _SYSTEM_DESTINATIONS):
            # /proc/self/fd/N would name a file descriptor, maybe one of the runtime's, not a folder
            # of the image (CVE-2024-21626).
            raise Refused(f"working directory {workdir}: not in /proc, /sys or /dev")
    limits = {k: v for k, v in (("memory", memory), ("cpu", cpus), ("pids", pids)) if v is not None}
    check_limits(**limits)
    vols = tuple(parse_volume(v) for v in (volumes or ()))
    dests = [v.destination for v in vols]
    if len(set(dests)) != len(dests):
        raise Refused(f"two volumes share a destination: {sorted(d for d in dests if dests.count(d) > 1)[0]}")
    if net not in ("none", "bridge"):
        raise Refused(f"net {net!r}: 'none' (a network namespace with its own loopback only) or 'bridge' (a veth "
                      "to a lab bridge: network=NAME)")
    if net == "bridge":
        if not network:
            raise Refused("net='bridge' needs the lab bridge to attach to: network='NAME' (make one with "
                          "network.bridge(NAME))")
        marks.plain_name(network, "bridge name")
    elif network is not None:
        raise Refused(f"network={network!r} is for net='bridge'")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise Refused(f"timeout {timeout!r}: seconds, more than 0 and at most a day")
    if isinstance(publish, (str, Publish)):
        publish = [publish]
    ports = tuple(parse_publish(p) for p in publish or ())
    hosts = [(p.host_ip, p.host_port) for p in ports]
    if len(set(hosts)) != len(hosts):
        raise Refused(f"two published ports share a host port: {sorted(h for h in hosts if hosts.count(h) > 1)[0]}")
    return Config(image, command, name, hostname, tuple(entries), workdir, parse_user(user), limits, vols, net,
                  network, float(timeout), bool(interactive), bool(seccomp), rootfs, ports)

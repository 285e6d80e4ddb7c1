"""Capabilities: root's power cut into about forty pieces (capabilities(7)).

A process of uid 0 is not all-powerful by its uid alone: each privileged operation checks one
capability (mount(2) checks CAP_SYS_ADMIN, mknod(2) CAP_MKNOD, loading a module CAP_SYS_MODULE...).
A process carries five sets of them. The one a container runtime cuts is the **bounding set**:
no capability outside it can ever be gained again, not by executing a setuid-root program nor a
file with capabilities of its own. When a root process then executes a program, the kernel gives
that program the bounding set as its permitted and effective sets (for uid 0, the file is treated
as if it had every capability, masked by the bounding set).

Docker keeps 14 capabilities by default (DOCKER_DEFAULT, from moby's oci/caps/defaults.go):
enough for a package manager or a web server's setup (chown, setuid, binding port 80, ping's raw
socket, mknod), and nothing that reaches the kernel as a whole (no mount, no module, no ptrace
of other processes, no clock, no raw I/O).
"""
from __future__ import annotations

import functools

from . import procfs, syscalls
from .flags import Prctl

__all__ = ["NAMES", "DOCKER_DEFAULT", "number", "last", "decode", "of", "drop_bounding", "to_drop"]

# include/uapi/linux/capability.h, by number.
NAMES = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
         "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
         "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
         "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
         "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
         "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE")

# What Docker keeps (moby oci/caps/defaults.go), and so what a lab container and a build step keep.
DOCKER_DEFAULT = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
                  "NET_BIND_SERVICE", "NET_RAW", "SYS_CHROOT", "MKNOD", "AUDIT_WRITE", "SETFCAP")


def number(name: str) -> int:
    """CAP_``name``'s number (``"SYS_ADMIN"`` or ``"CAP_SYS_ADMIN"``)."""
    short = name.upper().removeprefix("CAP_")
    try:
        return NAMES.index(short)
    except ValueError:
        raise ValueError(f"no capability named {name!r}; known: {', '.join(NAMES)}") from None


def last(proc: str = "/proc") -> int:
    """The highest capability number this kernel knows (/proc/sys/kernel/cap_last_cap)."""
    text = procfs.read_text(f"{proc}/sys/kernel/cap_last_cap", "").strip()
    return int(text) if text.isdigit() else len(NAMES) - 1


def decode(mask: int | str) -> tuple[str, ...]:
    """The names in a capability mask (an int, or the hex of /proc/PID/status's Cap* lines)."""
    value = int(mask, 16) if isinstance(mask, str) else mask
    return tuple(NAMES[i] if i < len(NAMES) else f"CAP_{i}" for i in range(64) if value >> i & 1)


def of(pid: int | str = "self", proc: str = "/proc") -> dict[str, tuple[str, ...]]:
    """A process's five sets, by the names /proc/PID/status gives them: CapInh, CapPrm, CapEff,
    CapBnd, CapAmb."""
    fields = procfs.status(pid, proc)
    return {key: decode(value) for key, value in fields.items()
            if key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}


@functools.cache
def _last_here() -> int:
    return last()


@functools.cache
def to_drop(keep: tuple[str, ...] = DOCKER_DEFAULT) -> tuple[int, ...]:
    """The numbers of every capability this kernel has but ``keep``: computed once per process (a
    runtime asks before it forks, so that a container's init only makes the calls)."""
    kept = {number(name) for name in keep}
    return tuple(cap for cap in range(_last_here() + 1) if cap not in kept)


def drop_bounding(keep=DOCKER_DEFAULT) -> None:
    """Drop every capability but ``keep`` from this process's bounding set (PR_CAPBSET_DROP, one
    call each: the kernel has no call for the whole set). For ever: needs CAP_SETPCAP, which is
    why it is done while still root with every capability, just before executing the program."""
    for cap in to_drop(tuple(keep)):
        syscalls.prctl(Prctl.PR_CAPBSET_DROP, cap)

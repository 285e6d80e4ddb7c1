"""Reading and writing cgroup files: the one place where a refused write becomes an error that
names the file, the value written, the errno and what to do about it."""
from __future__ import annotations

import errno
import os

from .. import procfs, syscalls

__all__ = ["write", "read", "read_int", "read_keyed", "exists"]

_HINTS = {
    errno.EINVAL: "the kernel refused this value for this file (see the file's format in the kernel's "
                  "cgroup documentation)",
    errno.EBUSY: "the kernel cannot apply it now: on v1, a memory limit below what the group uses already "
                 "(it cannot reclaim enough), or a controller enabled on a cgroup that has processes",
    errno.ENOENT: "no such file here: the controller is not enabled for this cgroup, or this kernel lacks it",
    errno.EOPNOTSUPP: "this kernel or controller does not support that setting",
    errno.ENOTSUP: "this kernel or controller does not support that setting",
}


def write(folder: str, name: str, value) -> None:
    """Write ``value`` to the cgroup file ``folder/name`` (one write(2), as the kernel wants)."""
    path = os.path.join(folder, name)
    text = f"{value}\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW)   # O_TRUNC: as `echo >` does
    except OSError as exc:
        raise syscalls.error("open", {"file": path}, exc.errno, _HINTS.get(exc.errno)) from None
    try:
        os.write(fd, text.encode())
    except OSError as exc:
        raise syscalls.error("write", {"file": path, "value": str(value)}, exc.errno,
                             _HINTS.get(exc.errno)) from None
    finally:
        os.close(fd)


def exists(folder: str, name: str) -> bool:
    return os.path.exists(os.path.join(folder, name))


def read(folder: str, name: str) -> str | None:
    """The file's text, or None where this kernel or cgroup has no such file (or it cannot be read)."""
    text = procfs.read_text(os.path.join(folder, name), default="\0", limit=1 << 20)
    return None if text == "\0" else text


def read_int(folder: str, name: str) -> int | None:
    text = read(folder, name)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def read_keyed(folder: str, name: str) -> dict[str, int]:
    """A flat keyed file ("key value" per line: memory.events, cpu.stat, pids.events...)."""
    found = {}
    for line in (read(folder, name) or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                found[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return found

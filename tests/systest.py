"""Helpers for the tests that touch the kernel (the system tests, and a few unit tests): shell
commands, the CLI, processes by command line, a folder's digest, a scratch mount namespace.
A module of its own (tests/ is on sys.path), not conftest.py: `from conftest import` finds
whichever conftest.py Python imported last, which depends on the order of collection."""
import hashlib
import os
import subprocess
import sys

from labhelper import marks, process, syscalls
from labhelper.flags import CLONE_NEWNS, MountFlags


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True, timeout=60)


def labhelper_cli(*args, env=None, input=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "labhelper", *args], capture_output=True, text=True,
                          env=e, timeout=120, input=input, stdin=None if input is not None else subprocess.DEVNULL)


def processes_running(argv: list[str]) -> list[int]:
    """The pids of the processes whose command line is exactly ``argv`` (read from /proc)."""
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if fh.read().split(b"\0")[:-1] == [a.encode() for a in argv]:
                    found.append(int(pid))
        except OSError:
            pass
    return found


def tree_digest(path) -> str:
    """One hash of a folder's names and contents: equal before and after means byte-identical."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _scratch(fn, *args):
    # No propagation back to the host, then our own empty lab folders (and ledger).
    syscalls.mount(None, "/", None, MountFlags.MS_REC | MountFlags.MS_PRIVATE)
    for d in marks.LAB_DIRS:
        os.makedirs(d, exist_ok=True)
        syscalls.mount("lh-scratch", d, "tmpfs", 0, "size=16m")
    return fn(*args)


def in_scratch(fn, *args):
    """Run ``fn(*args)`` in a forked child with its own mount namespace and a fresh tmpfs over
    each lab folder (a "scratch" namespace): whatever a bug there mounts or records vanishes
    with the child, and nothing of the host's /run/labhelper or /var/lib/labhelper is touched."""
    return process.run_in_child(_scratch, fn, *args, unshare=CLONE_NEWNS, timeout=60)

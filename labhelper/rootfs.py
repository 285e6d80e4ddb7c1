"""A container's root filesystem: the files its programs see as "/".

A container shares the host's kernel but not its files: it needs its own /bin, /etc, /lib... The
smallest useful one is **busybox-static**: one statically linked program (no shared library to
bring along) that is ``sh``, ``ls``, ``ps``, ``mount`` and some 300 more, by the name it is called
with. :func:`base_image` makes that tree into a one-layer image of chapter 06's store, the base of
the course's containers, as ``docker pull busybox`` would give.

Where busybox-static is not installed, :func:`host_rootfs` builds a tree from the host's own
programs instead: each program, and each shared library the dynamic loader would map for it (the
``PT_INTERP`` loader and what ``ldd`` lists), copied at the same path. That is how the first
container images were made by hand, and why they were large: a dynamically linked ``ls`` needs
libc, libselinux, libpcre...
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

from . import images, marks
from .errors import LabError, RequirementError

__all__ = ["HOST_PROGRAMS", "base_image", "host_rootfs", "host_image", "libraries_of"]

# What a shell session in a container needs at least, taken from the host when busybox is missing.
HOST_PROGRAMS = ("sh", "ls", "cat", "echo", "ps", "id", "hostname", "mount", "mkdir", "rm", "sleep", "env",
                 "grep", "true", "false", "touch", "mknod", "unshare", "wc", "head", "pwd", "uname")

_LDD_LINE = re.compile(r"^\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)\s*$")


def libraries_of(program: str) -> list[str]:
    """The shared libraries the dynamic loader maps for ``program`` (absolute paths, the loader
    itself included), as ``ldd`` lists them; [] for a static program."""
    done = subprocess.run(["ldd", program], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        if "not a dynamic executable" in done.stdout + done.stderr:
            return []
        raise LabError(f"ldd {program} failed: {(done.stderr or done.stdout).strip()}")
    found = []
    for line in done.stdout.splitlines():
        m = _LDD_LINE.match(line)
        if m:
            found.append(m.group(1))
    return found


def _copy_at_same_path(path: str, folder: str) -> None:
    dest = os.path.join(folder, path.lstrip("/"))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if not os.path.lexists(dest):
        shutil.copy2(os.path.realpath(path), dest)


def host_rootfs(folder: str, programs=HOST_PROGRAMS, *, progress=None, within: tuple[str, ...] | None = None) -> list[str]:
    """Fill ``folder`` (new, below a lab folder) with the host's ``programs`` (found in PATH) and
    their shared libraries, at the same paths, plus /etc/passwd and /etc/group and empty mount
    points. Returns the programs copied. ``progress(done, total, what)`` after each program."""
    folder = marks.lab_path(folder, "make a root filesystem in", within=within)
    found = [(name, shutil.which(name)) for name in programs]
    missing = [name for name, path in found if path is None]
    if "sh" in missing:
        raise RequirementError("no sh on this host to build a root filesystem from", missing=("sh",))
    os.makedirs(folder, exist_ok=True)
    # A merged /usr (/bin -> usr/bin) first, as the host has it, so that each file lands where the
    # host keeps it. Only a link that stays inside the tree (relative, no ".."): the copies below
    # go through it, and an absolute one would send them to the host's own folders.
    for top in ("bin", "sbin", "lib", "lib64"):
        if os.path.islink(f"/{top}"):
            link = os.readlink(f"/{top}")
            if not link.startswith("/") and ".." not in link.split("/"):
                os.makedirs(os.path.join(folder, link), exist_ok=True)
                os.symlink(link, os.path.join(folder, top))
    copied = []
    present = [(name, path) for name, path in found if path is not None]
    for i, (name, path) in enumerate(present):
        for each in [path] + libraries_of(path):
            _copy_at_same_path(each, folder)
        copied.append(name)
        if progress is not None:
            progress(i + 1, len(present), name)
    for sub, mode in (("etc", 0o755), ("tmp", 0o1777), ("proc", 0o555), ("sys", 0o555), ("dev", 0o755),
                      ("root", 0o700)):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
        os.chmod(os.path.join(folder, sub), mode)
    with open(os.path.join(folder, "etc", "passwd"), "w") as fh:
        fh.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    with open(os.path.join(folder, "etc", "group"), "w") as fh:
        fh.write("root:x:0:\nnogroup:x:65534:\n")
    return copied


def host_image(store: images.Store, name: str = "host-tools", *, programs=HOST_PROGRAMS, progress=None) -> images.Image:
    """A one-layer image of :func:`host_rootfs`."""
    images.check_name(name)
    with store.working():
        tmp = store.new_temp()
        try:
            host_rootfs(os.path.join(tmp, "rootfs"), programs, progress=progress, within=store.within)
            return images.import_tree(store, os.path.join(tmp, "rootfs"), name,
                                      created_by=f"host programs: {' '.join(programs)}")
        finally:
            store.remove_temp(tmp)


def base_image(store: images.Store, name: str = "busybox", *, progress=None) -> images.Image:
    """The course's base image ``name``: the one in the store, else made from busybox-static, else
    (busybox missing) from the host's programs. ``progress(done, total, what)`` as it is made."""
    if any(i.name == name for i in images.images(store)):
        return images.image(store, name)
    try:
        if progress is not None:
            progress(0, 1, "busybox-static")
        made = images.busybox_image(store, name)
        if progress is not None:
            progress(1, 1, "busybox-static")
        return made
    except RequirementError:
        return host_image(store, name, progress=progress)

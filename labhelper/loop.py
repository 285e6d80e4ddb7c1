"""Loop devices: a file made to look like a disk (drivers/block/loop.c).

Chapter 05 throttles I/O, and I/O limits apply to a block device (``MAJOR:MINOR``). The lab
never touches this machine's own disks: it makes a file in a lab folder and attaches it to a
free loop device, ``/dev/loopN``, which reads and writes go through like any disk's.

How: ``/dev/loop-control`` answers LOOP_CTL_GET_FREE with a free device number; LOOP_CONFIGURE
(Linux 5.8) binds the file to it in one ioctl, with LO_FLAGS_AUTOCLEAR: the kernel detaches the
device by itself when its last user closes it. So the device lives exactly as long as the
:class:`Loop` object's open fd (and whoever else has it open, dd for instance): a crash of the
notebook detaches it too, and nothing of it is left to record. Its backing file lives in a
recorded lab folder, removed with it.

A loop device of ours is one whose backing file is below a lab folder (kind "loop" in
marks.KINDS, found through /sys/block/loopN/loop/backing_file); cleanup detaches it with
LOOP_CLR_FD.
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
import uuid

from . import marks, registry, syscalls
from .errors import LabError, Refused
from .mounts import make_dir, remove_dir

__all__ = ["Loop", "attach", "find_loops", "remove_loop", "LOOP_DIR"]

# On disk, not in /run (a tmpfs in the lab VM): a backing file in RAM would charge every page
# written through the device to the writer's memory cgroup, and limit I/O by memory instead.
LOOP_DIR = "/var/lib/labhelper/loop"
LOOP_CTL_GET_FREE = 0x4C82          # include/uapi/linux/loop.h
LOOP_CONFIGURE = 0x4C0A
LOOP_CLR_FD = 0x4C01
LO_FLAGS_AUTOCLEAR = 4
LO_NAME_SIZE = 64


class _LoopInfo64(ctypes.Structure):
    _fields_ = [("lo_device", ctypes.c_uint64), ("lo_inode", ctypes.c_uint64), ("lo_rdevice", ctypes.c_uint64),
                ("lo_offset", ctypes.c_uint64), ("lo_sizelimit", ctypes.c_uint64), ("lo_number", ctypes.c_uint32),
                ("lo_encrypt_type", ctypes.c_uint32), ("lo_encrypt_key_size", ctypes.c_uint32),
                ("lo_flags", ctypes.c_uint32), ("lo_file_name", ctypes.c_uint8 * LO_NAME_SIZE),
                ("lo_crypt_name", ctypes.c_uint8 * LO_NAME_SIZE), ("lo_encrypt_key", ctypes.c_uint8 * 32),
                ("lo_init", ctypes.c_uint64 * 2)]


class _LoopConfig(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_uint32), ("block_size", ctypes.c_uint32), ("info", _LoopInfo64),
                ("reserved", ctypes.c_uint64 * 8)]


assert ctypes.sizeof(_LoopInfo64) == 232 and ctypes.sizeof(_LoopConfig) == 304   # the kernel's sizes


class Loop:
    """An attached loop device. ``device`` is "7:N", what I/O limits name; close() detaches it."""

    def __init__(self, number: int, fd: int, folder: str, backing: str, size: int):
        self.number, self.fd, self.folder, self.backing, self.size = number, fd, folder, backing, size
        self.path = f"/dev/loop{number}"
        rdev = os.fstat(fd).st_rdev
        self.device = f"{os.major(rdev)}:{os.minor(rdev)}"

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        """Close our fd (the kernel detaches the device once no one else has it open: autoclear),
        then remove the backing file's folder and its record (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        remove_dir(marks.Obj("dir", self.folder), registry.ledger())

    def __enter__(self) -> "Loop":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.size >> 20} MiB"
        return f"Loop({self.path}, {self.device}, {state}, backed by {self.backing})"


def attach(size: int = 64 << 20, owner: str | None = None) -> Loop:
    """A new loop device backed by a sparse file of ``size`` bytes in a lab folder."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 << 20 <= size <= 1 << 32:
        raise Refused(f"a loop device's size is from 1 MiB to 4 GiB, in bytes, not {size!r}")
    folder = os.path.join(LOOP_DIR, uuid.uuid4().hex[:12])
    make_dir(folder, owner)
    backing = os.path.join(folder, "disk.img")
    try:
        with open(backing, "wb") as fh:
            fh.truncate(size)                                  # sparse: no block is written
        number, fd = _bind(backing)
        try:
            registry.fault_point("loop")
        except BaseException:
            os.close(fd)                       # autoclear: the device goes with our fd
            raise
    except BaseException:
        remove_dir(marks.Obj("dir", folder), registry.ledger())
        raise
    return Loop(number, fd, folder, backing, size)


def _bind(backing: str) -> tuple[int, int]:
    """Bind ``backing`` to a free loop device with autoclear; return (its number, its open fd)."""
    file_fd = os.open(backing, os.O_RDWR | os.O_CLOEXEC)
    try:
        ctl = _control()
        try:
            for _ in range(20):
                number = syscalls.ioctl(ctl, LOOP_CTL_GET_FREE, 0, name="LOOP_CTL_GET_FREE")
                dev = os.open(f"/dev/loop{number}", os.O_RDWR | os.O_CLOEXEC)
                config = _LoopConfig(fd=file_fd)
                config.info.lo_flags = LO_FLAGS_AUTOCLEAR
                name = os.fsencode(backing)[:LO_NAME_SIZE - 1]
                ctypes.memmove(config.info.lo_file_name, name, len(name))
                try:
                    syscalls.ioctl(dev, LOOP_CONFIGURE, config, name="LOOP_CONFIGURE")
                    return number, dev
                except OSError as exc:
                    os.close(dev)
                    if exc.errno != errno.EBUSY:        # taken by another process meanwhile: the next
                        raise
            raise LabError("no free loop device could be bound (20 tries, all taken meanwhile)")
        finally:
            os.close(ctl)
    finally:
        os.close(file_fd)


def _control() -> int:
    """/dev/loop-control, open. Where loop is a module not loaded yet and no init made its device
    node (a minimal system without systemd), load it: opening the node would, had it existed."""
    try:
        return os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    modprobe = shutil.which("modprobe") or "/sbin/modprobe"
    if os.path.exists(modprobe):
        subprocess.run([modprobe, "loop"], capture_output=True)
    try:
        return os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LabError("this machine has no /dev/loop-control: no loop devices",
                       hint="modprobe loop (the lab VM's kernel has it built in)") from None


# --- lab loop devices as objects (marks.KINDS) -------------------------------------------------------

def find_loops(scan: marks.Scan) -> list[marks.Obj]:
    """Loop devices whose backing file is below a lab folder."""
    found = []
    try:
        names = sorted(os.listdir(scan.sys / "block"))
    except OSError:
        return []
    for name in names:
        if not name.startswith("loop"):
            continue
        try:
            backing = (scan.sys / "block" / name / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue                                # not bound
        if marks.lab_dir_of(backing):
            found.append(marks.Obj("loop", f"/dev/{name}", backing, where=(os.path.dirname(backing),)))
    return found


def remove_loop(obj: marks.Obj, ledger) -> None:
    """Detach one loop device of ours (idempotent): LOOP_CLR_FD. With autoclear set, the kernel
    finishes the detach when the last user closes it."""
    path = marks.loop_name(obj.name)
    with ledger.removing("loop", path):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            syscalls.ioctl(fd, LOOP_CLR_FD, 0, name="LOOP_CLR_FD")
        except OSError as exc:
            if exc.errno != errno.ENXIO:              # ENXIO: not bound (any more)
                raise
        finally:
            os.close(fd)

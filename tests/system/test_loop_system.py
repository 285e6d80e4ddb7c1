"""Loop devices on the real kernel: attached with autoclear, found by the census by their
backing file, gone when their last user closes them (a crash included), removed by cleanup."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import census
import pytest
from systest import labhelper_cli

from labhelper import loop
from labhelper.errors import Refused

pytestmark = pytest.mark.cgroups          # chapter 05 uses them; the guest stage runs them too


@pytest.fixture(autouse=True)
def owner(uid, monkeypatch):
    monkeypatch.setenv("LABHELPER_OWNER", f"looptest-{uid}")


def _bound(path: str) -> bool:
    return os.path.exists(f"/sys/block/{os.path.basename(path)}/loop/backing_file")


def test_attach_write_read_and_close(tmp_path):
    before = census.take()
    with loop.attach(8 << 20) as dev:
        assert dev.device.startswith("7:") and _bound(dev.path)
        assert ("loop", dev.path) in census.take() - before
        with open(dev.path, "r+b", buffering=0) as fh:          # a disk: 512-byte sectors
            fh.write(b"x" * 4096)
            fh.seek(0)
            assert fh.read(4) == b"xxxx"
        assert os.path.getsize(dev.backing) == 8 << 20
    assert not _bound(dev.path) and not os.path.exists(dev.folder)
    assert census.diff(before, census.take()) == ""
    dev.close()                                                  # idempotent


def test_a_crashed_owner_leaves_no_loop_device():
    # autoclear: the kernel detaches the device when its last fd closes, a SIGKILL included;
    # what is left is the backing file's folder, which cleanup removes.
    before = census.take()
    code = ("import os, signal\nfrom labhelper import loop\nd = loop.attach(4 << 20)\n"
            "print(d.path, flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert not _bound(p.stdout.strip())
    assert labhelper_cli("cleanup").returncode == 0
    assert census.diff(before, census.take()) == ""


def test_a_device_held_by_another_process_lives_until_that_process_lets_go():
    # Autoclear detaches on the *last* close: a child that inherited the fd keeps the device
    # bound after we closed ours (the census lists it meanwhile); once the holder is gone,
    # cleanup has only the folder left to remove.
    before = census.take()
    dev = loop.attach(4 << 20)
    holder = subprocess.Popen(["sleep", "60"], pass_fds=(dev.fd,))
    dev.fd, fd = -1, dev.fd
    os.close(fd)
    try:
        assert _bound(dev.path) and ("loop", dev.path) in census.take()      # the holder keeps it
    finally:
        holder.kill()
        holder.wait()
    result = labhelper_cli("cleanup")
    assert result.returncode == 0, result.stderr
    assert census.diff(before, census.take()) == ""


@pytest.mark.parametrize("size", [0, -1, 100, 1 << 40, "64M", True])
def test_bad_sizes_are_refused_before_anything(size):
    before = census.take()
    with pytest.raises(Refused):
        loop.attach(size)
    assert census.take() == before

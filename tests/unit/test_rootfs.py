from __future__ import annotations

import subprocess

import pytest

from labhelper import rootfs
from labhelper.errors import LabError

LDD = """\tlinux-vdso.so.1 (0x00007ffc8a5f2000)
\tlibselinux.so.1 => /lib/x86_64-linux-gnu/libselinux.so.1 (0x00007f1c2a1b2000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1c29fd1000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f1c2a21c000)
"""


def _fake(stdout, rc=0, stderr=""):
    return lambda *a, **k: subprocess.CompletedProcess(a[0], rc, stdout, stderr)


def test_the_libraries_ldd_lists_are_the_ones_copied(monkeypatch):
    monkeypatch.setattr(subprocess, "run", _fake(LDD))
    assert rootfs.libraries_of("/bin/ls") == ["/lib/x86_64-linux-gnu/libselinux.so.1",
                                              "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
    monkeypatch.setattr(subprocess, "run", _fake("", 1, "\tnot a dynamic executable\n"))
    assert rootfs.libraries_of("/bin/busybox") == []
    monkeypatch.setattr(subprocess, "run", _fake("", 1, "ldd: /x: No such file or directory\n"))
    with pytest.raises(LabError, match="ldd /x failed"):
        rootfs.libraries_of("/x")

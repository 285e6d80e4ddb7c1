"""The seccomp filter, run by a small classic-BPF interpreter here (the kernel's rules: forward
jumps only, A loaded from struct seccomp_data), so every verdict is checked without root."""
from __future__ import annotations

import errno
import struct

import pytest

from labhelper import seccomp
from labhelper.errors import Refused


def verdict(insns, nr: int, arch: int, args=(0,) * 6) -> int:
    data = struct.pack("<iIQ6Q", nr, arch, 0, *args)
    pc, a = 0, 0
    while True:
        i = insns[pc]
        if i.code == seccomp.LD_W_ABS:
            a = struct.unpack_from("<I", data, i.k)[0]
        elif i.code == seccomp.RET:
            return i.k
        else:
            taken = {seccomp.JEQ: a == i.k, seccomp.JGE: a >= i.k, seccomp.JSET: bool(a & i.k)}[i.code]
            pc += i.jt if taken else i.jf
        pc += 1


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_the_filter_refuses_the_dangerous_calls_and_allows_the_rest(machine):
    prog = seccomp.program(machine=machine)
    table, arch = seccomp.NUMBERS[machine], seccomp.AUDIT_ARCH[machine]
    refused = seccomp.RET_ERRNO | errno.EPERM
    for name in seccomp.DENIED:
        if name in table:
            assert verdict(prog, table[name], arch) == refused, name
    for nr in (0, 1, 2, 3, 39, 59, 60, 231):           # read, write, open, close, getpid, execve, exit...
        if nr not in table.values():
            assert verdict(prog, nr, arch) == seccomp.RET_ALLOW, nr
    clone = table["clone"]
    assert verdict(prog, clone, arch, (0x11,) + (0,) * 5) == seccomp.RET_ALLOW           # fork: SIGCHLD
    assert verdict(prog, clone, arch, (0x3D0F00,) + (0,) * 5) == seccomp.RET_ALLOW       # a thread
    for flag in (0x20000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000):
        assert verdict(prog, clone, arch, (flag | 0x11,) + (0,) * 5) == refused, hex(flag)
    assert verdict(prog, table["clone3"], arch) == seccomp.RET_ERRNO | errno.ENOSYS
    other = seccomp.AUDIT_ARCH["aarch64" if machine == "x86_64" else "x86_64"]
    assert verdict(prog, 0, other) == seccomp.RET_KILL_PROCESS                           # another ABI: kill
    if machine == "x86_64":
        assert verdict(prog, 0x40000000 | 39, arch) == refused                           # x32


def test_the_filter_encodes_to_the_kernels_layout_and_reads_as_text():
    prog = seccomp.program(machine="x86_64")
    raw = seccomp.encode(prog)
    assert len(raw) == 8 * len(prog)
    assert struct.unpack("=HBBI", raw[:8]) == (0x20, 0, 0, 4)                           # ld [4]: the arch
    text = seccomp.disassemble(prog)
    assert text.splitlines()[0].startswith("  0: ld  [4]") and "; mount" in text and "ret ERRNO(EPERM)" in text
    assert all(0 <= i.jt <= 255 and 0 <= i.jf <= 255 for i in prog)


def test_unknown_calls_and_machines_are_refused():
    with pytest.raises(Refused, match="unknown system calls"):
        seccomp.program(["mount", "no_such_call"])
    with pytest.raises(Refused, match="no system call numbers"):
        seccomp.program(machine="mips")


def test_the_mode_is_read_from_status(tmp_path):
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "status").write_text("Name:\tsh\nSeccomp:\t2\nSeccomp_filters:\t1\n")
    assert seccomp.mode(7, proc=str(tmp_path)) == 2
    assert seccomp.mode(8, proc=str(tmp_path)) == 0

"""Which device files a group's processes may use: the device controller (cgroup v1) or a BPF
program attached to the cgroup (v2).

Root in a container keeps CAP_MKNOD (Docker's default set), so it may create ``/dev/kvm`` or
``/dev/sda`` with mknod(2). What stops it from using them is this check, made by the kernel on
every open(2) and mknod(2) of a device file, against the group the process is in:

* **v1**: the ``devices`` controller keeps a list per group: ``devices.deny`` with ``a`` empties
  it, then each ``devices.allow`` line adds one rule, ``TYPE MAJOR:MINOR ACCESS`` (``c 1:3 rwm``:
  the character device 1:3, /dev/null, may be read, written and made);
* **v2**: there is no such file. A program of type BPF_PROG_TYPE_CGROUP_DEVICE is loaded with
  bpf(2) and attached to the cgroup (BPF_CGROUP_DEVICE); the kernel runs it with the device's
  type, numbers and the access asked, and it answers 1 (allow) or 0 (EPERM). runc and crun
  write this program from the same rules (:func:`program`).

DOCKER_RULES are Docker's defaults: the harmless devices a container's /dev has, a new terminal
(/dev/pts/N, /dev/ptmx), and mknod of any device (but no read or write of one not listed).
"""
from __future__ import annotations

import ctypes
import os
import struct
from typing import NamedTuple

from .. import syscalls
from ..errors import Refused, RequirementError, SyscallError
from . import files

__all__ = ["Rule", "DOCKER_RULES", "restrict", "program", "v1_lines"]


class Rule(NamedTuple):
    """``kind`` "c" (character), "b" (block) or "a" (both); ``major``/``minor`` None for any;
    ``access`` a subset of "rwm" (read, write, mknod)."""
    kind: str
    major: int | None
    minor: int | None
    access: str

    def __repr__(self) -> str:
        num = lambda n: "*" if n is None else str(n)    # noqa: E731
        return f"{self.kind} {num(self.major)}:{num(self.minor)} {self.access}"


DOCKER_RULES = (
    Rule("c", None, None, "m"), Rule("b", None, None, "m"),          # mknod of anything; no use of it
    Rule("c", 1, 3, "rwm"), Rule("c", 1, 5, "rwm"), Rule("c", 1, 7, "rwm"),    # null, zero, full
    Rule("c", 1, 8, "rwm"), Rule("c", 1, 9, "rwm"),                 # random, urandom
    Rule("c", 5, 0, "rwm"), Rule("c", 5, 1, "rwm"), Rule("c", 5, 2, "rwm"),    # tty, console, ptmx
    Rule("c", 136, None, "rwm"),                                    # /dev/pts/N
    Rule("c", 10, 200, "rwm"),                                      # /dev/net/tun
)


def _check(rules) -> tuple[Rule, ...]:
    rules = tuple(rules)
    for rule in rules:
        if not isinstance(rule, Rule):
            raise Refused(f"a device rule is a devices.Rule, not {rule!r}")
        if rule.kind not in ("a", "b", "c") or not rule.access or set(rule.access) - set("rwm"):
            raise Refused(f"device rule {rule!r}: kind a, b or c; access some of r, w, m")
        for n in (rule.major, rule.minor):
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 1 << 20):
                raise Refused(f"device rule {rule!r}: a device number is 0 to 2^20-1, or None for any")
    return rules


def v1_lines(rules) -> list[str]:
    """The lines for devices.allow, one per rule."""
    return [repr(rule) for rule in _check(rules)]


# --- v2: the program ------------------------------------------------------------------------------

# struct bpf_cgroup_dev_ctx (include/uapi/linux/bpf.h): what the program is given, in r1.
#   u32 access_type   low 16 bits: BPF_DEVCG_DEV_BLOCK 1 / BPF_DEVCG_DEV_CHAR 2
#                     high 16 bits: BPF_DEVCG_ACC_MKNOD 1 | READ 2 | WRITE 4
#   u32 major, u32 minor
_TYPE = {"b": 1, "c": 2}
_ACCESS = {"m": 1, "r": 2, "w": 4}


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One eBPF instruction: u8 opcode, u8 dst_reg:4 | src_reg:4, s16 offset, s32 immediate."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


_LDX_W = 0x61          # BPF_LDX | BPF_MEM | BPF_W:  dst = *(u32 *)(src + off)
_AND32_K = 0x54        # BPF_ALU | BPF_AND | BPF_K:  dst &= imm
_RSH32_K = 0x74        # BPF_ALU | BPF_RSH | BPF_K:  dst >>= imm
_MOV32_X = 0xBC        # BPF_ALU | BPF_MOV | BPF_X:  dst = src
_JNE_K = 0x55          # BPF_JMP | BPF_JNE | BPF_K:  if dst != imm: skip off instructions
_MOV64_K = 0xB7        # BPF_ALU64 | BPF_MOV | BPF_K: dst = imm
_EXIT = 0x95           # BPF_JMP | BPF_EXIT: return r0


def program(rules=DOCKER_RULES) -> bytes:
    """The eBPF program that allows exactly ``rules``: for each rule, compare and jump to the next
    rule on a mismatch, or return 1; at the end, return 0. (What runc's devicefilter writes.)"""
    rules = _check(rules)
    code = [_insn(_LDX_W, 2, 1, 0), _insn(_AND32_K, 2, imm=0xFFFF),         # r2 = type
            _insn(_LDX_W, 3, 1, 0), _insn(_RSH32_K, 3, imm=16),             # r3 = access asked
            _insn(_LDX_W, 4, 1, 4), _insn(_LDX_W, 5, 1, 8)]                 # r4 = major, r5 = minor
    for rule in rules:
        block = []
        if rule.kind != "a":
            block.append(("jne", 2, _TYPE[rule.kind]))
        wanted = sum(_ACCESS[a] for a in set(rule.access))
        if wanted != 7:
            # Allowed only if the access asked is within the rule's: (asked & ~wanted) == 0.
            block.append(("mov", 1, 3))
            block.append(("and", 1, ~wanted & 7))
            block.append(("jne", 1, 0))
        if rule.major is not None:
            block.append(("jne", 4, rule.major))
        if rule.minor is not None:
            block.append(("jne", 5, rule.minor))
        # Each jump goes past the rest of this block (and its "return 1": two instructions).
        length = len(block) + 2
        for i, (op, reg, value) in enumerate(block):
            if op == "jne":
                code.append(_insn(_JNE_K, reg, off=length - i - 1, imm=value))
            elif op == "mov":
                code.append(_insn(_MOV32_X, reg, value))
            else:
                code.append(_insn(_AND32_K, reg, imm=value))
        code += [_insn(_MOV64_K, 0, imm=1), _insn(_EXIT)]
    code += [_insn(_MOV64_K, 0, imm=0), _insn(_EXIT)]
    return b"".join(code)


_BPF_PROG_LOAD, _BPF_PROG_ATTACH = 5, 8
_BPF_PROG_TYPE_CGROUP_DEVICE = 15
_BPF_CGROUP_DEVICE = 6
_BPF_F_ALLOW_MULTI = 2       # a parent's programs (systemd's) still run too: all must allow


def _load(code: bytes) -> int:
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"Apache-2.0")
    log = ctypes.create_string_buffer(16384)
    attr = struct.pack("<IIQQIIQII16s", _BPF_PROG_TYPE_CGROUP_DEVICE, len(code) // 8, ctypes.addressof(insns),
                       ctypes.addressof(license_), 1, len(log), ctypes.addressof(log), 0, 0, b"lh_devices")
    try:
        return syscalls.bpf(_BPF_PROG_LOAD, attr, "BPF_PROG_LOAD")
    except SyscallError as exc:
        said = log.value.decode(errors="replace").strip()
        if said:
            exc.hint = f"the verifier said: {said[-500:]}"
        raise


def restrict(folders: dict[str, str], version: int, rules=DOCKER_RULES) -> None:
    """Allow the group only ``rules`` (every other device is EPERM to open or make). ``folders``:
    the group's (cgroups.Group.folders); on v2 the program stays attached until the cgroup goes."""
    rules = _check(rules)
    if version == 1:
        folder = folders.get("devices")
        if folder is None:
            raise RequirementError("limiting devices needs the v1 devices controller, which is not mounted here",
                                   hint="mount it: mount -t cgroup -o devices cgroup /sys/fs/cgroup/devices")
        files.write(folder, "devices.deny", "a")
        for line in v1_lines(rules):
            files.write(folder, "devices.allow", line)
        return
    prog = _load(program(rules))
    try:
        target = os.open(folders["track"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            attr = struct.pack("<IIIII4x", target, prog, _BPF_CGROUP_DEVICE, _BPF_F_ALLOW_MULTI, 0)
            syscalls.bpf(_BPF_PROG_ATTACH, attr, "BPF_PROG_ATTACH")
        finally:
            os.close(target)
    finally:
        os.close(prog)          # the cgroup holds the program now

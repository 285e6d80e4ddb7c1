"""The device rules: v1's lines, and v2's eBPF program run by a small interpreter of the few
instructions it uses (so every verdict is checked without root or a v2 kernel)."""
from __future__ import annotations

import struct

import pytest

from labhelper.cgroups import devices
from labhelper.cgroups.devices import Rule
from labhelper.errors import Refused


def allowed(code: bytes, kind: str, major: int, minor: int, access: str) -> int:
    ctx = [{"b": 1, "c": 2}[kind] | sum({"m": 1, "r": 2, "w": 4}[a] for a in access) << 16, major, minor]
    regs = [0] * 11
    insns = [struct.unpack("<BBhi", code[i:i + 8]) for i in range(0, len(code), 8)]
    pc = 0
    for _ in range(10000):
        op, regs_byte, off, imm = insns[pc]
        dst, src = regs_byte & 0xF, regs_byte >> 4
        if op == 0x61:
            assert src == 1 and off in (0, 4, 8)
            regs[dst] = ctx[off // 4]
        elif op == 0x54:
            regs[dst] = regs[dst] & imm & 0xFFFFFFFF
        elif op == 0x74:
            regs[dst] = (regs[dst] & 0xFFFFFFFF) >> imm
        elif op == 0xBC:
            regs[dst] = regs[src] & 0xFFFFFFFF
        elif op == 0x55:
            if regs[dst] != imm:
                pc += off
        elif op == 0xB7:
            regs[dst] = imm
        elif op == 0x95:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")
        pc += 1
        assert 0 <= pc < len(insns)
    raise AssertionError("no exit")


def test_dockers_rules_allow_the_harmless_devices_and_mknod_only():
    code = devices.program()
    assert len(code) % 8 == 0
    for kind, major, minor, access in (("c", 1, 3, "rw"), ("c", 1, 9, "r"), ("c", 136, 4, "rw"), ("c", 5, 2, "rw"),
                                       ("c", 10, 232, "m"), ("b", 8, 0, "m")):
        assert allowed(code, kind, major, minor, access) == 1, (kind, major, minor, access)
    for kind, major, minor, access in (("c", 10, 232, "rw"), ("c", 10, 232, "r"), ("b", 8, 0, "r"), ("b", 8, 0, "w"),
                                       ("c", 1, 1, "r"), ("c", 4, 1, "w"), ("b", 1, 3, "rw")):
        assert allowed(code, kind, major, minor, access) == 0, (kind, major, minor, access)


def test_a_rule_for_any_kind_and_partial_access():
    code = devices.program([Rule("a", 7, None, "r")])
    assert allowed(code, "b", 7, 3, "r") == 1 and allowed(code, "c", 7, 0, "r") == 1
    assert allowed(code, "b", 7, 3, "rw") == 0 and allowed(code, "b", 8, 3, "r") == 0
    assert allowed(devices.program([]), "c", 1, 3, "r") == 0          # no rule: nothing


def test_v1_lines_and_bad_rules():
    assert devices.v1_lines(devices.DOCKER_RULES)[:3] == ["c *:* m", "b *:* m", "c 1:3 rwm"]
    for bad in ([("c", 1, 3, "rw")], [Rule("x", 1, 3, "r")], [Rule("c", 1, 3, "rx")], [Rule("c", -1, 3, "r")],
                [Rule("c", 1, 1 << 20, "r")], [Rule("c", 1, 3, "")]):
        with pytest.raises(Refused):
            devices.program(bad)

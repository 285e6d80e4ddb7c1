"""Decoding VM exits from kvm_run bytes: fake pages built with the ctypes mirror, no /dev/kvm."""
from __future__ import annotations

import ctypes

import struct

import pytest

from labhelper.kvm import exits, structs
from labhelper.kvm.exits import (FailEntry, Hlt, InternalError, Interrupted, IoIn, IoOut, MmioRead,
                                 MmioWrite, Shutdown, SystemEvent, Unhandled, decode)

PAGE = 4096


def page(reason: int, fill=None, extra: dict | None = None) -> bytes:
    """A fake kvm_run mapping (3 pages, like the real one) with exit_reason and a union member."""
    run = structs.kvm_run()
    run.exit_reason = reason
    if fill:
        fill(run)
    buf = bytearray(3 * PAGE)
    buf[:ctypes.sizeof(run)] = bytes(run)
    for offset, data in (extra or {}).items():
        buf[offset:offset + len(data)] = data
    return bytes(buf)


def io(direction, size, port, count, data_offset=PAGE):
    def fill(run):
        run.io.direction, run.io.size, run.io.port = direction, size, port
        run.io.count, run.io.data_offset = count, data_offset
    return fill


def test_io_out_carries_port_and_data():
    e = decode(page(exits.KVM_EXIT_IO, io(1, 1, 0x3F8, 1), {PAGE: b"H"}))
    assert e == IoOut(0x3F8, 1, b"H", 1)
    assert repr(e) == "IoOut(port=0x3f8, size=1, data=b'H')"
    assert e.reason == "KVM_EXIT_IO" and e.value == ord("H")
    assert "0x3f8" in e.describe()


def test_io_out_string_instruction_has_count_times_size_bytes():
    e = decode(page(exits.KVM_EXIT_IO, io(1, 2, 0x10, 3, PAGE + 8), {PAGE + 8: b"aabbccdd"}))
    assert e.data == b"aabbcc" and e.count == 3
    assert repr(e) == "IoOut(port=0x10, size=2, data=b'aabbcc', count=3)"


def test_io_in_asks_for_data():
    e = decode(page(exits.KVM_EXIT_IO, io(0, 4, 0x3FD, 1)))
    assert e == IoIn(0x3FD, 4, 1) and isinstance(e, IoIn)
    assert repr(e) == "IoIn(port=0x3fd, size=4)"


def mmio(address, data, length, is_write):
    def fill(run):
        run.mmio.phys_addr, run.mmio.len, run.mmio.is_write = address, length, is_write
        for i, b in enumerate(data):
            run.mmio.data[i] = b
    return fill


def test_mmio_write_and_read():
    w = decode(page(exits.KVM_EXIT_MMIO, mmio(0xD0000, b"\x41\x42\x43\x44\x45", 2, 1)))
    assert w == MmioWrite(0xD0000, 2, b"AB")          # only len bytes count
    assert w.value == 0x4241 and repr(w) == "MmioWrite(address=0xd0000, size=2, data=b'AB')"
    r = decode(page(exits.KVM_EXIT_MMIO, mmio(0xD0008, b"", 4, 0)))
    assert r == MmioRead(0xD0008, 4) and type(r) is MmioRead


def test_simple_exits():
    assert decode(page(exits.KVM_EXIT_HLT)) == Hlt() and type(decode(page(5))) is Hlt
    assert type(decode(page(exits.KVM_EXIT_SHUTDOWN))) is Shutdown
    assert type(decode(page(exits.KVM_EXIT_INTR))) is Interrupted
    assert "triple" in Shutdown().describe()


def test_fail_entry_and_internal_error():
    def fail(run):
        run.fail_entry.hardware_entry_failure_reason, run.fail_entry.cpu = 0x80000021, 1
    e = decode(page(exits.KVM_EXIT_FAIL_ENTRY, fail))
    assert e == FailEntry(0x80000021, 1) and repr(e) == "FailEntry(hardware_reason=0x80000021, cpu=1)"

    def internal(run):
        run.internal.suberror, run.internal.ndata = 1, 2
        run.internal.data[0], run.internal.data[1], run.internal.data[2] = 7, 8, 9
    e = decode(page(exits.KVM_EXIT_INTERNAL_ERROR, internal))
    assert e == InternalError(1, (7, 8))               # ndata limits what is read
    assert e.name == "KVM_INTERNAL_ERROR_EMULATION" and repr(e) == "InternalError(KVM_INTERNAL_ERROR_EMULATION, data=(0x7, 0x8))"
    assert exits.is_error(e) and not exits.is_error(Hlt())


def test_garbage_ndata_is_capped():
    def internal(run):
        run.internal.suberror, run.internal.ndata = 99, 0xFFFFFFFF
    e = decode(page(exits.KVM_EXIT_INTERNAL_ERROR, internal))
    assert len(e.data) == 16 and e.name == "suberror 99"


def test_system_event_and_unknown():
    def event(run):
        run.system_event.type, run.system_event.ndata = 2, 1
        run.system_event.data[0] = 5
    assert decode(page(exits.KVM_EXIT_SYSTEM_EVENT, event)) == SystemEvent(2, (5,))
    u = decode(page(29))
    assert u == Unhandled(29) and u.reason == "KVM_EXIT_X86_RDMSR" and repr(u) == "Unhandled(KVM_EXIT_X86_RDMSR)"
    assert decode(page(1234)).reason == "exit 1234"
    assert exits.is_error(u)
    assert exits.is_error(SystemEvent(2, ())), "a guest's reset/crash request ends this VMM's run"


def test_struct_formats_match_the_ctypes_layout():
    # decode() reads with struct at offsets and sizes that must be the ABI's (the ctypes mirror).
    assert exits._OFF_REASON == structs.kvm_run.exit_reason.offset
    # _HEAD reads exit_reason and the I/O member in one go: check it against fields set by ctypes.
    raw = page(exits.KVM_EXIT_IO, io(1, 2, 0x3F8, 3, 0x1234))
    assert exits._HEAD.unpack_from(raw) == (exits.KVM_EXIT_IO, 1, 2, 0x3F8, 3, 0x1234)
    assert exits._HEAD.size == structs.kvm_run.exit.offset + ctypes.sizeof(structs.kvm_run_io)
    assert exits.IO.size == ctypes.sizeof(structs.kvm_run_io)
    assert exits._MMIO.size <= ctypes.sizeof(structs.kvm_run_mmio)
    assert exits._INTERNAL.size == ctypes.sizeof(structs.kvm_run_internal)


def test_decode_reads_the_reason_from_any_buffer_and_copies_io_data_from_bytes():
    raw = page(exits.KVM_EXIT_HLT)
    for buf in (raw, bytearray(raw), memoryview(raw)):
        assert decode(buf) == Hlt()
    out = decode(page(exits.KVM_EXIT_IO, io(1, 1, 0x3F8, 1), {PAGE: b"H"}))
    assert type(out.data) is bytes   # from the live mmap too: a slice of an mmap is a bytes copy
    # Too short to be a kvm_run page: decode runs once per exit, so it checks nothing itself and
    # the struct module refuses to read past the end.
    with pytest.raises(struct.error, match="at least 48 bytes"):
        decode(b"\0" * 10)


def test_exits_compare_by_type():
    assert Hlt() != Shutdown() and Hlt() == Hlt() and Interrupted() != Hlt()
    assert IoIn(0x10, 1, 1) != (0x10, 1, 1) and IoIn(0x10, 1, 1) == IoIn(0x10, 1, 1)
    assert len({Hlt(), Hlt(), Shutdown()}) == 2

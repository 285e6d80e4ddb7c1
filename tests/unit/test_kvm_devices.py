"""labhelper.kvm.devices without /dev/kvm: each device against a fake machine, and the wiring of
ports and MMIO ranges (an MMIO device where memory is, is refused)."""
from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest

from labhelper.kvm import guests
from labhelper.kvm.devices import (MmioUart, PvConsole, ReportPort, SerialPort, Wiring, default_devices,
                                   wire)
from labhelper.kvm.vm import GuestMemory, MemoryError_


class FakeVm:
    """Guest memory as a Vm offers it: read() refuses what lies outside."""

    def __init__(self, size: int = 0x2000):
        self.mem = GuestMemory(0, 0, size)

    def read(self, address: int, length: int) -> bytes:
        return self.mem.read(address, length)

    def write(self, address: int, data: bytes) -> None:
        self.mem.write(address, data)


def machine(vm=None):
    return SimpleNamespace(output=bytearray(), reports=[], vm=vm)


def test_serial_port_prints_and_says_transmitter_empty():
    m, serial = machine(), SerialPort()
    serial.io_out(m, guests.SERIAL_PORT, b"H")
    serial.io_out(m, guests.SERIAL_PORT + 1, b"x")     # not the data register: ignored
    assert serial.output == m.output == b"H"
    assert serial.io_in(m, guests.SERIAL_PORT + 5, 1) == b"\x60"    # LSR
    assert serial.io_in(m, guests.SERIAL_PORT, 2) == bytes(2)
    assert list(serial.ports) == list(range(0x3F8, 0x400))


def test_report_port_appends_little_endian_values():
    m, report = machine(), ReportPort()
    report.io_out(m, guests.REPORT_PORT, (5555).to_bytes(2, "little"))
    report.io_out(m, guests.REPORT_PORT, b"\x01\x00\x00\x80")
    assert m.reports == [5555, 0x80000001] and report.io_in(m, guests.REPORT_PORT, 4) == bytes(4)


def test_pv_console_reads_the_buffer_the_mailbox_describes():
    vm = FakeVm()
    vm.write(0x1800, b"paravirtual!")
    vm.write(guests.MAILBOX, struct.pack("<HH", 0x1800, 12))
    m, pv = machine(vm), PvConsole()
    pv.io_out(m, guests.DOORBELL_PORT, b"\0")
    assert pv.output == m.output == b"paravirtual!" and pv.rings == 1 and pv.refused == []


def test_pv_console_refuses_a_buffer_outside_guest_memory():
    # A VMM must not trust its guest: the described buffer is checked before it is read.
    vm = FakeVm(0x2000)
    vm.write(guests.MAILBOX, struct.pack("<HH", 0x1F00, 0x200))
    m, pv = machine(vm), PvConsole()
    pv.io_out(m, guests.DOORBELL_PORT, b"\0")
    assert m.output == b"" and pv.rings == 1
    assert len(pv.refused) == 1 and "[0x1f00, +512) refused" in pv.refused[0]


def test_mmio_uart_registers():
    m, uart = machine(), MmioUart()
    for byte in b"MMIO":
        uart.mmio_write(m, guests.MMIO_BASE, bytes([byte, 0xEE]))   # DATA takes the first byte
    uart.mmio_write(m, guests.MMIO_BASE + 0x10, b"?")               # elsewhere: counted, ignored
    assert uart.output == m.output == b"MMIO"
    assert uart.mmio_read(m, guests.MMIO_BASE + 4, 4) == b"LHUA"
    assert uart.mmio_read(m, guests.MMIO_BASE + 8, 2) == (4).to_bytes(2, "little")
    assert uart.mmio_read(m, guests.MMIO_BASE + 0x20, 8) == bytes(8)
    assert uart.accesses == 8


def test_wire_maps_ports_and_mmio_and_refuses_mmio_inside_memory():
    devices = default_devices()
    assert [d.name for d in devices] == ["serial", "report", "pv-console", "mmio-uart"]
    assert default_devices()[0] is not devices[0]                   # a fresh set each time
    w = wire(devices, 0x10000)
    assert isinstance(w, Wiring)
    assert w.ports[0x3F8] is devices[0] and w.ports[0x3FD] is devices[0]
    assert w.ports[guests.REPORT_PORT] is devices[1] and w.ports[guests.DOORBELL_PORT] is devices[2]
    assert w.mmio == [devices[3]] and 0xD0000 not in w.ports
    with pytest.raises(MemoryError_, match="mmio-uart at 0x8000 lies inside guest memory"):
        wire([MmioUart(0x8000)], 0x10000)
    assert wire([MmioUart(0x10000)], 0x10000).mmio                # right after memory: fine

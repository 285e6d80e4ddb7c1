"""The devices a guest talks to, emulated by the VMM: the other half of every I/O and MMIO exit.

Each one small and readable:

* :class:`SerialPort`: COM1 at port 0x3f8. Each byte is one ``out``, one exit: *full
  virtualization* of a real device by trap-and-emulate (the guest needs no change).
* :class:`PvConsole`: a *paravirtual* console. The guest leaves the message in memory, writes its
  address and length into a mailbox, and rings a doorbell port: one exit per message.
* :class:`MmioUart`: a device at an address with no memory behind it (MMIO), like the UARTs of
  ARM boards: DATA (+0, write), ID (+4, read), COUNT (+8, read).
* :class:`ReportPort`: port 0x10, where a guest reports numbers (``out 0x10, ax``).

A device is any object with a ``name`` and either ``ports`` with ``io_out``/``io_in``, or
``base``/``size`` with ``mmio_write``/``mmio_read``. Each method gets the machine it is plugged
into (for its guest memory, ``machine.vm``, and the shared ``machine.output``/``machine.reports``).
:func:`wire` says which device answers which port and address; the run loop that calls them is
:class:`labhelper.kvm.machine.Machine`.

A VMM must not trust its guest: the paravirtual console checks the buffer the guest describes
before it reads it.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from .guests import DOORBELL_PORT, MAILBOX, MMIO_BASE, REPORT_PORT, SERIAL_PORT
from .vm import MemoryError_

__all__ = ["SerialPort", "ReportPort", "PvConsole", "MmioUart", "default_devices", "Wiring", "wire"]


class SerialPort:
    """COM1 (a 16550 UART), reduced to what a guest needs to print."""
    name = "serial"

    def __init__(self, base: int = SERIAL_PORT):
        self.base = base
        self.ports = range(base, base + 8)
        self.output = bytearray()

    def io_out(self, machine, port: int, data: bytes) -> None:
        if port == self.base:                 # THR: transmit holding register
            self.output += data
            machine.output += data

    def io_in(self, machine, port: int, size: int) -> bytes:
        if port == self.base + 5:             # LSR: "transmitter empty", so a polling driver goes on
            return bytes([0x60]) * size
        return bytes(size)


class ReportPort:
    """Port 0x10: each ``out`` appends the value written to ``machine.reports``."""
    name = "report"

    def __init__(self, port: int = REPORT_PORT):
        self.ports = range(port, port + 1)

    def io_out(self, machine, port: int, data: bytes) -> None:
        machine.reports.append(int.from_bytes(data, "little"))

    def io_in(self, machine, port: int, size: int) -> bytes:
        return bytes(size)


class PvConsole:
    """A paravirtual console: mailbox at MAILBOX (u16 address, u16 length), doorbell port."""
    name = "pv-console"

    def __init__(self, doorbell: int = DOORBELL_PORT, mailbox: int = MAILBOX):
        self.ports = range(doorbell, doorbell + 1)
        self.mailbox = mailbox
        self.output = bytearray()
        self.rings = 0
        self.refused: list[str] = []          # descriptors that pointed outside guest memory

    def io_out(self, machine, port: int, data: bytes) -> None:
        self.rings += 1
        address, length = struct.unpack("<HH", machine.vm.read(self.mailbox, 4))
        try:
            text = machine.vm.read(address, length)   # checked: must lie inside guest memory
        except MemoryError_ as exc:
            self.refused.append(f"buffer [{address:#x}, +{length}) refused: {exc.message}; the console "
                                "reads only a buffer that lies inside guest memory, so it printed nothing")
            return
        self.output += text
        machine.output += text

    def io_in(self, machine, port: int, size: int) -> bytes:
        return bytes(size)


class MmioUart:
    """A UART at an MMIO address: DATA at +0 (write a byte), ID at +4 ("LHUA"), COUNT at +8."""
    name = "mmio-uart"

    def __init__(self, base: int = MMIO_BASE, size: int = 0x1000):
        self.base, self.size = base, size
        self.output = bytearray()
        self.accesses = 0

    def mmio_write(self, machine, address: int, data: bytes) -> None:
        self.accesses += 1
        if address == self.base:
            self.output += data[:1]
            machine.output += data[:1]

    def mmio_read(self, machine, address: int, size: int) -> bytes:
        self.accesses += 1
        offset = address - self.base
        if offset == 4:
            value = b"LHUA"
        elif offset == 8:
            value = len(self.output).to_bytes(8, "little")
        else:
            value = bytes(8)
        return value[:size].ljust(size, b"\0")


#: Where the MMIO UART goes when the guest's memory reaches MMIO_BASE: just below 4 GiB, in the
#: hole a PC leaves for devices (a 64-bit guest reaches it; a real-mode one has no memory there
#: to need it for: it cannot address past 1 MiB anyway).
HIGH_MMIO_BASE = 0xFEB00000


def default_devices(memory: int = 0) -> list:
    """A fresh set of the devices every Machine has unless told otherwise, placed so that none
    sits inside ``memory`` bytes of guest memory (``machine.device("mmio-uart").base`` says
    where the UART went)."""
    uart = MmioUart() if memory <= MMIO_BASE else MmioUart(base=HIGH_MMIO_BASE)
    return [SerialPort(), ReportPort(), PvConsole(), uart]


class Wiring(NamedTuple):
    """Which device answers which I/O port, and the MMIO devices (each covers [base, base+size))."""
    ports: dict
    mmio: list


def wire(devices, memory: int) -> Wiring:
    """Plug ``devices`` into a machine with ``memory`` bytes of guest memory (from address 0).

    An MMIO device must sit where no memory is: an access to an address with memory behind it
    never leaves the guest, so the device would never see it. Such a device is refused.
    """
    ports: dict = {}
    mmio: list = []
    for d in devices:
        for p in getattr(d, "ports", ()):
            ports[p] = d
        if hasattr(d, "mmio_write"):
            if d.base < memory:
                raise MemoryError_(f"{d.name} at {d.base:#x} lies inside guest memory (which ends at {memory:#x}): "
                                   "MMIO needs an address with no memory behind it")
            mmio.append(d)
    return Wiring(ports, mmio)

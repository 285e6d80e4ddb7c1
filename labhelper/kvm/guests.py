"""Guest programs, written as readable assembly and assembled by GNU as (binutils).

A guest here is a few dozen bytes of x86 machine code that our VMM loads into guest memory and
runs. We write them in Intel syntax and let the real assembler turn them into bytes::

    as --32 (or --64)   source  -> object file, plus a listing (-aln)
    ld -Ttext=ORIGIN    object  -> addresses fixed for where the program is loaded
    objcopy -O binary   -> the raw bytes we copy into guest memory

:func:`assemble` returns a :class:`Program`: the bytes, and a listing that shows each source line
with its guest address and its bytes, so you can see exactly what the vCPU executes.

The devices the guests talk to (ports and addresses) are the constants below; the VMM side is in
:mod:`labhelper.kvm.devices`.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import NamedTuple

from ..errors import LabError, Refused, RequirementError

__all__ = [
    "Program", "ListingLine", "AssemblerError", "assemble", "tools", "ORIGIN",
    "SERIAL_PORT", "REPORT_PORT", "DOORBELL_PORT", "MAILBOX", "MMIO_BASE",
    "SERIAL_HELLO", "PV_HELLO", "MMIO_HELLO", "LONG_HELLO", "LONG_SYSCALLS", "SPIN", "TRIPLE_FAULT", "ADD_TWO",
    "EXIT_LOOP", "CPUID_PROBE", "serial_source", "pv_source", "syscall_loop_source", "ascii_directive", "Expected",
    "EXPECTED",
    "reference",
]

ORIGIN = 0x1000           # where programs are loaded (and start): guest physical 4 KiB
SERIAL_PORT = 0x3F8       # COM1's data register on every PC: one `out` per byte
REPORT_PORT = 0x10        # our "report a number" port: `out 0x10, ax` / `out dx, eax`
DOORBELL_PORT = 0x510     # the paravirtual console's doorbell
MAILBOX = 0x500           # guest physical address of the PV console descriptor: u16 address, u16 length
MMIO_BASE = 0xD0000       # our MMIO device: no memory there, so every access is an exit

_MODES = {"real": ("--32", "elf_i386", ".code16"), "long": ("--64", "elf_x86_64", ".code64")}


class AssemblerError(LabError):
    """The assembler refused the source: the message quotes its errors, with our line numbers."""


@dataclass(frozen=True)
class ListingLine:
    line: int              # 1-based line number in the source
    address: int | None    # guest address of the first byte, None for lines that emit nothing
    code: bytes            # the bytes this line produced (after linking: addresses filled in)
    source: str

    def __repr__(self) -> str:
        where = f"{self.address:#06x}" if self.address is not None else "      "
        return f"ListingLine({self.line}: {where} {self.code.hex(' ')!s:<20} {self.source.strip()})"


@dataclass(frozen=True)
class Program:
    """Machine code for a guest: ``code`` is loaded at ``origin`` and starts there."""
    name: str
    mode: str                      # "real" (16-bit) or "long" (64-bit)
    origin: int
    code: bytes
    lines: tuple[ListingLine, ...] = ()
    symbols: dict = field(default_factory=dict, compare=False)
    source: str = ""

    def __repr__(self) -> str:
        return f"Program({self.name!r}, mode={self.mode}, origin={self.origin:#x}, {len(self.code)} bytes)"

    @property
    def end(self) -> int:
        return self.origin + len(self.code)

    def address_of(self, label: str) -> int:
        try:
            return self.symbols[label]
        except KeyError:
            raise KeyError(f"no label {label!r} in {self.name}; labels: {', '.join(sorted(self.symbols))}") from None

    def line_at(self, address: int) -> ListingLine | None:
        """The source line whose bytes include ``address`` (e.g. the instruction at rip)."""
        for ln in self.lines:
            if ln.address is not None and ln.address <= address < ln.address + max(len(ln.code), 1):
                return ln
        return None

    def listing(self, mark: int | None = None, width: int = 8) -> str:
        """The listing as text: address, bytes (``width`` per row), source. ``mark`` puts an
        arrow at the line containing that address (the stepper marks rip)."""
        rows = ["  address  bytes" + " " * (3 * width - 5) + "source"]
        for ln in self.lines:
            src = ln.source.rstrip()
            if ln.address is None:
                if src.strip():
                    rows.append(" " * (11 + 3 * width) + src)
                continue
            arrow = "=>" if mark is not None and ln.address <= mark < ln.address + max(len(ln.code), 1) else "  "
            chunks = [ln.code[i:i + width] for i in range(0, len(ln.code), width)] or [b""]
            for i, chunk in enumerate(chunks):
                addr = f"{ln.address + i * width:#06x}" if i == 0 else " " * 6
                rows.append(f"{arrow if i == 0 else '  '} {addr}   {chunk.hex(' '):<{3 * width}}"
                            f"{src if i == 0 else ''}")
        return "\n".join(r.rstrip() for r in rows)

    def _repr_pretty_(self, p, cycle) -> None:  # IPython: show the listing
        p.text(f"{self!r}\n{self.listing()}")


def tools() -> dict[str, str | None]:
    """Where the binutils programs are (None if missing)."""
    return {name: shutil.which(name) for name in ("as", "ld", "objcopy")}


def _require_tools() -> dict[str, str]:
    found = tools()
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise RequirementError(f"assembling a guest needs GNU binutils ({', '.join(missing)} not found)",
                               hint="apt-get install binutils (scripts/provision.sh installs it)",
                               missing=("binutils",))
    return found  # type: ignore[return-value]


_ERROR_LINE = re.compile(r"^[^:\n]*\.s:(\d+): ", re.M)


def _run(argv: list[str], cwd: str, what: str) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        # Our header is on line 1, so the learner's line N is the assembler's line N + 1.
        text = _ERROR_LINE.sub(lambda m: f"line {int(m.group(1)) - 1}: ", proc.stderr.strip())
        text = "\n".join(l for l in text.splitlines() if "Assembler messages" not in l)
        raise AssemblerError(f"{what} failed:\n{text}",
                             hint="the guest is GNU as Intel syntax (like NASM without brackets "
                                  "quirks); comments start with #")


def _parse_listing(text: str) -> list[tuple[int, int | None, str]]:
    """(line, section offset or None, source) for each source line of an `as -aln` listing.

    A row looks like ``   4 0003 BE0F00   \\t    mov si, offset msg``; rows without a tab are
    continuations of the bytes of the row above; we take the bytes from the linked binary.
    """
    rows = []
    for raw in text.splitlines():
        left, tab, source = raw.partition("\t")
        if not tab:
            continue
        parts = left.split()
        if not parts or not parts[0].isdigit():
            continue
        offset = int(parts[1], 16) if len(parts) >= 2 and re.fullmatch(r"[0-9a-fA-F]{4,}", parts[1]) else None
        rows.append((int(parts[0]), offset, source))
    return rows


def assemble(source: str, mode: str = "real", origin: int = ORIGIN, name: str = "guest") -> Program:
    """Assemble Intel-syntax ``source`` for ``mode`` ("real": 16-bit, "long": 64-bit), linked to
    run at ``origin``. Raises AssemblerError with the assembler's messages on bad source."""
    if mode not in _MODES:
        raise Refused(f"mode must be one of {', '.join(_MODES)}, not {mode!r}")
    if not isinstance(origin, int) or origin < 0 or origin % 16:
        raise Refused(f"origin must be a non-negative multiple of 16, not {origin!r}")
    return _assemble(source, mode, origin, name)


@functools.lru_cache(maxsize=64)
def _assemble(source: str, mode: str, origin: int, name: str) -> Program:
    paths = _require_tools()
    as_flag, emulation, code_dir = _MODES[mode]
    with tempfile.TemporaryDirectory(prefix="lh-as-") as tmp:
        src = os.path.join(tmp, "guest.s")
        with open(src, "w") as fh:
            # Line 1 is our header; the learner's line N is line N + 1 for the assembler.
            fh.write(f".intel_syntax noprefix; {code_dir}\n{source}\n")
        _run([paths["as"], as_flag, "--listing-cont-lines=10000", "-aln=guest.lst", "-o", "guest.o", "guest.s"],
             tmp, "assembling")
        quiet = ["--no-warn-rwx-segments"] if _ld_knows_rwx(paths["ld"]) else []
        _run([paths["ld"], "-m", emulation, f"-Ttext={origin:#x}", "-e", f"{origin:#x}", *quiet,
              "-o", "guest.elf", "guest.o"], tmp, "linking")
        _check_only_text(tmp)
        _run([paths["objcopy"], "-O", "binary", "-j", ".text", "guest.elf", "guest.bin"], tmp, "objcopy")
        with open(os.path.join(tmp, "guest.bin"), "rb") as fh:
            code = fh.read()
        with open(os.path.join(tmp, "guest.lst")) as fh:
            rows = _parse_listing(fh.read())
        symbols = _symbols(os.path.join(tmp, "guest.elf"))
    src_lines = source.rstrip("\n").split("\n")
    placed = sorted({off for _, off, _ in rows if off is not None})
    ends = dict(zip(placed, placed[1:] + [len(code)]))
    lines = []
    for number, offset, text in rows:
        if number == 1:
            continue                      # our header
        n = number - 1
        if n > len(src_lines):
            continue                      # the blank line(s) after the learner's last line
        text = src_lines[n - 1]
        if offset is None:
            lines.append(ListingLine(n, None, b"", text))
        else:
            lines.append(ListingLine(n, origin + offset, code[offset:ends[offset]], text))
    return Program(name, mode, origin, code, tuple(lines), symbols, source)


@functools.lru_cache(maxsize=None)
def _ld_knows_rwx(ld: str) -> bool:
    out = subprocess.run([ld, "--help"], capture_output=True, text=True).stdout
    return "--no-warn-rwx-segments" in out


def _check_only_text(tmp: str) -> None:
    # Everything must live in .text (code and data alike): that is the one section we copy.
    import struct
    with open(os.path.join(tmp, "guest.o"), "rb") as fh:
        elf = fh.read()
    is64 = elf[4] == 2
    shoff = struct.unpack_from("<Q" if is64 else "<I", elf, 0x28 if is64 else 0x20)[0]
    entsize, count, strndx = struct.unpack_from("<HHH", elf, 0x3A if is64 else 0x2E)
    fmt = "<IIQQQQ" if is64 else "<IIIIII"
    names_off = struct.unpack_from(fmt, elf, shoff + strndx * entsize)[4]   # sh_offset
    for i in range(count):
        name_idx, kind, _flags, _addr, _off, size = struct.unpack_from(fmt, elf, shoff + i * entsize)
        name = elf[names_off + name_idx:elf.index(b"\0", names_off + name_idx)].decode()
        if name in (".data", ".bss", ".rodata") and size:
            raise AssemblerError(f"the guest puts {size} bytes in {name}: keep code and data in .text "
                                 "(do not use .data/.bss/.section)")


def _symbols(elf_path: str) -> dict[str, int]:
    nm = shutil.which("nm")
    if nm is None:
        return {}
    out = subprocess.run([nm, elf_path], capture_output=True, text=True).stdout
    symbols = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTaA" and not parts[2].startswith(("__", "_end", "_edata")):
            symbols[parts[2]] = int(parts[0], 16)
    return symbols


# --- helpers to write guests --------------------------------------------------------------------

def ascii_directive(data: bytes | str) -> str:
    """An ``.ascii "..."`` line for any bytes (quotes, backslashes and control bytes escaped)."""
    if isinstance(data, str):
        data = data.encode()
    out = []
    for b in data:
        c = chr(b)
        if c in '"\\':
            out.append("\\" + c)
        elif c in "\n\t":
            out.append("\\n" if c == "\n" else "\\t")
        elif 32 <= b < 127:
            out.append(c)
        else:
            out.append(f"\\{b:03o}")
    return f'.ascii "{"".join(out)}"'


def serial_source(message: bytes | str) -> str:
    """Real-mode guest: print ``message`` on COM1, one `out` (one VM exit) per byte, then hlt.

    The message must not be empty: `loop` decrements cx *before* it tests it, so with cx = 0
    it would run 65,536 times (cx wraps to 0xffff) and print whatever follows in memory.
    """
    if isinstance(message, str):
        message = message.encode()
    if not message:
        raise Refused("the serial guest needs a message of at least one byte "
                         "(with cx = 0, `loop` would run 65,536 times)")
    if len(message) > 0xFFFF:
        raise Refused(f"the message is {len(message)} bytes; cx counts at most 65,535")
    return f"""\
# Print a message on the serial port, one byte at a time: full virtualization of a device.
    mov dx, {SERIAL_PORT:#x}           # COM1's data register
    mov si, offset message
    mov cx, message_end - message
next:
    lodsb                     # al = byte at [si], then si = si + 1
    out dx, al                # the hardware traps this: VM exit, the VMM prints al
    loop next                 # cx = cx - 1, again while cx != 0
    hlt                       # done: VM exit, the VMM stops
message:
    {ascii_directive(message)}
message_end:
"""


def pv_source(message: bytes | str) -> str:
    """Real-mode guest: leave ``message`` in memory, describe it in the mailbox, ring once."""
    return f"""\
# A paravirtual console: the guest knows it runs in a VM. It leaves the whole message in
# memory, writes where it is in a mailbox the VMM knows, and rings one doorbell: one VM exit.
    mov word ptr [{MAILBOX:#x}], offset message                  # mailbox: address...
    mov word ptr [{MAILBOX + 2:#x}], offset message_end - message # ...and length
    mov dx, {DOORBELL_PORT:#x}
    out dx, al                # ring the doorbell: one VM exit for the whole message
    hlt
message:
    {ascii_directive(message)}
message_end:
"""


SERIAL_HELLO = serial_source("Hello from a real-mode guest!\n")

PV_HELLO = pv_source("Hello through the paravirtual console!\n")

MMIO_HELLO = f"""\
# Memory-mapped I/O: the device has an address, not a port. No memory backs {MMIO_BASE:#x},
# so each load or store there makes the vCPU exit and the VMM emulates the device.
    mov ax, {MMIO_BASE >> 4:#x}
    mov es, ax                # es:0 is guest physical {MMIO_BASE:#x}
    mov si, offset message
    mov cx, message_end - message
next:
    lodsb
    mov byte ptr es:[0], al   # store to the device's DATA register: an MMIO write exit
    loop next
    mov ax, word ptr es:[8]   # load the device's COUNT register: an MMIO read exit, the VMM answers
    out {REPORT_PORT:#x}, ax           # report what the device said
    hlt
message:
    .ascii "MMIO!\\n"
message_end:
"""

LONG_HELLO = f"""\
# A 64-bit guest. The VMM built page tables and switched the vCPU to long mode before it ran:
# there is no real-mode boot code here at all.
    mov edx, {REPORT_PORT:#x}          # the report port
    mov rax, cr0
    out dx, eax               # report CR0: PE and PG are set
    mov rax, cr4
    out dx, eax               # report CR4: PAE is set
    mov ecx, 0xC0000080       # the EFER model-specific register
    rdmsr                     # edx:eax = EFER; the kernel handles it: no exit to us
    mov edx, {REPORT_PORT:#x}
    out dx, eax               # report EFER: LME and LMA are set
    lea rsi, [rip + message]  # rip-relative addressing only exists in 64-bit mode
    mov rdi, {MMIO_BASE:#x}
next:
    lodsb
    test al, al
    jz done
    mov byte ptr [rdi], al    # MMIO store through the page tables
    jmp next
done:
    hlt
message:
    .asciz "Hello from long mode!\\n"
"""

SPIN = """\
# A guest that never exits: only a signal (a notebook interrupt) gets us back.
spin:
    jmp spin
"""

TRIPLE_FAULT = """\
# (64-bit) Load an interrupt table of size 0, then execute an invalid instruction: the CPU finds
# no handler for #UD, nor for the #GP that follows, nor for the double fault: a triple fault.
# A real PC resets; KVM reports KVM_EXIT_SHUTDOWN.
    lidt [rip + empty_idt]
    ud2                       # "undefined instruction", on purpose
    hlt
empty_idt:
    .word 0                   # limit 0: no entries at all
    .quad 0                   # base
"""

ADD_TWO = f"""\
# Add the two 16-bit numbers at 0x600 and 0x602 and report the sum on port {REPORT_PORT:#x}.
    mov ax, word ptr [0x600]
    add ax, word ptr [0x602]
    out {REPORT_PORT:#x}, ax
    hlt
"""

EXIT_LOOP = f"""\
# Exit forever: out, out, out... Used to time one exit round trip.
    mov dx, {REPORT_PORT:#x}
again:
    out dx, al
    jmp again
"""

CPUID_PROBE = f"""\
# Ask the CPU who it is. CPUID is answered by the VMM's table (KVM_SET_CPUID2), not the chip.
    mov eax, 1
    cpuid
    mov eax, ecx
    out {REPORT_PORT:#x}, eax          # leaf 1, ECX: bit 31 is "a hypervisor is present"
    mov eax, 0x40000000       # the hypervisor's own leaf: its name in ebx, ecx, edx
    cpuid
    mov eax, ebx
    out {REPORT_PORT:#x}, eax
    mov eax, ecx
    out {REPORT_PORT:#x}, eax
    mov eax, edx
    out {REPORT_PORT:#x}, eax
    hlt
"""


def syscall_loop_source(count: int) -> str:
    """A long-mode guest with a kernel and a process of its own, in a few lines: ring 0 sets
    up the system call entry, drops to ring 3, and the code there makes ``count`` system calls
    (the ``syscall`` instruction) that ring 0 answers; then ring 0 reports the count on port
    0x10 and halts. With VT-x or AMD-V, none of the system calls leaves the VM: two exits in all."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count < 1 << 63:
        raise ValueError(f"count must be a whole number of system calls, at least 1, not {count!r}")
    return f"""\
# Ring 0, the guest's kernel: where `syscall` goes (model-specific registers; no exit under
# VT-x/AMD-V: the CPU keeps these MSRs per VM).
    mov ecx, 0xC0000080       # EFER
    rdmsr
    or eax, 1                 # SCE: the syscall/sysret instructions on
    wrmsr
    mov ecx, 0xC0000081       # STAR: the segments; kernel CS 0x08, user CS 0x23 and SS 0x1b
    xor eax, eax
    mov edx, 0x00130008
    wrmsr
    mov ecx, 0xC0000082       # LSTAR: the kernel's entry point for syscall
    lea rax, [rip + entry]
    mov rdx, rax
    shr rdx, 32
    wrmsr
    mov ecx, 0xC0000084       # FMASK: flags to clear on entry (none)
    xor eax, eax
    xor edx, edx
    wrmsr
    mov r12, {count}           # system calls left to answer
    mov r13, r12
    lea rcx, [rip + process]  # sysret goes to rcx, with the flags in r11, in ring 3
    mov r11, 0x2
    sysretq
# Ring 3, the guest's process: nothing but system calls.
process:
    syscall                   # to ring 0, the guest's own kernel (not the host's, not the VMM)
    jmp process
# Ring 0 again: the guest kernel's system call handler.
entry:
    dec r12
    jz done
    sysretq                   # back to the process, ring 3
done:
    mov rax, r13
    mov edx, {REPORT_PORT:#x}
    out dx, eax               # report how many were answered: the first exit
    hlt                       # the second
"""


LONG_SYSCALLS = syscall_loop_source(1_000_000)


# --- what the key guests do in a VM, for hosts that cannot run them ------------------------------

class Expected(NamedTuple):
    """What a guest does on any KVM: its output, its exits by kind, what it reports on port 0x10.
    Deterministic (no timings): tests/system/test_kvm.py runs each guest and checks it."""
    output: bytes
    counts: dict
    reports: tuple = ()

    def describe(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        text = f"{sum(self.counts.values())} exits ({counts})"
        if self.output:
            text += f", output {self.output.decode(errors='replace')!r}"
        if self.reports:
            text += f", reports {', '.join(f'{r:#x}' for r in self.reports)}"
        return text


EXPECTED: dict[str, Expected] = {
    "SERIAL_HELLO": Expected(b"Hello from a real-mode guest!\n", {"IoOut": 30, "Hlt": 1}),
    "PV_HELLO": Expected(b"Hello through the paravirtual console!\n", {"IoOut": 1, "Hlt": 1}),
    "MMIO_HELLO": Expected(b"MMIO!\n", {"MmioWrite": 6, "MmioRead": 1, "IoOut": 1, "Hlt": 1}, (6,)),
    "LONG_HELLO": Expected(b"Hello from long mode!\n", {"IoOut": 3, "MmioWrite": 22, "Hlt": 1}),
    "CPUID_PROBE": Expected(b"", {"IoOut": 4, "Hlt": 1}),   # cpuid itself never reaches the VMM
    # A million system calls inside the guest, to its own kernel: not one of them is an exit.
    "LONG_SYSCALLS": Expected(b"", {"IoOut": 1, "Hlt": 1}, (1_000_000,)),
}


def reference(name: str) -> str:
    """One line: what guest ``name`` (a key of EXPECTED) does in the lab VM."""
    return EXPECTED[name].describe()

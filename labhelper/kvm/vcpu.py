"""The vCPU level: registers, special registers, and KVM_RUN.

A vCPU fd comes with a shared page, ``kvm_run``, that we mmap(). ``KVM_RUN`` enters the guest and
returns when the guest does something the kernel hands back to user space; the kernel then
describes that *exit* in the kvm_run page (see :mod:`.exits`). We emulate what the guest asked
for (print the byte it wrote to the serial port...) and call KVM_RUN again. That round trip,
guest -> kernel -> this Python process -> kernel -> guest, is the price of trap-and-emulate.

Interrupting a guest: KVM_RUN blocks in the kernel for as long as the guest runs without an
exit (``jmp $`` runs forever). A signal to this thread makes the kernel leave the guest and
KVM_RUN fail with EINTR (exit reason KVM_EXIT_INTR); so does ``immediate_exit`` set in the kvm_run
page before KVM_RUN starts. :mod:`.watchdog` uses both for timeouts. A notebook interrupt is
SIGINT, so Python then raises KeyboardInterrupt: :meth:`Vcpu.run` lets it propagate, and the
caller (``Machine.run``) closes the VM.

Counting: ``exits`` counts the KVM_RUN calls that came back with a guest exit, ``interruptions``
those a signal cut short. They are kept apart so that ``vcpu.exits`` agrees with the exits a
Machine reports (its ``counts`` and each RunResult's ``exits``).

A :class:`Vcpu` owns its vCPU fd and its kvm_run mapping (an :class:`~labhelper.kvm.fds.Owner`).
This is the lowest of the three levels: it imports neither :mod:`.vm` nor :mod:`.system` (the
VM that made it is only passed in, as ``vm``).
"""
from __future__ import annotations

import dataclasses
import errno
import mmap
import struct
import sys
from dataclasses import dataclass
from typing import NamedTuple

from .. import syscalls
from ..errors import LabError, Refused, Shown, SyscallError
from . import cpuid, exits, ioctls, structs
from .exits import IO, Interrupted
from .fds import VCPU, Owner

__all__ = ["Registers", "Segment", "DescriptorTable", "SpecialRegisters", "Translation", "Vcpu",
           "RegisterError"]

_U64 = (1 << 64) - 1
_ioctl = syscalls.ioctl
# Vcpu.run's two calls, as module globals: one dictionary lookup each per exit (and the system
# tests swap _ioctl_noarg to run both KVM_RUN paths, fcntl and ctypes).
_ioctl_noarg = syscalls.ioctl_noarg
_decode = exits.decode
_KVM_RUN = ioctls.KVM_RUN
_EINTR = errno.EINTR
_INTERRUPTED = Interrupted()
_OFF_UNION = structs.kvm_run.exit.offset
_OFF_MMIO_DATA = _OFF_UNION + structs.kvm_run_mmio.data.offset
_OFF_IMMEDIATE_EXIT = structs.kvm_run.immediate_exit.offset


class RegisterError(LabError):
    """A register state refused before (or by) the kernel."""


@dataclass
class Registers:
    """The general purpose registers. Its repr shows rip, rflags and the non-zero others."""
    rax: int = 0
    rbx: int = 0
    rcx: int = 0
    rdx: int = 0
    rsi: int = 0
    rdi: int = 0
    rsp: int = 0
    rbp: int = 0
    r8: int = 0
    r9: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0
    rip: int = 0
    rflags: int = 0x2

    def __repr__(self) -> str:
        shown = [f"rip={self.rip:#x}", f"rflags={self.rflags:#x}"]
        shown += [f"{n}={getattr(self, n):#x}" for n in structs.REGISTER_NAMES[:16] if getattr(self, n)]
        return f"Registers({', '.join(shown)})"

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        for name in structs.REGISTER_NAMES:
            value = getattr(self, name)
            if value.__class__ is not int or not 0 <= value <= _U64:
                raise RegisterError(f"register {name}={value!r} is not a 64-bit unsigned integer")
        if not self.rflags & 0x2:
            raise RegisterError(f"rflags={self.rflags:#x} has bit 1 clear: that bit is reserved and always 1 "
                                "on x86 (use 0x2 for 'no flags set')")

    @classmethod
    def _from(cls, raw: structs.kvm_regs) -> "Registers":
        return cls(*(getattr(raw, n) for n in structs.REGISTER_NAMES))

    def _to(self) -> structs.kvm_regs:
        return structs.kvm_regs(*(getattr(self, n) for n in structs.REGISTER_NAMES))


class Segment(NamedTuple):
    """A segment register with its hidden part (base, limit, attributes)."""
    selector: int = 0
    base: int = 0
    limit: int = 0xFFFF
    type: int = 3
    present: int = 1
    dpl: int = 0
    db: int = 0
    s: int = 1
    l: int = 0  # noqa: E741 (the kernel's name)
    g: int = 0
    avl: int = 0
    unusable: int = 0

    def __repr__(self) -> str:
        attrs = "".join(f" {n}" for n in ("db", "l", "g") if getattr(self, n))
        return f"Segment(sel={self.selector:#x} base={self.base:#x} limit={self.limit:#x} type={self.type}{attrs})"


class DescriptorTable(NamedTuple):
    base: int = 0
    limit: int = 0

    def __repr__(self) -> str:
        return f"DescriptorTable(base={self.base:#x}, limit={self.limit:#x})"


_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
_SEG_FIELDS = Segment._fields


@dataclass
class SpecialRegisters:
    """Segments, descriptor tables, control registers and EFER: the state that says which mode
    the CPU is in (real, protected, long) and where its page tables are."""
    cs: Segment
    ds: Segment
    es: Segment
    fs: Segment
    gs: Segment
    ss: Segment
    tr: Segment
    ldt: Segment
    gdt: DescriptorTable
    idt: DescriptorTable
    cr0: int
    cr2: int
    cr3: int
    cr4: int
    cr8: int
    efer: int
    apic_base: int
    interrupt_bitmap: tuple[int, ...] = (0, 0, 0, 0)

    @property
    def mode(self) -> str:
        """"real" (CR0.PE=0), "protected", or "long" (EFER.LMA=1)."""
        if self.efer & (1 << 10):
            return "long"
        return "protected" if self.cr0 & 1 else "real"

    @property
    def paging(self) -> bool:
        return bool(self.cr0 & (1 << 31))

    def __repr__(self) -> str:
        return (f"SpecialRegisters(mode={self.mode}, cs={self.cs!r}, cr0={self.cr0:#x}, cr3={self.cr3:#x}, "
                f"cr4={self.cr4:#x}, efer={self.efer:#x})")

    @classmethod
    def _from(cls, raw: structs.kvm_sregs) -> "SpecialRegisters":
        # One struct.unpack of the 312 bytes is ~10x faster than ~130 ctypes attribute reads.
        v = _SREGS.unpack(bytes(raw))
        segs = {}
        for i, name in enumerate(_SEGMENTS):
            k = i * 13
            segs[name] = _new_tuple(Segment, (v[k + 2], v[k], v[k + 1], *v[k + 3:k + 12]))
        d = 8 * 13
        return cls(**segs, gdt=DescriptorTable(v[d], v[d + 1]), idt=DescriptorTable(v[d + 2], v[d + 3]),
                   cr0=v[d + 4], cr2=v[d + 5], cr3=v[d + 6], cr4=v[d + 7], cr8=v[d + 8], efer=v[d + 9],
                   apic_base=v[d + 10], interrupt_bitmap=tuple(v[d + 11:d + 15]))

    def _to(self) -> structs.kvm_sregs:
        values = []
        for n in _SEGMENTS:
            seg = getattr(self, n)
            if not isinstance(seg, Segment):
                raise RegisterError(f"{n} must be a Segment, not {type(seg).__name__}")
            values += (seg.base, seg.limit, seg.selector, *seg[3:], 0)
        for n in ("gdt", "idt"):
            base, limit = getattr(self, n)
            values += (base, limit)
        for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base"):
            value = getattr(self, n)
            if not isinstance(value, int) or not 0 <= value <= _U64:
                raise RegisterError(f"{n}={value!r} is not a 64-bit unsigned integer")
            values.append(value)
        values += tuple(self.interrupt_bitmap)
        try:
            return structs.kvm_sregs.from_buffer_copy(_SREGS.pack(*values))
        except struct.error as exc:
            raise RegisterError(f"a special register value does not fit its field: {exc}") from None


# struct kvm_sregs as one struct format: 8 x kvm_segment (base, limit, selector, 9 attribute bytes,
# padding), 2 x kvm_dtable, 7 registers, the interrupt bitmap. The unit tests check it against ctypes.
_SREGS = struct.Struct("<" + "QIH10B" * 8 + "QH6x" * 2 + "7Q" + "4Q")
_new_tuple = tuple.__new__


class Translation(NamedTuple):
    """KVM_TRANSLATE: what the guest's page tables make of one linear (virtual) address."""
    linear: int
    physical: int
    valid: bool
    writeable: bool
    usermode: bool

    def __repr__(self) -> str:
        if not self.valid:
            return f"Translation({self.linear:#x} -> not mapped)"
        rw = "rw" if self.writeable else "ro"
        who = "user" if self.usermode else "kernel"
        return f"Translation({self.linear:#x} -> {self.physical:#x}, {rw}, {who})"


_SREGS_HINT = ("KVM refused these special registers: paging (CR0.PG) needs protected mode (CR0.PE); "
               "long mode needs CR4.PAE and EFER.LME with CR0.PG; a 64-bit code segment (L=1) cannot "
               "also have D/B=1")


class Vcpu(Owner):
    """A vCPU fd and its kvm_run mapping (from :meth:`labhelper.kvm.vm.Vm.create_vcpu`)."""

    what = "vCPU"
    close_order = VCPU

    def __init__(self, vm, fd: int, index: int, mmap_size: int):
        self.adopt(fd)
        self.vm = vm
        self.index = index
        # The kvm_run page (and, after it, the page where I/O data lands): MAP_SHARED with the
        # kernel. Python < 3.13 keeps a dup() of the fd inside the mmap object (close-on-exec,
        # closed with it); 3.13 lets us say trackfd=False.
        kwargs = {"trackfd": False} if sys.version_info >= (3, 13) else {}
        try:
            self._run = mmap.mmap(fd, mmap_size, flags=mmap.MAP_SHARED,
                                  prot=mmap.PROT_READ | mmap.PROT_WRITE, **kwargs)
        except OSError as exc:
            self.release()
            raise syscalls.error("mmap", {"addr": Shown("NULL"), "length": mmap_size,
                                          "prot": Shown("PROT_READ|PROT_WRITE"), "flags": Shown("MAP_SHARED"),
                                          "fd": fd, "offset": 0},
                                 exc.errno or 0, hint="the vCPU's kvm_run page could not be mapped") from None
        except BaseException:
            self.release()
            raise
        self.exits = 0                     # KVM_RUN calls that came back with a guest exit
        self.interruptions = 0             # KVM_RUN calls a signal cut short (EINTR): not exits

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        extra = f", {self.interruptions} interruptions" if self.interruptions else ""
        return f"Vcpu({self.index}, {state}, {self.exits} exits{extra})"

    # --- registers -------------------------------------------------------------------------------

    def regs(self) -> Registers:
        raw = structs.kvm_regs()
        _ioctl(self.fd, ioctls.KVM_GET_REGS, raw, name="KVM_GET_REGS")
        return Registers._from(raw)

    def set_regs(self, regs: Registers | None = None, **changes: int) -> Registers:
        """Set all registers from ``regs`` (default: the current ones) with ``changes`` applied."""
        unknown = set(changes) - set(structs.REGISTER_NAMES)
        if unknown:
            raise RegisterError(f"no such register: {', '.join(sorted(unknown))}",
                                hint=f"registers: {', '.join(structs.REGISTER_NAMES)}")
        regs = dataclasses.replace(regs if regs is not None else self.regs(), **changes)
        regs.validate()
        _ioctl(self.fd, ioctls.KVM_SET_REGS, regs._to(), name="KVM_SET_REGS")
        return regs

    def sregs(self) -> SpecialRegisters:
        raw = structs.kvm_sregs()
        _ioctl(self.fd, ioctls.KVM_GET_SREGS, raw, name="KVM_GET_SREGS")
        return SpecialRegisters._from(raw)

    def set_sregs(self, sregs: SpecialRegisters) -> None:
        raw = sregs._to()
        try:
            _ioctl(self.fd, ioctls.KVM_SET_SREGS, raw, name="KVM_SET_SREGS")
        except SyscallError as exc:
            if exc.errno == errno.EINVAL:
                raise syscalls.error(exc.call, exc.arguments, exc.errno, hint=_SREGS_HINT) from None
            raise

    def translate(self, linear: int) -> Translation:
        raw = structs.kvm_translation(linear_address=linear)
        _ioctl(self.fd, ioctls.KVM_TRANSLATE, raw, name="KVM_TRANSLATE")
        return Translation(linear, raw.physical_address, bool(raw.valid), bool(raw.writeable),
                           bool(raw.usermode))

    def set_cpuid(self, entries) -> None:
        """KVM_SET_CPUID2: what the guest's CPUID instruction answers (a VMM decides it; see
        :mod:`.cpuid`, which builds the structure)."""
        _ioctl(self.fd, ioctls.KVM_SET_CPUID2, cpuid.kvm_cpuid2(entries), name="KVM_SET_CPUID2")

    # --- running -----------------------------------------------------------------------------------

    def run(self):
        """KVM_RUN once: run the guest until its next exit, and return that exit, typed.

        Guest trouble (a triple fault, a refused entry) comes back as an exit value
        (Shutdown, FailEntry, InternalError), not as an exception. A signal gives Interrupted()
        -- unless it was SIGINT, which raises KeyboardInterrupt as usual.
        """
        # The hot path: one call per exit, so as little Python as possible between two KVM_RUNs
        # (syscalls.ioctl_noarg is the shortest way to the system call); errors are sorted out
        # only when it fails.
        try:
            _ioctl_noarg(self._fd, _KVM_RUN)
        except (OSError, ValueError) as exc:
            return self._run_failed(exc)
        self.exits += 1
        return _decode(self._run)

    def _run_failed(self, exc: Exception):
        if isinstance(exc, OSError) and exc.errno == _EINTR:
            # A signal (the watchdog's kick, or immediate_exit). A signal whose handler raises
            # does not come this way: Python runs the handlers before it builds this OSError (see
            # syscalls.ioctl_noarg; on 3.14's ctypes path, at the next bytecode), so a notebook
            # interrupt comes out of KVM_RUN as KeyboardInterrupt and propagates.
            self.interruptions += 1
            return _INTERRUPTED
        if (isinstance(exc, OSError) and exc.errno is None) or (isinstance(exc, ValueError) and self._fd >= 0):
            raise exc               # not the kernel's answer: e.g. a signal handler's TimeoutError
        if self._fd < 0:
            raise LabError("this vCPU is closed",
                           hint="create a new Machine (each `with` block closes its VM at the end)") from None
        raise syscalls.error("ioctl", {"fd": self._fd, "request": "KVM_RUN"},
                             getattr(exc, "errno", 0) or 0) from None

    def complete_io_in(self, data: bytes) -> None:
        """Answer the last IoIn exit: the guest's ``in`` gets ``data`` when it resumes.

        ``data`` must be exactly size x count bytes (count > 1 for ``rep insb``): the kernel copies
        that many bytes into the guest at the next KVM_RUN, whatever we wrote.
        """
        data = bytes(data)
        _direction, size, _port, count, offset = IO.unpack_from(self._run, _OFF_UNION)
        if len(data) != size * count:
            raise Refused(f"the guest's `in` reads {size * count} bytes ({count} x {size}); "
                          f"got {len(data)}")
        self._run[offset:offset + len(data)] = data

    def complete_mmio_read(self, data: bytes) -> None:
        """Answer the last MmioRead exit (at most 8 bytes)."""
        data = bytes(data)
        if len(data) > 8:
            raise Refused("an MMIO read carries at most 8 bytes")
        self._run[_OFF_MMIO_DATA:_OFF_MMIO_DATA + len(data)] = data

    def set_immediate_exit(self, on: bool = True) -> None:
        """With immediate_exit=1, KVM_RUN returns EINTR at once instead of entering the guest."""
        self._run[_OFF_IMMEDIATE_EXIT] = 1 if on else 0

    def run_page(self) -> bytes:
        """A copy of the kvm_run structure (for teaching, and for exits.decode in tests)."""
        return self._run[:structs.ctypes.sizeof(structs.kvm_run)]

    # --- teardown -------------------------------------------------------------------------------

    def close(self) -> None:
        run = getattr(self, "_run", None)
        if run is not None and not run.closed:
            run.close()         # the mapping also holds a reference to the vCPU: drop it first
        self.release()

    drop_in_child = close       # in a child, closing the copies is all there is to do

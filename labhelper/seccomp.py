"""seccomp: a filter the kernel runs on every system call a process makes (seccomp(2)).

The filter is a small program in **classic BPF**, the packet filter language of tcpdump, run on
a ``struct seccomp_data`` instead of a packet::

    offset 0   int   nr        the system call's number
    offset 4   u32   arch      AUDIT_ARCH_X86_64...: numbers mean different calls per architecture
    offset 8   u64   ip        where the call was made
    offset 16  u64   args[6]   its arguments

Each instruction is 8 bytes (``struct sock_filter``: code, jt, jf, k): load a word, compare it
and jump forward, or return a verdict (allow; fail with an errno; kill). Jumps go forward only,
so every filter ends: the kernel checks that before it accepts one. Once attached, a filter can
never be removed, only more added, and it passes to every child and across execve.

Docker attaches one to every container: its default profile refuses the calls that reach the
kernel as a whole (mount, module loading, kexec, the keyring, ptrace, bpf...), with EPERM, while
the program keeps running. :data:`DENIED` is that list; :func:`program` builds the filter,
:func:`disassemble` shows it as text, and :func:`attach` installs it (in a forked child: it is
for ever).
"""
from __future__ import annotations

import errno as _errno
import functools
import platform
import struct
from dataclasses import dataclass

from . import procfs, syscalls
from .errors import Refused
from .flags import Prctl

__all__ = ["DENIED", "NUMBERS", "AUDIT_ARCH", "Insn", "program", "encode", "disassemble", "attach", "mode",
           "default_program"]

# The calls Docker's default profile refuses to a container that was given no extra capability
# (moby profiles/seccomp/default.json, which allows a list and refuses the rest: these are the
# dangerous ones among the rest). Legacy calls that an architecture lacks are skipped for it.
DENIED = (
    # filesystems and mounts: a new view of the files, or a way around the one given
    "mount", "umount2", "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick", "open_tree", "move_mount",
    "mount_setattr", "name_to_handle_at", "open_by_handle_at", "quotactl", "quotactl_fd", "swapon", "swapoff",
    # namespaces: leaving the ones given ("clone" with a CLONE_NEW* flag is refused below)
    "unshare", "setns",
    # the kernel itself: modules, kexec, reboot, the kernel log, accounting, BPF, perf
    "init_module", "finit_module", "delete_module", "create_module", "query_module", "get_kernel_syms",
    "kexec_load", "kexec_file_load", "reboot", "syslog", "acct", "bpf", "perf_event_open", "lookup_dcookie",
    "nfsservctl", "_sysctl", "sysfs", "uselib", "ustat", "vhangup",
    # the clock every process shares
    "settimeofday", "clock_settime", "clock_adjtime",
    # other processes' memory, and the kernel keyring (not namespaced)
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "add_key", "request_key", "keyctl",
    # hardware and memory placement
    "ioperm", "iopl", "mbind", "set_mempolicy", "get_mempolicy", "move_pages", "userfaultfd",
    # io_uring: a second way into many of the calls above, which a filter cannot see
    "io_uring_setup", "io_uring_enter", "io_uring_register",
)

# Numbers of those calls (arch/x86/entry/syscalls/syscall_64.tbl; include/uapi/asm-generic/unistd.h
# for aarch64, which lacks the legacy ones), and of clone and clone3, handled apart.
NUMBERS = {
    "x86_64": {
        "acct": 163, "add_key": 248, "bpf": 321, "clock_adjtime": 305, "clock_settime": 227, "create_module": 174,
        "delete_module": 176, "finit_module": 313, "init_module": 175, "ioperm": 173, "iopl": 172, "kcmp": 312,
        "kexec_file_load": 320, "kexec_load": 246, "keyctl": 250, "lookup_dcookie": 212, "mount": 165,
        "move_pages": 279, "name_to_handle_at": 303, "open_by_handle_at": 304, "perf_event_open": 298,
        "pivot_root": 155, "process_vm_readv": 310, "process_vm_writev": 311, "ptrace": 101, "quotactl": 179,
        "quotactl_fd": 443, "reboot": 169, "request_key": 249, "setns": 308, "settimeofday": 164, "swapon": 167,
        "swapoff": 168, "sysfs": 139, "umount2": 166, "unshare": 272, "uselib": 134, "userfaultfd": 323,
        "ustat": 136, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "open_tree": 428,
        "move_mount": 429, "mount_setattr": 442, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "get_mempolicy": 239, "set_mempolicy": 238, "mbind": 237, "vhangup": 153,
        "nfsservctl": 180, "query_module": 178, "get_kernel_syms": 177, "_sysctl": 156, "syslog": 103,
        "clone": 56, "clone3": 435,
    },
    "aarch64": {
        "acct": 89, "add_key": 217, "bpf": 280, "clock_adjtime": 266, "clock_settime": 112, "delete_module": 106,
        "finit_module": 273, "init_module": 105, "kcmp": 272, "kexec_file_load": 294, "kexec_load": 104,
        "keyctl": 219, "lookup_dcookie": 18, "mount": 40, "move_pages": 239, "name_to_handle_at": 264,
        "open_by_handle_at": 265, "perf_event_open": 241, "pivot_root": 41, "process_vm_readv": 270,
        "process_vm_writev": 271, "ptrace": 117, "quotactl": 60, "quotactl_fd": 443, "reboot": 142,
        "request_key": 218, "setns": 268, "settimeofday": 170, "swapon": 224, "swapoff": 225, "umount2": 39,
        "unshare": 97, "userfaultfd": 282, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "open_tree": 428, "move_mount": 429, "mount_setattr": 442, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "get_mempolicy": 236, "set_mempolicy": 237, "mbind": 235, "vhangup": 58,
        "nfsservctl": 42, "syslog": 116, "clone": 220, "clone3": 435,
    },
}
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}      # include/uapi/linux/audit.h

# clone(2) flags that make namespaces (Docker refuses exactly these, and lets threads and fork
# through). CLONE_NEWTIME is left out: in clone(2) its bit is part of the exit signal.
CLONE_NAMESPACES = 0x7E020000
X32_BIT = 0x40000000          # x86_64: the x32 ABI's calls carry this bit: refused as a whole

# Classic BPF opcodes (include/uapi/linux/bpf_common.h) and seccomp verdicts (linux/seccomp.h).
LD_W_ABS = 0x20                # A = *(u32 *)(data + k)
JEQ, JGE, JSET = 0x15, 0x35, 0x45      # if A == k / A >= k / A & k: skip jt instructions, else jf
RET = 0x06                     # return k
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000         # | errno: the call fails with that errno, the program goes on
RET_ALLOW = 0x7FFF0000


@dataclass(frozen=True)
class Insn:
    """One classic BPF instruction (struct sock_filter). ``comment`` is for people only."""
    code: int
    jt: int = 0
    jf: int = 0
    k: int = 0
    comment: str = ""

    def __repr__(self) -> str:
        return _text(self)


def program(denied=DENIED, machine: str | None = None, errno: int = _errno.EPERM) -> list[Insn]:
    """The filter: kill a call made for another architecture, refuse the ``denied`` calls (and
    clone with a namespace flag) with ``errno``, answer clone3 with ENOSYS (its flags live in
    memory, where a filter cannot look: libc then falls back to clone, whose flags it can), and
    allow the rest. Names unknown to ``machine`` are skipped (legacy calls aarch64 never had)."""
    machine = machine or platform.machine()
    if machine not in NUMBERS:
        raise Refused(f"no system call numbers for {machine!r} here (known: {', '.join(NUMBERS)})")
    table = NUMBERS[machine]
    unknown = [name for name in denied if name not in NUMBERS["x86_64"] and name not in NUMBERS["aarch64"]]
    if unknown:
        raise Refused(f"unknown system calls {unknown}: seccomp.NUMBERS has no number for them")
    numbers = sorted({table[name] for name in denied if name in table})
    # Labels stand for instructions placed at the end; jumps are resolved once all are placed.
    body: list[tuple] = [
        (LD_W_ABS, None, None, 4, "A = arch"),
        (JEQ, 1, 0, AUDIT_ARCH[machine], f"arch is {machine}?"),
        (RET, None, None, RET_KILL_PROCESS, "no: another ABI's numbers mean other calls: kill"),
        (LD_W_ABS, None, None, 0, "A = system call number"),
    ]
    if machine == "x86_64":
        body.append((JGE, "deny", 0, X32_BIT, "an x32 call?"))
    body.append((JEQ, "clone", 0, table["clone"], "clone: look at its flags"))
    body.append((JEQ, "enosys", 0, table["clone3"], "clone3"))
    names = {table[name]: name for name in denied if name in table}
    for nr in numbers:
        body.append((JEQ, "deny", 0, nr, names[nr]))
    body.append((RET, None, None, RET_ALLOW, "everything else: allow"))
    labels = {"clone": len(body)}
    body.append((LD_W_ABS, None, None, 16, "A = args[0], low half (clone's flags)"))
    body.append((JSET, "deny", 0, CLONE_NAMESPACES, "a CLONE_NEW* flag?"))
    body.append((RET, None, None, RET_ALLOW, "a plain fork or thread: allow"))
    labels["deny"] = len(body)
    body.append((RET, None, None, RET_ERRNO | errno, f"refuse: {_errno.errorcode.get(errno, errno)}"))
    labels["enosys"] = len(body)
    body.append((RET, None, None, RET_ERRNO | _errno.ENOSYS, "ENOSYS: use clone"))
    out = []
    for i, (code, jt, jf, k, comment) in enumerate(body):
        jt = labels[jt] - i - 1 if isinstance(jt, str) else (jt or 0)
        jf = labels[jf] - i - 1 if isinstance(jf, str) else (jf or 0)
        if not (0 <= jt <= 255 and 0 <= jf <= 255):
            raise Refused(f"the filter is too long for classic BPF's 8-bit jumps ({len(body)} instructions)")
        out.append(Insn(code, jt, jf, k, comment))
    return out


def encode(insns: list[Insn]) -> bytes:
    """The bytes the kernel takes: struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; } each."""
    return b"".join(struct.pack("=HBBI", i.code, i.jt, i.jf, i.k) for i in insns)


def _text(i: Insn) -> str:
    if i.code == LD_W_ABS:
        op = f"ld  [{i.k}]"
    elif i.code in (JEQ, JGE, JSET):
        name = {JEQ: "jeq", JGE: "jge", JSET: "jset"}[i.code]
        op = f"{name} {i.k:#x}, +{i.jt}, +{i.jf}"
    elif i.code == RET:
        verdict = {RET_ALLOW: "ALLOW", RET_KILL_PROCESS: "KILL_PROCESS"}.get(i.k)
        if verdict is None and i.k & 0xFFFF0000 == RET_ERRNO:
            verdict = f"ERRNO({_errno.errorcode.get(i.k & 0xFFFF, i.k & 0xFFFF)})"
        op = f"ret {verdict or hex(i.k)}"
    else:
        op = f"op {i.code:#x} {i.jt} {i.jf} {i.k:#x}"
    return f"{op:32} ; {i.comment}" if i.comment else op


def disassemble(insns: list[Insn]) -> str:
    """The filter as numbered lines of text, like ``seccomp-tools dump`` or ``bpf_dbg``."""
    return "\n".join(f"{n:3}: {_text(i)}" for n, i in enumerate(insns))


@functools.cache
def default_program() -> bytes:
    """The default filter, encoded: the same for every container, so built once per process. A
    runtime calls it before it forks, and every container's init inherits it ready to attach."""
    return encode(program())


def attach(insns: list[Insn] | None = None) -> None:
    """Set no_new_privs and attach the filter (default: :func:`program`) to this process, for
    ever: call it in a forked child (a container's init, just before execve), never in a
    notebook kernel."""
    syscalls.prctl(Prctl.PR_SET_NO_NEW_PRIVS, 1)
    syscalls.seccomp_filter(encode(insns) if insns is not None else default_program())


def mode(pid: int | str = "self", proc: str = "/proc") -> int:
    """The process's seccomp mode from /proc/PID/status: 0 none, 1 strict, 2 filter."""
    return int(procfs.status(pid, proc).get("Seccomp", "0"))

"""Chapter 02 exercises: write guests, count their exits, make a console faster.

The checks of q1 and q3 assemble the learner's guest and run it on /dev/kvm (with a time limit).
What can be judged without a VM is judged anywhere (the answer's type, the assembler's errors); where
the guest would have to run and /dev/kvm (or binutils, or an x86 CPU) is missing, the check answers
cannot_check(...): "cannot check here", never "wrong".
"""
from __future__ import annotations

import random
import re

from .. import kvm
from ..kvm import guests
from ..errors import RequirementError
from . import Exercise, cannot_check, right, wrong

__all__ = ["q1", "q2", "q3", "COUNT_ME", "FAST_MESSAGE"]

_LIMITS = {"timeout": 2.0, "max_exits": 20_000, "check": False}


def _run_guest(source, prepare=None):
    """Assemble and run a learner's real-mode guest.

    Returns (RunResult, None, refused) or (None, CheckResult, []); ``refused`` lists the buffers the
    paravirtual console refused to read (their messages say why)."""
    if not isinstance(source, str):
        return None, wrong(f"the answer is the guest's assembly source, as a string, not {type(source).__name__}."), []
    try:
        program = guests.assemble(source, mode="real", name="your guest")
    except guests.AssemblerError as exc:
        return None, wrong(f"the assembler refused your guest: {exc.message}"), []
    except RequirementError as exc:              # no GNU binutils here
        return None, cannot_check(f"{exc.message}; compare your code with the solution instead."), []
    ok, why = kvm.available()
    if not ok:
        return None, cannot_check(f"this check runs your guest in a real VM, and /dev/kvm is not usable here "
                                  f"({why}). Compare your code with the solution instead."), []
    try:
        with kvm.Machine(program) as m:
            if prepare:
                prepare(m)
            result = m.run(**_LIMITS)
            pv = next((d for d in m.devices if getattr(d, "name", "") == "pv-console"), None)
            return result, None, list(getattr(pv, "refused", []))
    except kvm.MemoryError_ as exc:
        return None, wrong(f"your guest does not fit: {exc.message}"), []
    except RequirementError as exc:              # e.g. not an x86 machine
        return None, cannot_check(f"{exc.message}. Compare your code with the solution instead."), []


def _has_hlt(source: str) -> bool:
    """Whether the source has a `hlt` instruction (outside comments)."""
    return any(re.search(r"(^|[\s:;])hlt\b", line.split("#")[0].split("//")[0], re.IGNORECASE)
               for line in source.splitlines())


def _stopped_badly(result, source: str = ""):
    if result.stopped == "hlt":
        return None
    if result.stopped == "timeout":
        return wrong("your guest was still running after 2 seconds: does it end with `hlt`? (a loop that "
                     "never ends, or code that runs on into data, does this)")
    if result.stopped == "exit limit":
        return wrong("your guest made more than 20000 exits without halting: is there an endless loop around an `out`?")
    if not _has_hlt(source):
        return wrong(f"your guest has no `hlt`, so after its last instruction the vCPU ran on into whatever bytes "
                     f"follow the program in memory (zeros, data), executing them as code, until it reached "
                     f"something it could not run ({result.last.describe()}). A guest program must end with "
                     f"`hlt`: it is how the guest says it is done, and the VMM sees it as the last exit.")
    return wrong(f"your guest crashed the vCPU before it reached `hlt` ({result.last.describe()}): it ran "
                 f"an instruction the vCPU could not carry out. Check that every jump lands on code, and that "
                 f"data is never run as code.")


# --- q1: add two numbers ------------------------------------------------------------------------

def _check_add(source) -> object:
    rng = random.Random()
    cases = [(1234, 4321), (rng.randrange(0, 30000), rng.randrange(0, 30000))]
    for a, b in cases:
        def put(m, a=a, b=b):
            m.write(0x600, a.to_bytes(2, "little") + b.to_bytes(2, "little"))
        result, problem, _ = _run_guest(source, put)
        if problem is not None:
            return problem
        bad = _stopped_badly(result, source)
        if bad is not None:
            return bad
        if not result.reports:
            return wrong("your guest halted without reporting anything on port 0x10: use `out 0x10, ax`.")
        if result.reports[-1] != (a + b) & 0xFFFF:
            return wrong(f"your guest reported {result.reports[-1]}, which is not the sum of the two numbers the "
                         "check put at 0x600 and 0x602 (it tries more than one pair: read them from memory, "
                         "do not write the numbers into the code).")
    return right(f"your guest read memory, added, and reported through a port: {result.exits} exits "
                 f"({', '.join(f'{k} {v}' for k, v in result.counts.items())}).")


q1 = Exercise(
    "02.1",
    "Write a real-mode guest that adds the two 16-bit numbers stored at guest addresses 0x600 and 0x602, "
    "reports the sum with `out 0x10, ax`, then halts. Answer with its assembly source (a string).",
    _check_add,
    "Three instructions do the work: load the first word into ax (`mov ax, word ptr [0x600]`), add the "
    "second (`add ax, ...`), then `out 0x10, ax`. Do not forget `hlt`. Segments are 0, so guest "
    "addresses are the numbers you write.",
    "```\n    mov ax, word ptr [0x600]\n    add ax, word ptr [0x602]\n    out 0x10, ax\n    hlt\n```\n"
    "It is `guests.ADD_TWO`: `ch02.q1.check(guests.ADD_TWO)`. Two exits: one `out`, one `hlt`.",
)


# --- q2: count the exits ------------------------------------------------------------------------

COUNT_ME = f"""\
    mov dx, {guests.SERIAL_PORT:#x}
    mov al, 'o'
    out dx, al
    mov al, 'k'
    out dx, al
    mov cx, 3
again:
    mov byte ptr [0x700], cl      # a store to guest memory
    out {guests.REPORT_PORT:#x}, al
    loop again
    mov eax, 0
    cpuid                         # who are you?
    mov ax, {guests.MMIO_BASE >> 4:#x}
    mov es, ax
    mov byte ptr es:[0], 'A'      # a store to the MMIO UART
    hlt
"""
COUNT_ME_EXITS = 7   # tests/system/test_kvm_exercises_ch02.py runs COUNT_ME and checks this number


def _check_count(answer) -> object:
    if isinstance(answer, bool) or not isinstance(answer, int):
        return wrong(f"the answer is a whole number of exits, not {type(answer).__name__}.")
    if answer == COUNT_ME_EXITS:
        return right("2 serial bytes, 3 reports in the loop, 1 MMIO store and the hlt. The store to memory "
                     "and cpuid never reach us: memory is the guest's own, and KVM answers cpuid in the kernel.")
    if answer > COUNT_ME_EXITS:
        return wrong("too many. Not every instruction leaves the guest: which of them touch a device (a port, "
                     "an address with no memory behind it) or stop the vCPU? KVM answers some instructions "
                     "itself, in the kernel.")
    return wrong("too few. Count every `out` each time it runs (the loop runs several times), every access "
                 "to an address with no memory behind it, and the final hlt.")


q2 = Exercise(
    "02.2",
    "How many VM exits reach our VMM when `ch02.COUNT_ME` runs? Answer with a number (work it out from "
    "the listing first; then check it with a Machine).",
    _check_count,
    "An exit reaches user space for: port I/O (`out`, `in`), loads/stores to addresses without memory "
    "(MMIO, here 0xd0000 through es), and `hlt`. Memory stores run at full speed; `cpuid` is handled by "
    "KVM inside the kernel. `loop` repeats cx times.",
    f"{COUNT_ME_EXITS} exits: the two `out` to the serial port, the three `out 0x10` of the loop, the store to "
    "the MMIO UART, and the `hlt`. The store to guest memory and `cpuid` never reach the VMM. Count them for real: "
    "`with kvm.Machine(ch02.COUNT_ME) as m: r = m.run()`, then `ch02.q2.check(r.exits)`; `r.counts` shows which "
    "kinds.",
)


# --- q3: make the console faster ------------------------------------------------------------------

FAST_MESSAGE = "Paravirtualization: the guest and the host agree on a shortcut.\n"


def _check_fast(source) -> object:
    result, problem, refused = _run_guest(source)
    if problem is not None:
        return problem
    bad = _stopped_badly(result, source)
    if bad is not None:
        return bad
    want = FAST_MESSAGE.encode()
    if refused and not result.output:
        return wrong(f"the console printed nothing because it refused your buffer ({refused[0]}). The VMM does "
                     f"not trust the guest: it reads the buffer only if the address at {guests.MAILBOX:#x} and "
                     f"the length at {guests.MAILBOX + 2:#x} describe bytes that lie inside guest memory. Put "
                     f"your message's own address and length in the mailbox.")
    if result.output != want:
        return wrong(f"the console shows {result.output[:80]!r}, not ch02.FAST_MESSAGE.")
    if result.exits > 2:
        return wrong(f"the message is right but it took {result.exits} exits "
                     f"({', '.join(f'{k} {v}' for k, v in result.counts.items())}); at most 2 are allowed "
                     "(the doorbell and the hlt).")
    return right(f"{len(want)} bytes in {result.exits} exits, where the serial port needs {len(want) + 1}.")


q3 = Exercise(
    "02.3",
    "Make the console faster: write a real-mode guest that prints `ch02.FAST_MESSAGE` with at most 2 VM "
    "exits in all (hlt included). Answer with its assembly source.",
    _check_fast,
    "The serial port costs one exit per byte. The paravirtual console reads the whole buffer from guest "
    f"memory: write the buffer's address at {guests.MAILBOX:#x} and its length at {guests.MAILBOX + 2:#x} "
    f"(16-bit words), then one `out` to port {guests.DOORBELL_PORT:#x}. `guests.PV_HELLO` shows the pattern.",
    "`ch02.q3.check(guests.pv_source(ch02.FAST_MESSAGE))`: the guest stores `offset message` and "
    "`offset message_end - message` in the mailbox, rings the doorbell once, and halts.",
)

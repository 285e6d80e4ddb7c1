"""Chapter 08 exercises: questions answered by this host's own measurements.

Each check is given what the chapter measured (the notebook passes it along) and judges the
answer against it, so that the right answer is the one this machine showed, not a figure from a
book. Where the measurement could not be made here (no kernel to boot, no /dev/kvm), the check
says so instead of judging.
"""
from __future__ import annotations

import numbers
import os

from .. import container
from ..comparison import Boot, Timing
from ..errors import LabError
from ..syscost import Costs
from . import Exercise, cannot_check, right, wrong

__all__ = ["q1", "q2", "q3", "TOLERANCE"]

TOLERANCE = 1.5         # a ratio read off a plot is right within a factor of 1.5 either way


def _number(answer) -> float | None:
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real) or answer != answer or answer <= 0:
        return None
    return float(answer)


def _judge_ratio(answer: float, measured: float, what: str) -> object:
    if answer > measured * TOLERANCE:
        return wrong(f"too many: that is more than {TOLERANCE:g} times what this host measured for {what}.")
    if answer < measured / TOLERANCE:
        return wrong(f"too few: that is less than 1/{TOLERANCE:g} of what this host measured for {what}.")
    return right(f"{what}: about {measured:.3g} here.")


# --- q1: how many container starts fit in one kernel boot ------------------------------------------

def _check_starts(answer, boot: Boot | None = None, life: Timing | None = None) -> object:
    value = _number(answer)
    if value is None:
        return wrong("answer with a number: how many containers start, one after the other, while one kernel boots.")
    if boot is None or life is None:
        return cannot_check("no kernel was booted on this host (see the chapter's boot cell): there is nothing to "
                            "compare with. In the lab VM the boot runs.")
    measured = boot.to_init / life.median
    verdict = _judge_ratio(value, measured, "container lives per kernel boot")
    if verdict.ok:
        return right(f"{verdict.message} A container starts no kernel: it is a process the running kernel "
                     f"sets up, while the VM ({boot.accelerator}) had firmware and a whole kernel to start.")
    return verdict


q1 = Exercise(
    "08.1",
    "From this chapter's measurements: how many containers (made, /bin/true run, removed, one after the other) "
    "fit into the time one Linux kernel took here to boot to its init? `ch08.q1.check(n, boot=booted, "
    "life=life)`.",
    _check_starts,
    "Divide the boot's time to init (`booted.to_init`, seconds) by one container's life (`life.median`, seconds); "
    f"within a factor of {TOLERANCE:g} is right.",
    "`booted.to_init / life.median`: a container is a few system calls on a kernel that runs already, a VM with a "
    "kernel boots that kernel first (and its firmware before it).",
)


# --- q2: a container's system call against a VM exit -------------------------------------------

def _check_exit_price(answer, costs: Costs | None = None) -> object:
    value = _number(answer)
    if value is None:
        return wrong("answer with a number: how many getpid calls in a container cost as much as one VM exit.")
    keys = {c.key for c in (costs.costs if costs is not None else ())}
    if "container_getpid" not in keys:
        return wrong("pass the chapter's measurement: ch08.q2.check(n, costs=path).")
    if "vm_exit" not in keys:
        return cannot_check("no VM exit was measured here (no usable /dev/kvm): there is nothing to compare with.")
    measured = costs.ratio("vm_exit", "container_getpid")
    verdict = _judge_ratio(value, measured, "container system calls per VM exit")
    if verdict.ok:
        return right(f"{verdict.message} A container's system call goes straight to the host's kernel (its seccomp "
                     "filter runs first); an exit leaves the guest, enters the host kernel, and comes back to a "
                     "process on the host: the VMM.")
    return verdict


q2 = Exercise(
    "08.2",
    "How many getpid system calls made in a container cost as much as one exit of chapter 02's VM to its VMM, on "
    "this host? `ch08.q2.check(n, costs=path)`.",
    _check_exit_price,
    "`path.table()` lists the medians; `path.ratio('vm_exit', 'container_getpid')` divides them. Within a factor "
    f"of {TOLERANCE:g} is right.",
    "`path.ratio('vm_exit', 'container_getpid')`. The exit is dear because it crosses two boundaries twice: guest "
    "to host kernel (the CPU saves and loads a whole VM state), host kernel to the VMM process, and back.",
)


# --- q3: whose kernel ------------------------------------------------------------------------------

def _container_kernel(store) -> str:
    result = container.run("busybox", ["uname", "-r"], store=store, owner="ch08")
    if result.exit_code != 0:
        raise LabError(f"uname in a container failed: {result!r}")
    return result.output.strip()


def _check_kernels(answer, boot: Boot | None = None, store=None, measured: dict | None = None) -> object:
    if not isinstance(answer, dict) or set(answer) != {"container", "vm"} or not all(
            isinstance(v, str) for v in answer.values()):
        return wrong("answer with a dict: {'container': 'what uname -r says in a container', 'vm': 'what it says "
                     "in the booted VM'}.")
    if boot is None and measured is None:
        return cannot_check("no kernel was booted on this host: the VM's side cannot be checked here.")
    seen = measured or {"container": _container_kernel(store), "vm": boot.version}
    off = [side for side in ("container", "vm") if answer[side].strip() != seen[side]]
    if off:
        side = off[0]
        return wrong(f"the {side}'s kernel is not {answer[side]!r}: run `uname -r` there and see "
                     f"({'container.run(...)' if side == 'container' else 'booted.version'}).")
    same = seen["container"] == os.uname().release
    return right("a container reports the host's own kernel" + (" (this very kernel)" if same else "")
                 + "; the VM reports the kernel it booted: its own, separate from the host's.")


q3 = Exercise(
    "08.3",
    "Which kernel answers `uname -r` in a container, and which in the VM this chapter booted? Answer "
    "`{'container': '...', 'vm': '...'}`; `ch08.q3.check(answer, boot=booted, store=store)` runs `uname -r` in a "
    "container and compares.",
    _check_kernels,
    "Run `container.run('busybox', ['uname', '-r'], store=store)` and look at `booted.version`.",
    "`{'container': os.uname().release, 'vm': booted.version}`: every container on a host shares that host's "
    "kernel (one boundary: the system call interface); a VM has a kernel of its own (the boundary is the "
    "hardware's: VT-x or AMD-V, and the VMM's devices).",
)

"""Chapter 00 exercises: reading the doctor's report."""
from __future__ import annotations

from .. import host
from ..teach.chapters import mention
from . import Exercise, right, wrong


def _check_cgroup_mode(answer) -> object:
    actual = host.facts().cgroup.mode
    if not isinstance(answer, str):
        return wrong(f"the answer is a string such as 'v1', 'v2' or 'hybrid', not {type(answer).__name__}.")
    answer = answer.strip().lower()
    if answer not in ("v1", "v2", "hybrid", "none"):
        return wrong("the cgroup mode is one of 'v1', 'v2', 'hybrid' or 'none'.")
    if answer != actual:
        return wrong("that is not what this machine's mountinfo says. Look at the 'cgroups' row of the report.")
    return right(f"this machine runs cgroups in {actual} mode; {mention('05')} shows what that changes.")


q1 = Exercise(
    "00.1",
    "Which cgroup mode does this machine run: 'v1', 'v2' or 'hybrid'? Answer with the string.",
    _check_cgroup_mode,
    "Run `host.facts().cgroup` or read the 'cgroups' row of the doctor's report: cgroup (v1) "
    "mounts and a cgroup2 mount together mean hybrid.",
    "`ch00.q1.check(host.facts().cgroup.mode)`: the lab VM (Ubuntu 24.04) answers 'v2'; a Debian 12 "
    "machine with v1 controllers and an empty cgroup2 mount answers 'hybrid'.",
)


def _check_kvm_flavour(answer) -> object:
    actual = host.facts().kvm.flavour
    if answer not in ("kvm_intel", "kvm_amd", "kvm_pvm", "none"):
        return wrong("the flavour is one of 'kvm_intel', 'kvm_amd', 'kvm_pvm' or 'none'.")
    if answer != actual:
        return wrong("that module is not the one loaded here: look at the folders under /sys/module.")
    return right(f"{actual}: {mention('02')} runs its virtual machine through it.")


q2 = Exercise(
    "00.2",
    "Which KVM module drives /dev/kvm here: 'kvm_intel', 'kvm_amd', 'kvm_pvm' or 'none'?",
    _check_kvm_flavour,
    "A loaded module has a folder in /sys/module: try `os.path.isdir('/sys/module/kvm_intel')`, "
    "or read the 'kvm' row of the report.",
    "`ch00.q2.check(host.facts().kvm.flavour)`.",
)

"""Facts about this machine that decide what the course can do here, and the safety guard.

Every reader takes the root of the tree it reads (``proc``, ``sys``, ``etc``), so unit tests can
point it at a fake tree in a temporary folder. :func:`facts` gathers them all; :func:`require`
turns a missing piece into a :class:`~labhelper.errors.RequirementError` that says what is
missing, which chapter needs it, and what to do.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import platform
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import procfs
from .errors import NotDisposableError, RequirementError
from .procfs import read_text

__all__ = [
    "Hierarchy", "CgroupInfo", "KvmInfo", "Facts", "facts", "require", "ready", "guard",
    "disposable_reason", "cgroup_info", "kvm_info", "DISPOSABLE_MARKER", "NEEDS",
]

DISPOSABLE_MARKER = Path("/etc/labhelper/disposable")


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy: v1 has one per controller (or named), v2 has one for all."""
    mountpoint: str
    version: int                  # 1 or 2
    controllers: tuple[str, ...]  # v1: from the mount options; v2: cgroup.controllers of the root

    def __repr__(self) -> str:
        ctl = ",".join(self.controllers) or "-"
        return f"Hierarchy(v{self.version} {self.mountpoint} [{ctl}])"


@dataclass(frozen=True)
class CgroupInfo:
    """``mode`` is "v2" (only cgroup2, with controllers), "v1" (only v1 hierarchies), "hybrid"
    (v1 controllers plus a cgroup2 hierarchy, usually without controllers) or "none"."""
    mode: str
    hierarchies: tuple[Hierarchy, ...]

    def controllers(self, version: int | None = None) -> tuple[str, ...]:
        found = []
        for h in self.hierarchies:
            if version in (None, h.version):
                found.extend(c for c in h.controllers if not c.startswith("name="))
        return tuple(sorted(set(found)))


@dataclass(frozen=True)
class KvmInfo:
    device: str                # the path probed, normally /dev/kvm
    exists: bool
    openable: bool
    flavour: str               # kvm_intel, kvm_amd, kvm_pvm or none
    cpu_flags: tuple[str, ...]  # vmx / svm / hypervisor, as /proc/cpuinfo lists them
    nested: bool | None        # nested virtualization offered to our own guests (None: unknown)
    error: str | None = None   # why it could not be opened
    errno: int | None = None   # the errno of that failed open (EACCES: not root / not in group kvm)
    machine: str = "x86_64"    # the CPU architecture; the course's guests are x86 code
    hypervisor: str | None = None  # the hypervisor this machine runs under, from DMI, if any

    @property
    def in_vm(self) -> bool:
        """This machine runs under a hypervisor: the CPU says so (x86 CPUID leaf 1, ECX bit 31), or
        the firmware tables (DMI) name one."""
        return "hypervisor" in self.cpu_flags or self.hypervisor is not None


@dataclass(frozen=True)
class Facts:
    root: bool
    disposable: bool
    disposable_why: str
    kernel: str
    kernel_version: tuple[int, int]
    machine: str
    python: str
    cgroup: CgroupInfo
    overlayfs: bool
    user_namespaces: bool
    namespaces: tuple[str, ...]  # the namespace types /proc/self/ns shows
    kvm: KvmInfo
    dot: str | None
    strace: str | None
    nft: str | None = None        # nftables' program: the lab's firewall (chapter 04)
    ping: str | None = None
    extras: dict = field(default_factory=dict, compare=False)
    # Ubuntu 23.10 and later (the lab VM): AppArmor lets an unprivileged process make a user
    # namespace, but takes every capability from it there (kernel.apparmor_restrict_unprivileged_userns)
    userns_restricted: bool = False

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Readers. Each is small and takes its root so that tests can use a fake tree.

def cgroup_info(proc: Path | str = "/proc", fs_root: Path | str = "/",
                table: list[procfs.Mount] | None = None) -> CgroupInfo:
    """Find every mounted cgroup hierarchy from /proc/self/mountinfo and say which mode this is.

    ``fs_root`` is prefixed to the mount points to read cgroup.controllers (for fake trees);
    ``table``: the mounts, when the caller has just read them (a container's start reads once).
    """
    proc, fs_root = Path(proc), Path(fs_root)
    hierarchies = []
    seen = set()
    for m in procfs.mountinfo(proc) if table is None else table:
        if m.fstype not in ("cgroup", "cgroup2") or m.mountpoint in seen:
            continue
        seen.add(m.mountpoint)
        if m.fstype == "cgroup":
            # "36 35 0:31 / /sys/fs/cgroup/memory rw,... - cgroup cgroup rw,memory": the
            # controllers are among the superblock options.
            known = {"rw", "ro", "nosuid", "nodev", "noexec", "relatime", "noatime", "xattr",
                     "clone_children", "cpuset_v2_mode", "noprefix", "favordynmods"}
            ctl = tuple(o for o in m.super_options.split(",") if o not in known and not o.startswith("release_agent"))
            hierarchies.append(Hierarchy(m.mountpoint, 1, ctl))
        else:
            text = read_text(fs_root / m.mountpoint.lstrip("/") / "cgroup.controllers")
            hierarchies.append(Hierarchy(m.mountpoint, 2, tuple(text.split())))
    v1 = [h for h in hierarchies if h.version == 1]
    v2 = [h for h in hierarchies if h.version == 2]
    if v1 and v2:
        mode = "hybrid"
    elif v1:
        mode = "v1"
    elif v2:
        mode = "v2"
    else:
        mode = "none"
    return CgroupInfo(mode, tuple(hierarchies))


def overlayfs_where(proc: Path | str = "/proc", lib_modules: Path | str = "/lib/modules") -> str | None:
    """Where this kernel has overlayfs, or None. In /proc/filesystems once it is registered (built
    in, or its module loaded); before that, a module of this kernel (modules.dep) loads by itself
    at the first overlay mount (the kernel asks modprobe for "fs-overlay")."""
    if "overlay" in read_text(Path(proc) / "filesystems").split():
        return "in /proc/filesystems"
    base = Path(lib_modules) / platform.release()
    for name in ("modules.builtin", "modules.dep"):
        for line in read_text(base / name, limit=None).splitlines():
            # "kernel/fs/overlayfs/overlay.ko.xz: ..." (modules.dep) or ".../overlay.ko" (builtin)
            if re.search(r"(^|/)overlay\.ko(\.\w+)?$", line.split(":", 1)[0]):
                return f"a module of this kernel ({base / name}), loaded at the first mount"
    return None


def _cpu_flags(proc: Path) -> tuple[str, ...]:
    for line in read_text(proc / "cpuinfo").splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return tuple(sorted(flags & {"vmx", "svm", "hypervisor"}))
    return ()


def kvm_info(device: str | None = None, proc: Path | str = "/proc", sys_: Path | str = "/sys") -> KvmInfo:
    """What KVM offers here. ``LABHELPER_KVM_DEVICE`` overrides the device path (tests use it to
    pretend /dev/kvm is absent)."""
    device = device or os.environ.get("LABHELPER_KVM_DEVICE", "/dev/kvm")
    proc, sys_ = Path(proc), Path(sys_)
    modules = sys_ / "module"
    flavour = next((m for m in ("kvm_intel", "kvm_amd", "kvm_pvm") if (modules / m).is_dir()), "none")
    nested = None
    if flavour in ("kvm_intel", "kvm_amd"):
        value = read_text(modules / flavour / "parameters" / "nested").strip()
        nested = value in ("Y", "1") if value else None
    elif flavour == "kvm_pvm":
        nested = False  # PVM runs guests without hardware virtualization: no VMX to pass on
    exists = os.path.exists(device)
    openable, error, err = False, None, None
    if exists:
        try:
            fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            error, err = f"open({device}): {exc.strerror}", exc.errno
        else:
            os.close(fd)
            openable = True
    else:
        error = f"{device} does not exist"
    return KvmInfo(device, exists, openable, flavour, _cpu_flags(proc), nested, error, err,
                   platform.machine(), dmi_hypervisor(sys_))


# DMI (firmware) names of the hypervisors a learner's lab VM may run under, and how to give that
# VM nested virtualization there. /sys/class/dmi/id/* is readable without root.
HYPERVISORS = (
    ("innotek GmbH", "VirtualBox", "VirtualBox 6.1 or later with --nested-hw-virt on (the Vagrantfile sets it); "
                                   "on Windows, turn Hyper-V off"),
    ("VMware", "VMware", "vhv.enable = TRUE (the Vagrantfile sets it); on Windows, turn Hyper-V off"),
    ("QEMU", "QEMU/KVM (libvirt)", "on the host, load kvm_intel/kvm_amd with nested=1; the Vagrantfile asks for "
                                   "cpu_mode host-passthrough"),
    ("Microsoft Corporation", "Hyper-V", "Set-VMProcessor -ExposeVirtualizationExtensions $true (AMD needs Windows 11)"),
    ("Parallels", "Parallels", "enable nested virtualization in the VM's CPU settings (the Vagrantfile does)"),
    ("Amazon EC2", "AWS EC2", "use a *.metal instance, or an instance type with nested virtualization"),
    ("Google", "Google Compute Engine", "create the VM with --enable-nested-virtualization"),
)


def dmi_hypervisor(sys_: Path | str = "/sys") -> str | None:
    """The hypervisor named by the firmware tables, or None (bare metal, or DMI absent)."""
    dmi = Path(sys_) / "class" / "dmi" / "id"
    vendor = " ".join(read_text(dmi / f).strip() for f in ("sys_vendor", "product_name"))
    for key, name, _ in HYPERVISORS:
        if key.lower() in vendor.lower():
            return name
    return None


def _nested_fix(hypervisor: str | None) -> str:
    for _, name, fix in HYPERVISORS:
        if name == hypervisor:
            return fix
    return "enable nested virtualization in the hypervisor that runs this VM (README, troubleshooting)"


def disposable_reason(env: dict | None = None, marker: Path | str | None = None) -> str | None:
    """Why this machine counts as disposable, or None if it does not."""
    env = os.environ if env is None else env
    if env.get("LABHELPER_DISPOSABLE") == "1":
        return "LABHELPER_DISPOSABLE=1 is set"
    marker = DISPOSABLE_MARKER if marker is None else marker   # looked up now: tests replace it
    if Path(marker).is_file():
        return f"{marker} exists"
    return None


def _kernel_version(release: str) -> tuple[int, int]:
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def facts(proc: Path | str = "/proc", sys_: Path | str = "/sys", env: dict | None = None,
          marker: Path | str | None = None) -> Facts:
    """Gather every fact at once (a few ms: it only reads small files)."""
    proc = Path(proc)
    release = platform.release()
    why = disposable_reason(env, marker)
    userns = read_text(proc / "sys" / "user" / "max_user_namespaces", "0").strip()
    try:
        namespaces = tuple(sorted(os.listdir(proc / "self" / "ns")))
    except OSError:
        namespaces = ()
    return Facts(
        root=os.geteuid() == 0,
        disposable=why is not None,
        disposable_why=why or "not declared",
        kernel=release,
        kernel_version=_kernel_version(release),
        machine=platform.machine(),
        python=platform.python_version(),
        cgroup=cgroup_info(proc),
        overlayfs=overlayfs_where(proc) is not None,
        user_namespaces=userns.isdigit() and int(userns) > 0,
        userns_restricted=read_text(proc / "sys" / "kernel" / "apparmor_restrict_unprivileged_userns").strip() == "1",
        namespaces=namespaces,
        kvm=kvm_info(proc=proc, sys_=sys_),
        dot=shutil.which("dot"),
        strace=shutil.which("strace"),
        nft=shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(p)), None),
        ping=shutil.which("ping") or next((p for p in ("/usr/bin/ping", "/bin/ping") if os.path.exists(p)), None),
    )


# ---------------------------------------------------------------------------------------------
# What each chapter needs, and what to do when it is missing.

@dataclass(frozen=True)
class Need:
    """One thing the course may need from this machine. Which chapters need it is said in the
    chapter table (labhelper.teach.chapters), not here."""
    name: str
    what: str
    fix: str
    required: bool  # the course cannot run without it (doctor exits non-zero)


NEEDS: dict[str, Need] = {n.name: n for n in (
    Need("root", "root privileges",
         "run JupyterLab as root inside the lab VM (`vagrant up`), or `sudo make lab`", True),
    Need("disposable", "a machine declared disposable",
         f"inside a throw-away VM: `sudo mkdir -p {DISPOSABLE_MARKER.parent} && sudo touch {DISPOSABLE_MARKER}`"
         " (the lab VM has it), or set LABHELPER_DISPOSABLE=1 for one session", True),
    Need("python", "Python 3.11 or newer", "use the lab VM (Python 3.12) or Debian 12", True),
    Need("namespaces", "the eight namespace types, and setns(2) with a pidfd (Linux 5.8)",
         "use a Linux kernel >= 5.8, built with them (the lab VM has 6.8)", True),
    Need("cgroups", "a mounted cgroup hierarchy with controllers",
         "boot with cgroups mounted (every systemd distribution does)", True),
    Need("overlayfs", "the overlay filesystem", "`modprobe overlay`", True),
    Need("userns", "user namespaces", "`sysctl -w user.max_user_namespaces=10000`", False),
    Need("kvm", "a usable /dev/kvm on x86_64",
         "enable nested virtualization for the lab VM (see README, troubleshooting)", False),
    Need("strace", "the strace program", "`apt-get install strace` (scripts/provision.sh does it)", False),
    Need("dot", "graphviz's dot program", "`apt-get install graphviz` (scripts/provision.sh does it)", False),
    Need("nft", "nftables' nft program (the lab networks' firewall)",
         "`apt-get install nftables` (scripts/provision.sh does it)", False),
    Need("ping", "the ping program", "`apt-get install iputils-ping` (scripts/provision.sh does it)", False),
)}


def _has(name: str, f: Facts) -> tuple[bool, str]:
    """(present?, what was found) for one need."""
    if name == "root":
        return f.root, "euid 0" if f.root else f"euid {os.geteuid()}"
    if name == "disposable":
        return f.disposable, f.disposable_why
    if name == "python":
        return sys.version_info >= (3, 11), f.python
    if name == "namespaces":
        want = {"mnt", "pid", "uts", "ipc", "net", "user", "cgroup", "time"}
        missing = want - set(f.namespaces)
        if missing:
            return False, "missing " + ", ".join(sorted(missing))
        if f.kernel_version < (5, 8):
            return False, f"kernel {f.kernel}: setns(2) takes a pidfd from 5.8 on"
        return True, ", ".join(f.namespaces)
    if name == "cgroups":
        ok = bool(f.cgroup.controllers())
        return ok, f"{f.cgroup.mode}: {', '.join(f.cgroup.controllers()) or 'no controllers'}"
    if name == "overlayfs":
        return f.overlayfs, overlayfs_where() or "not in /proc/filesystems, nor a module of this kernel"
    if name == "userns":
        if not f.user_namespaces:
            return False, "max_user_namespaces is 0"
        return True, ("enabled; AppArmor takes the capabilities of an unprivileged process's user namespaces "
                      "(kernel.apparmor_restrict_unprivileged_userns=1)" if f.userns_restricted else "enabled")
    if name == "kvm":
        k = f.kvm
        if k.machine != "x86_64":
            return False, f"{k.machine}: the course's guests are x86 code"
        return k.openable, f"{k.flavour}, {k.device} openable" if k.openable else (k.error or "absent")
    if name in ("strace", "dot", "nft", "ping"):
        path = getattr(f, name)
        return path is not None, path or "not found"
    raise KeyError(f"unknown requirement {name!r}; known: {', '.join(NEEDS)}")


def fix_for(name: str, f: Facts) -> str:
    """What to do about a missing ``name`` on this machine. For KVM the answer depends on the
    case (not root, no nesting, module not loaded...), so it comes from virtualization_case."""
    if name == "kvm":
        return virtualization_case(f).consequence
    return NEEDS[name].fix


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    found: str
    need: Need


def checks(f: Facts | None = None) -> list[Check]:
    f = f or facts()
    return [Check(n, *_has(n, f), NEEDS[n]) for n in NEEDS]


def ready(*names: str, f: Facts | None = None, quiet: bool = False) -> bool:
    """True if everything named is present; otherwise print what is missing (unless quiet).

    Notebooks use it to skip a live cell with an explanation instead of failing::

        if host.ready("kvm"):
            ...
    """
    f = f or facts()
    missing = [n for n in names if not _has(n, f)[0]]
    if missing and not quiet:
        for n in missing:
            need = NEEDS[n]
            print(f"skipped: this needs {need.what} (found: {_has(n, f)[1]}). To get it: {fix_for(n, f)}")
    return not missing


def require(*names: str, f: Facts | None = None) -> Facts:
    """Raise RequirementError naming everything missing among ``names``, with the fixes."""
    f = f or facts()
    missing = [n for n in names if not _has(n, f)[0]]
    if not missing:
        return f
    lines = [f"{NEEDS[n].what}: found {_has(n, f)[1]}" for n in missing]
    fixes = "; ".join(fix_for(n, f) for n in missing)
    cls = NotDisposableError if missing == ["disposable"] else RequirementError
    return_msg = "this machine lacks what this step needs:\n  - " + "\n  - ".join(lines)
    raise cls(return_msg, hint=fixes, missing=tuple(missing))


def guard(action: str, env: dict | None = None, marker: Path | str | None = None) -> None:
    """The safety guard: refuse a privileged ``action`` unless the machine is disposable.

    labhelper changes kernel state as root (mounts, cgroups, network devices). On a laptop or a
    server that is a risk to its other software, so it acts only where someone declared the
    machine disposable.
    """
    if disposable_reason(env, marker) is None:
        raise NotDisposableError(
            f"refused to {action}: this machine is not declared disposable. labhelper changes kernel "
            "state as root (mounts, cgroups, namespaces, network links); a mistake or a crash could "
            "disturb other software here.",
            hint=f"run the course in the lab VM (`vagrant up`), or, on a throw-away machine, "
                 f"`sudo touch {DISPOSABLE_MARKER}` (after mkdir -p) or set LABHELPER_DISPOSABLE=1",
            missing=("disposable",))


# ---------------------------------------------------------------------------------------------
# Which virtualization case the learner is in (README, troubleshooting).

@dataclass(frozen=True)
class VirtCase:
    case: str         # short key
    summary: str      # one line for the doctor
    consequence: str  # what it means for chapter 02


def virtualization_case(f: Facts | None = None) -> VirtCase:
    """Classify this machine: bare metal or VM, and whether KVM (nested) works inside it.

    The decision uses what exists, not whether *we* could open /dev/kvm: a learner who is not root
    must be told "run as root", not "enable nested virtualization". The CPU's ``hypervisor`` flag
    (or DMI) says "I run in a VM"; ``vmx``/``svm`` say the CPU offers hardware virtualization to us;
    the loaded module says who drives /dev/kvm.
    """
    f = f or facts()
    k = f.kvm
    hw = "vmx" in k.cpu_flags or "svm" in k.cpu_flags
    where = f" under {k.hypervisor}" if k.hypervisor else ""
    if k.machine != "x86_64":
        return VirtCase("not-x86", f"a {k.machine} machine{where}: the course's small guests are x86 code",
                        "chapter 02 explains and skips its live cells; every other chapter runs")
    if k.exists and not k.openable and k.errno in (errno.EACCES, errno.EPERM):
        return VirtCase("kvm-no-permission", f"/dev/kvm exists ({k.flavour}) but this user may not open it",
                        "run the lab as root (the lab VM's JupyterLab does), or add the user to the kvm group")
    if k.flavour == "kvm_pvm" and k.exists:
        return VirtCase("pvm", f"a VM{where} whose KVM is PVM (kvm_pvm): guests run without VT-x/AMD-V, "
                        "paravirtualized by the host kernel",
                        "chapter 02 runs; features that need hardware assist may be refused")
    if k.flavour != "none" and not k.exists:
        return VirtCase("no-device", f"{k.flavour} is loaded but {k.device} does not exist",
                        "chapter 02 explains and skips its live cells; as root: ls -l /dev/kvm, or reboot")
    if k.exists and hw and not k.in_vm:
        return VirtCase("bare-metal", f"bare metal with hardware virtualization ({k.flavour})",
                        "chapter 02 runs in full")
    if k.exists and hw:
        return VirtCase("nested", f"a VM{where} with nested virtualization ({k.flavour}): the lab VM's normal case",
                        "chapter 02 runs in full")
    if k.in_vm and not hw:
        return VirtCase("vm-no-nested", f"a VM{where} without nested virtualization: the hypervisor hides VT-x/AMD-V",
                        "chapter 02 explains and skips its live cells; to run them: " + _nested_fix(k.hypervisor))
    if hw:
        return VirtCase("kvm-not-loaded", f"the CPU offers {'VT-x' if 'vmx' in k.cpu_flags else 'AMD-V'} but "
                        f"/dev/kvm is not there ({k.error})",
                        "chapter 02 skips its live cells; as root: modprobe kvm_intel (or kvm_amd)")
    return VirtCase("no-kvm", "no hardware virtualization and no /dev/kvm",
                    "chapter 02 explains and skips its live cells")

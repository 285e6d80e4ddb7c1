"""What this machine offers the tests, found without asking labhelper, and what CI says it has.

A test that needs something the machine may lack (/dev/kvm, strace, root...) skips with a named
reason. Two rules keep such skips from hiding a regression:

* **The decision is not the code under test's.** Each capability is probed here, independently
  of labhelper: /dev/kvm is opened and asked KVM_GET_API_VERSION by this file, /proc/filesystems
  and modules.dep are read by this file. If labhelper's own facts (host.facts()) wrongly said
  "no KVM", the KVM tests would still run, and tests/unit/test_host.py, which compares the two,
  would fail.
* **Where a capability is known to be there, its skip is a failure.** ``LABHELPER_EXPECT`` lists
  what this machine must have (comma-separated names from PROBES), or ``all``. `.ci/run` sets it.
  Every skip says its capability in brackets, ``[kvm] /dev/kvm is not usable here``; the root
  conftest.py turns a skip whose capability is expected into a failure. With ``all``, every skip
  fails except those marked ``[n/a]`` (a test that does not apply to this platform by design,
  e.g. a Python 3.14 code path on 3.11), untagged skips included.
"""
from __future__ import annotations

import fcntl
import functools
import glob
import importlib.util
import os
import platform
import re
import shutil

import pytest

KVM_GET_API_VERSION = 0xAE00   # _IO(KVMIO=0xAE, 0x00), include/uapi/linux/kvm.h
KVM_API_VERSION = 12


def _kvm() -> tuple[bool, str]:
    if platform.machine() != "x86_64":
        return False, f"the course's guests are x86 code and this is {platform.machine()}"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return False, f"/dev/kvm cannot be opened: {exc.strerror}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        return False, f"/dev/kvm does not answer KVM_GET_API_VERSION: {exc.strerror}"
    finally:
        os.close(fd)
    return version == KVM_API_VERSION, f"KVM API version {version}"


def _overlay() -> tuple[bool, str]:
    """overlayfs is usable if the kernel knows it, or can load it at the first mount."""
    try:
        with open("/proc/filesystems") as fh:
            if any(line.split()[-1:] == ["overlay"] for line in fh):
                return True, "in /proc/filesystems"
    except OSError:
        pass
    base = f"/lib/modules/{platform.release()}"
    for name in ("modules.dep", "modules.builtin"):
        try:
            with open(f"{base}/{name}") as fh:
                if re.search(r"(^|/)overlay\.ko", fh.read(), re.M):
                    return True, f"in {base}/{name}"
        except OSError:
            pass
    return False, "not in /proc/filesystems, nor in modules.dep or modules.builtin"


def _programs(*names: str) -> tuple[bool, str]:
    missing = [n for n in names if shutil.which(n) is None]
    return not missing, ("not installed: " + ", ".join(missing)) if missing else "installed"


def _static_busybox() -> tuple[bool, str]:
    """busybox-static: /bin/busybox or /usr/bin/busybox, an ELF with no PT_INTERP program header
    (nothing loads shared libraries for it, so it runs in an image with no /lib)."""
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        try:
            with open(path, "rb") as fh:
                head = fh.read(64)
                if head[:4] != b"\x7fELF" or head[4] != 2:            # 64-bit ELF
                    continue
                order = "little" if head[5] == 1 else "big"
                phoff = int.from_bytes(head[32:40], order)
                phentsize, phnum = int.from_bytes(head[54:56], order), int.from_bytes(head[56:58], order)
                fh.seek(phoff)
                table = fh.read(phentsize * phnum)
        except OSError:
            continue
        types = [int.from_bytes(table[i * phentsize:i * phentsize + 4], order) for i in range(phnum)]
        if 3 not in types:                                              # PT_INTERP
            return True, f"{path} is statically linked"
        return False, f"{path} is dynamically linked: install busybox-static"
    return False, "no /bin/busybox or /usr/bin/busybox: install busybox-static"


def _module(name: str) -> tuple[bool, str]:
    found = importlib.util.find_spec(name) is not None
    return found, "importable" if found else f"the Python package {name} is not installed"


def _disposable() -> tuple[bool, str]:
    if os.environ.get("LABHELPER_DISPOSABLE") == "1":
        return True, "LABHELPER_DISPOSABLE=1"
    if os.path.isfile("/etc/labhelper/disposable"):
        return True, "/etc/labhelper/disposable"
    return False, "not declared disposable: run through `make test`, which sets LABHELPER_DISPOSABLE=1"


def _cgroup_procs() -> tuple[bool, str]:
    """A mounted cgroup hierarchy where processes can be moved (cgroup.procs at its root)."""
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            if right.split()[:1] in (["cgroup"], ["cgroup2"]):
                point = left.split()[4]
                if os.path.exists(os.path.join(point, "cgroup.procs")):
                    return True, point
    return False, "no mounted cgroup hierarchy has cgroup.procs"


def cgroup_mode() -> str:
    """This machine's cgroup mode, from the filesystem types of its cgroup mounts: "cgroup" is v1,
    "cgroup2" is v2, both is "hybrid" (an oracle for the tests: labhelper reads it its own way)."""
    types = set()
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            types.update(t for t in line.partition(" - ")[2].split()[:1] if t in ("cgroup", "cgroup2"))
    return {frozenset({"cgroup", "cgroup2"}): "hybrid", frozenset({"cgroup"}): "v1",
            frozenset({"cgroup2"}): "v2"}.get(frozenset(types), "none")


def _kernel_image() -> tuple[bool, str]:
    """A kernel image to boot (chapter 08): /boot's, or the one scripts/fetch-kernel.sh unpacked."""
    cache = os.environ.get("LABHELPER_GUEST_CACHE", "/var/cache/labhelper-guest")
    for pattern in (os.environ.get("LABHELPER_KERNEL") or "/boot/vmlinuz-*", f"{cache}/kernel/root/boot/vmlinuz-*"):
        found = [p for p in glob.glob(pattern) if os.access(p, os.R_OK)]
        if found:
            return True, found[0]
    return False, "no kernel image in /boot, and none fetched (scripts/fetch-kernel.sh; make test runs it)"


def _systemd() -> tuple[bool, str]:
    """The lab VM's kind of host: systemd as PID 1, with the root mount shared (systemd's
    default, so a mount made under / in one namespace reaches every peer of it)."""
    try:
        with open("/proc/1/comm") as fh:
            init = fh.read().strip()
    except OSError as exc:
        return False, f"PID 1 cannot be read: {exc.strerror}"
    if init != "systemd":
        return False, f"PID 1 is {init}, not systemd: the lab VM stage (make test-labvm) runs this"
    root = None
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.partition(" - ")[0].split()
            if fields[4] == "/":
                root = fields                  # the last one mounted on / is the one seen
    if root is None:
        return False, "no / in /proc/self/mountinfo"
    if any(f.startswith("shared:") for f in root[6:]):
        return True, "systemd, / shared"
    return False, "systemd, but / is not a shared mount"


def kvm_flavour() -> str:
    """The KVM module that is loaded ("kvm_intel", "kvm_amd", "kvm_pvm"), or "none"."""
    return next((m for m in ("kvm_intel", "kvm_amd", "kvm_pvm") if os.path.isdir(f"/sys/module/{m}")), "none")


PROBES = {
    "root": lambda: (os.geteuid() == 0, f"euid {os.geteuid()}"),
    "disposable": _disposable,
    "kvm": _kvm,
    "overlay": _overlay,
    "cgroups": _cgroup_procs,
    "strace": lambda: _programs("strace"),
    "binutils": lambda: _programs("as", "ld", "objcopy"),
    "gcc": lambda: _programs("gcc"),
    "kvm-header": lambda: (os.path.exists("/usr/include/linux/kvm.h"), "/usr/include/linux/kvm.h"),
    "ruby": lambda: _programs("ruby"),
    "setpriv": lambda: _programs("setpriv"),
    "lsns": lambda: _programs("lsns"),
    "ip": lambda: _programs("ip"),
    "nft": lambda: _programs("nft"),
    "ping": lambda: _programs("ping"),
    "busybox": _static_busybox,
    "umoci": lambda: _programs("umoci"),
    "skopeo": lambda: _programs("skopeo"),
    "runc": lambda: _programs("runc"),
    "crun": lambda: _programs("crun"),
    "qemu": lambda: _programs("qemu-system-x86_64"),
    "kernel": _kernel_image,
    "systemd": _systemd,
    "matplotlib": lambda: _module("matplotlib"),
    "graphviz": lambda: _module("graphviz"),
    "ipywidgets": lambda: _module("ipywidgets"),
    "jupyter": lambda: _module("jupyter_client"),
}


@functools.cache
def probe(capability: str) -> tuple[bool, str]:
    """(present?, what was found) for one capability, found without labhelper."""
    if capability not in PROBES:
        raise KeyError(f"no probe for {capability!r}; known: {', '.join(PROBES)}")
    return PROBES[capability]()


def have(capability: str) -> bool:
    return probe(capability)[0]


def expected() -> set[str]:
    """What LABHELPER_EXPECT says this machine has ({"all"} for everything)."""
    return {c.strip() for c in os.environ.get("LABHELPER_EXPECT", "").split(",") if c.strip()}


def reason(capability: str, why: str) -> str:
    """A skip reason tagged with its capability, so that conftest.py can judge it."""
    return f"[{capability}] {why}"


def need(capability: str, why: str | None = None) -> None:
    """Skip the test (tagged) unless ``capability`` is here."""
    ok, found = probe(capability)
    if not ok:
        pytest.skip(reason(capability, why or found))


def needs(capability: str, why: str | None = None):
    """The same as a mark: ``@capabilities.needs("kvm")``."""
    ok, found = probe(capability)
    return pytest.mark.skipif(not ok, reason=reason(capability, why or found))


_TAG = re.compile(r"\[([a-z0-9/.<>=-]+)\]")


def judge_skip(text: str) -> str | None:
    """Why a skip with this reason must fail here (LABHELPER_EXPECT), or None if it may skip."""
    want = expected()
    if not want:
        return None
    found = _TAG.search(text)
    tag = found.group(1) if found else None
    if tag == "n/a":
        return None
    setting = f"LABHELPER_EXPECT={os.environ['LABHELPER_EXPECT']}"
    if tag in want:
        return f"[{tag}] is expected on this machine ({setting}), but the test skipped: {text}"
    if "all" in want:
        return f"no test may skip on this machine ({setting}), but this one did: {text}"
    return None


# --- the plugin: loaded by the root conftest.py (pytest_plugins) ---------------------------------

def _skip_text(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and not hasattr(rep, "wasxfail"):
        why = judge_skip(_skip_text(rep.longrepr))
        if why:
            rep.outcome, rep.longrepr = "failed", why


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # A module that skips as a whole (pytest.skip(..., allow_module_level=True)) does it here.
    outcome = yield
    rep = outcome.get_result()
    if rep.outcome == "skipped":
        why = judge_skip(_skip_text(rep.longrepr))
        if why:
            rep.outcome, rep.longrepr = "failed", why

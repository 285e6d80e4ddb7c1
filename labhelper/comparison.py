"""Chapter 08: a container and a virtual machine measured side by side, on this host, in one run.

The seed ends with its question: containers or VMs? Each function here measures one side of one
answer, and returns numbers, not pictures (the chapter draws them):

* start         :func:`container_life` (chapter 07's container: made, /bin/true run, removed),
                :func:`vm_life` (chapter 02's VM: made, its first instruction run, closed), and
                :func:`boot` (a real Linux kernel booted to its init under QEMU);
* memory        :func:`container_memory` (what a container's cgroup is charged) and the QEMU
                process of :func:`boot` (what a VM with a kernel holds);
* system calls  :func:`syscall_path`: getpid here, getpid behind a container's namespaces and
                seccomp filter (the same kernel, directly), and an exit to the VMM;
* runtimes      :func:`runtime_starts`: labhelper's container next to runc's and crun's, on the
                same root filesystem, the sides interleaved.

benchmarks/compare.py prints the same table from the same functions.
"""
from __future__ import annotations

import glob
import os
import select
import shlex
import shutil
import stat
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from . import cgroups, container, host, images, kvm, process, procfs, seccomp, syscost
from .container import oci
from .kvm import guests
from .errors import LabError, RequirementError

__all__ = ["Boot", "Timing", "VmSyscalls", "vm_syscalls", "boot", "find_kernel", "accelerator", "initramfs", "container_life", "vm_life",
           "container_memory", "syscall_path", "runtime_starts", "runtime_loop", "MARK"]

MARK = "LABHELPER-INIT"          # what the booted kernel's init prints first, on the serial console


@dataclass(frozen=True)
class Timing:
    """Seconds per repetition of one thing, measured ``len(samples)`` times; ``median`` judges."""
    what: str
    samples: tuple[float, ...] = field(repr=False)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def __repr__(self) -> str:
        return f"Timing({self.what}: median {_human(self.median)} of {len(self.samples)})"


def _human(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


# --- a real kernel, booted --------------------------------------------------------------------------

@dataclass(frozen=True)
class Boot:
    """One boot of a Linux kernel under QEMU, to the first line its init printed."""
    kernel: str                 # the kernel image booted
    version: str                # `uname -r`, as the guest's own kernel says it
    accelerator: str            # "kvm" (hardware-assisted) or "tcg" (QEMU emulates every instruction)
    to_init: float              # seconds from starting QEMU to its init's first line
    kernel_uptime: float        # the guest kernel's own clock at that line: its boot, firmware excluded
    qemu_rss: int               # bytes the QEMU process held then (guest memory it touched, QEMU itself)
    guest_memory: int           # bytes of memory the VM was given

    def __repr__(self) -> str:
        return (f"Boot(Linux {self.version} under {self.accelerator}: init after {self.to_init:.2f} s "
                f"(the kernel's own clock: {self.kernel_uptime:.2f} s); QEMU holds {self.qemu_rss >> 20} MiB)")


CACHE = "/var/cache/labhelper-guest"      # where scripts/fetch-kernel.sh unpacks one ($LABHELPER_GUEST_CACHE)


def find_kernel() -> str | None:
    """A bootable kernel image: $LABHELPER_KERNEL, else this kernel's in /boot, else the newest
    there, else the distribution kernel scripts/fetch-kernel.sh fetched; None when there is none
    (a CI runner or a container may have no /boot at all)."""
    given = os.environ.get("LABHELPER_KERNEL")
    if given:
        return given
    own = f"/boot/vmlinuz-{os.uname().release}"
    if os.access(own, os.R_OK):
        return own
    fetched = os.path.join(os.environ.get("LABHELPER_GUEST_CACHE", CACHE), "kernel", "root", "boot")
    for folder in ("/boot", fetched):
        found = sorted((p for p in glob.glob(f"{folder}/vmlinuz-*") if os.access(p, os.R_OK)), key=os.path.getmtime)
        if found:
            return found[-1]
    return None


def accelerator() -> tuple[str, str]:
    """("kvm" or "tcg", why). KVM boots a stock kernel with VT-x or AMD-V (kvm_intel, kvm_amd);
    kvm_pvm runs only kernels built for PVM (the seed's paravirtualization, live), so a stock
    kernel is booted by QEMU's TCG there: every guest instruction translated, as full
    virtualization did before hardware assistance."""
    kvm = host.facts().kvm
    if kvm.openable and kvm.flavour in ("kvm_intel", "kvm_amd"):
        return "kvm", f"{kvm.flavour}: the CPU runs the guest's instructions itself (hardware-assisted)"
    if kvm.flavour == "kvm_pvm":
        return "tcg", ("kvm_pvm runs only kernels built for PVM (paravirtualized); a stock kernel is emulated by "
                       "QEMU's TCG instead, instruction by instruction")
    return "tcg", "no usable /dev/kvm: QEMU's TCG emulates every instruction"


def _cpio_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> bytes:
    # The "newc" format the kernel unpacks an initramfs from: a 110-byte ASCII header of 13 hex
    # fields, the name (NUL-ended), the data, each padded to 4 bytes. A device node is only a
    # header here: the kernel makes it, no mknod on this host.
    fields = [0, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = header + name.encode() + b"\0"
    out += b"\0" * (-len(out) % 4) + data
    return out + b"\0" * (-len(out) % 4)


def initramfs(busybox: str | None = None) -> bytes:
    """A whole root filesystem for the booted kernel, in memory: busybox (static: the guest has no
    shared libraries), and an init that prints MARK with the kernel's version and its uptime,
    then waits (boot ends QEMU)."""
    with open(busybox or images.static_busybox(), "rb") as fh:
        program = fh.read()
    init = ("#!/bin/busybox sh\n"
            "/bin/busybox mount -t proc proc /proc\n"
            f"/bin/busybox echo \"{MARK} $(/bin/busybox uname -r) $(/bin/busybox cut -d' ' -f1 /proc/uptime)\"\n"
            "/bin/busybox sleep 60\n"              # the host reads QEMU's memory meanwhile, then ends it
            "/bin/busybox poweroff -f\n").encode()
    entries = [_cpio_entry("bin", stat.S_IFDIR | 0o755), _cpio_entry("dev", stat.S_IFDIR | 0o755),
               _cpio_entry("proc", stat.S_IFDIR | 0o755),
               _cpio_entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
               _cpio_entry("bin/busybox", stat.S_IFREG | 0o755, program),
               _cpio_entry("init", stat.S_IFREG | 0o755, init)]
    return b"".join(entries) + _cpio_entry("TRAILER!!!", 0)


def boot(kernel: str | None = None, accel: str | None = None, memory_mib: int = 256,
         timeout: float = 180.0) -> Boot:
    """Boot ``kernel`` (default: :func:`find_kernel`) under QEMU with ``memory_mib`` of memory,
    to its init; QEMU is ended once its memory is read. RequirementError when QEMU, a kernel or
    busybox is missing; LabError when the kernel does not reach its init in ``timeout`` s."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None or os.uname().machine != "x86_64":
        raise RequirementError("booting a kernel needs qemu-system-x86_64 on an x86_64 host",
                               hint="apt-get install qemu-system-x86", missing=("qemu",))
    kernel = kernel or find_kernel()
    if kernel is None or not os.access(kernel, os.R_OK):
        raise RequirementError("no kernel image to boot: /boot has none here",
                               hint="scripts/fetch-kernel.sh fetches the distribution's (or set LABHELPER_KERNEL)",
                               missing=("kernel",))
    busybox = images.static_busybox()      # the guest's init: RequirementError when missing
    accel = accel or accelerator()[0]
    with tempfile.TemporaryDirectory(prefix="labhelper-boot-") as tmp:
        with open(f"{tmp}/initrd", "wb") as fh:
            fh.write(initramfs(busybox))
        argv = [qemu, "-accel", accel, "-cpu", "host" if accel == "kvm" else "max", "-m", str(memory_mib),
                "-kernel", kernel, "-initrd", f"{tmp}/initrd", "-append", "console=ttyS0 quiet panic=-1",
                "-nographic", "-no-reboot", "-nic", "none", "-monitor", "none", "-serial", "stdio"]
        started = time.monotonic()
        qemu_proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            line, said = _until_mark(qemu_proc, started + timeout)
            to_init = time.monotonic() - started
            rss = procfs.status(qemu_proc.pid).get("VmRSS", "0 kB").split()[0] if line else "0"
        finally:
            # Measured: the VM is not needed any more (its power-off can take long when nested).
            qemu_proc.kill()
            qemu_proc.wait()
            qemu_proc.stdout.close()
    if line is None:
        raise LabError(f"the kernel did not reach its init within {timeout:g} s", hint=said[-500:] or None)
    _, version, uptime = line.split()[:3]
    return Boot(kernel, version, accel, to_init, float(uptime), int(rss) * 1024, memory_mib << 20)


def _until_mark(proc: subprocess.Popen, deadline: float) -> tuple[str | None, str]:
    """Read QEMU's serial output until the init's MARK line: (that line, everything before)."""
    buffer = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buffer += chunk
        text = buffer.decode(errors="replace")
        for line in text.split("\n")[:-1]:       # whole lines only: output may stop mid-line
            # The firmware's terminal escapes may share the line: the mark is where it starts.
            found = line[line.find(MARK):] if MARK in line else ""
            if len(found.split()) >= 3:
                return found.strip(), text
    return None, buffer.decode(errors="replace")


# --- starts -------------------------------------------------------------------------------------------

def container_life(store, count: int = 10, rootfs: str | None = None, owner: str = "ch08") -> Timing:
    """Chapter 07's container, ``count`` times: made (cgroup, namespaces, mounts, pivot_root,
    seccomp), /bin/true run in it, removed. ``rootfs``: a root folder used as it is (as runc
    is given one), else a new overlay of the busybox image each time, as ``docker run`` makes."""
    where = {"rootfs": rootfs} if rootfs else {"store": store}
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        result = container.run(None if rootfs else "busybox", ["/bin/true"], owner=owner, **where)
        samples.append(time.perf_counter() - started)
        if result.exit_code != 0:
            raise LabError(f"the container did not run /bin/true: {result!r}")
    return Timing("container: made, /bin/true, removed", tuple(samples))


def vm_life(count: int = 10) -> Timing:
    """Chapter 02's VM, ``count`` times: /dev/kvm opened, a VM with memory and a vCPU made, its
    first instruction run (an ``out``: the first exit says it ran), everything closed."""
    program = kvm.assemble(guests.ADD_TWO, name="add two")
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        with kvm.Machine(program) as machine:
            machine.run(max_exits=1, check=False)
        samples.append(time.perf_counter() - started)
    return Timing("chapter 02's VM: made, first instruction, closed", tuple(samples))


# --- memory -------------------------------------------------------------------------------------------

def container_memory(store, owner: str = "ch08", seconds: float = 10.0) -> int:
    """Bytes a busybox container running ``sleep`` is charged, from its cgroup (its processes'
    memory, and the kernel's for them: page tables, the files it read)."""
    with container.create("busybox", ["sleep", "30"], store=store, owner=owner) as box:
        box.start()
        deadline = time.monotonic() + seconds
        while not procfs.read_text(f"/proc/{box.pid}/cmdline", limit=None).startswith("sleep"):
            if time.monotonic() > deadline:
                raise LabError("the container's sleep did not start")
            time.sleep(0.01)
        return box.group.stats().memory_current or 0


# --- the system call path -------------------------------------------------------------------------

def _getpid_in_a_container(samples: int, batch: int) -> syscost.Cost:
    # In the child: a container's namespaces were made by spawn; now its seccomp filter, which
    # the kernel runs on every system call from here on.
    seccomp.attach()
    return syscost.measure(os.getpid, "container_getpid", "getpid in a container",
                           kernel=True, samples=samples, batch=batch)


def syscall_path(samples: int = 40, batch: int = 200) -> syscost.Costs:
    """getpid on the host; getpid in a process with a container's namespaces and seccomp filter
    (the same kernel, straight, the filter run first); an exit of chapter 02's VM to this VMM
    and back (where /dev/kvm is usable)."""
    here = syscost.measure(os.getpid, "getpid", "getpid on the host", kernel=True, samples=samples, batch=batch)
    inside = process.spawn(_getpid_in_a_container, samples, batch, unshare=container.NAMESPACES).wait(120)
    costs = [here, inside]
    if host.facts().kvm.openable:
        with kvm.Machine(guests.EXIT_LOOP) as machine:
            costs.append(syscost.measure(machine.vcpu.run, "vm_exit", "a VM exit to this VMM and back",
                                         kernel=True, samples=samples, batch=batch))
    return syscost.Costs(tuple(costs))


@dataclass(frozen=True)
class VmSyscalls:
    """System calls made *inside* a VM, to the guest's own kernel: what one costs, and how many
    exits to the VMM the whole run made (two, whatever the count, with VT-x or AMD-V)."""
    per_call_ns: float
    calls: int
    exits: dict

    def __repr__(self) -> str:
        exits = ", ".join(f"{k}: {v}" for k, v in self.exits.items())
        return (f"VmSyscalls({self.calls} system calls in the guest, {self.per_call_ns:.0f} ns each; "
                f"exits to the VMM in the whole run: {sum(self.exits.values())} ({exits}))")


def _syscall_run(count: int) -> tuple[float, object]:
    program = kvm.assemble(guests.syscall_loop_source(count), mode="long", name=f"{count} system calls")
    with kvm.Machine(program) as machine:
        started = time.perf_counter()
        result = machine.run(check=False)
        return time.perf_counter() - started, result


def vm_syscalls(few: int = 1000, many: int = 201000, repeats: int = 5) -> VmSyscalls:
    """A long-mode guest whose process makes system calls to its own kernel (guests.
    syscall_loop_source): the runs with ``few`` and with ``many`` calls are timed, and the
    difference per call is what one costs (the VM's making and first entry cancel out)."""
    times: dict[int, list[float]] = {few: [], many: []}
    last = None
    for _ in range(repeats):
        for count in (few, many):
            seconds, last = _syscall_run(count)
            if last.stopped != "hlt" or tuple(last.reports) != (count,):
                flavour = host.facts().kvm.flavour
                raise RequirementError(
                    f"the guest's system calls did not run here ({flavour}: the run ended with {last.stopped})",
                    hint="kvm_pvm runs only guests built for PVM, whose kernel tells PVM where its system "
                         "calls go; on kvm_intel or kvm_amd (the lab VM) this guest makes them with no exit",
                    missing=("kvm-guest-syscall",))
            times[count].append(seconds)
    per_call = (statistics.median(times[many]) - statistics.median(times[few])) / (many - few)
    return VmSyscalls(max(per_call, 0.0) * 1e9, many, dict(last.counts))


# --- labhelper next to runc and crun --------------------------------------------------------------

def runtime_loop(runtime: str, bundle: str, count: int, prefix: str) -> float:
    """Seconds per start of ``count`` starts of ``runtime run``, timed inside one shell (each
    start includes the fork and execve of the runtime, as when containerd's shim starts one)."""
    loop = (f'i=0; t0=$(date +%s%N); while [ $i -lt {int(count)} ]; do '
            f'{runtime} run --bundle {shlex.quote(bundle)} {shlex.quote(prefix)}-$i >/dev/null 2>&1 || exit 3; '
            f'i=$((i+1)); done; t1=$(date +%s%N); echo $((t1-t0))')
    try:
        done = subprocess.run(oci.shell(runtime, loop), capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise LabError(f"{count} starts of {runtime} took more than 600 s") from None
    finally:
        cgroups.remove_empty_parents()
    if done.returncode != 0:
        raise LabError(f"{runtime} failed (exit {done.returncode}): {done.stderr.strip()[:300]}")
    return int(done.stdout.split()[-1]) / 1e9 / count


def runtime_starts(rootfs: str, bundle_dir: str, rounds: int = 5, per_round: int = 10,
                   owner: str = "ch08") -> dict[str, Timing]:
    """/bin/true in a new container on the root folder ``rootfs`` (the same for all), by
    labhelper in this process and by each OCI runtime installed (a bundle written by
    container.oci into ``bundle_dir``), ``per_round`` starts per side per round, the sides
    rotating round by round: {side: Timing of seconds per start}."""
    sides = ["labhelper"] + oci.runtimes()
    bundles = {}
    for runtime in sides[1:]:
        folder = os.path.join(bundle_dir, runtime)
        os.makedirs(folder, exist_ok=True)
        oci.bundle(folder, rootfs, ["/bin/true"], name=f"{owner}-{runtime}")
        bundles[runtime] = folder
    samples: dict[str, list[float]] = {side: [] for side in sides}
    prefix = f"lh-{owner}-{os.getpid()}"
    for r in range(rounds + 1):                 # round 0 warms caches up, and is not kept
        for side in sides[r % len(sides):] + sides[:r % len(sides)]:
            if side == "labhelper":
                per = container_life(None, per_round, rootfs=rootfs, owner=owner).median
            else:
                per = runtime_loop(side, bundles[side], per_round, f"{prefix}-{r}")
            if r:
                samples[side].append(per)
    return {side: Timing(f"{side}: /bin/true in a new container", tuple(s)) for side, s in samples.items()}

"""labhelper.kvm on the real /dev/kvm: guests run, exits are what they should be, nothing leaks.

Skipped, with the reason, where /dev/kvm is absent or cannot be opened. R25 (no KVM fd in
children, none after close) and R26 (memory cap, interrupt within 1 s, flat fds/RSS over 20
cycles) are tested here.
"""
from __future__ import annotations

import contextlib
import errno
import faulthandler
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import capabilities
import census
import pytest
from forking import child_answer
from timing import scaled

from labhelper import kvm
from labhelper.errors import LabError, SyscallError
from labhelper.kvm import guests
from labhelper.kvm import machine as machine_module
from labhelper.kvm.machine import Machine

# Whether to run is decided by an independent probe (tests/capabilities.py), not by host.kvm_info():
# if labhelper wrongly said "no KVM", these tests would still run (and fail).
pytestmark = pytest.mark.kvm

for _cap in ("kvm", "binutils"):
    if not capabilities.have(_cap):
        pytest.skip(capabilities.reason(_cap, capabilities.probe(_cap)[1]), allow_module_level=True)


def kvm_fds() -> list:
    return kvm.open_fds()


@pytest.fixture(autouse=True)
def _no_kvm_fd_left():
    before = kvm_fds()
    yield
    assert kvm_fds() == before, "a KVM fd was left open"


@contextlib.contextmanager
def sigint_after(seconds: float):
    """Send this process SIGINT after ``seconds``, as JupyterLab's interrupt button does, and
    expect the block to raise KeyboardInterrupt (yields pytest's ExceptionInfo)."""
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            yield info
    finally:
        timer.cancel()


def _long_mode() -> tuple[bool, str]:
    return kvm.long_mode_check()


def test_system_fd_answers():
    with kvm.Kvm() as k:
        assert k.api_version == 12
        assert k.vcpu_mmap_size >= 4096
        caps = k.capabilities()
        assert caps["KVM_CAP_USER_MEMORY"] == 1
        assert caps["KVM_CAP_NR_MEMSLOTS"] > 0
        cpuid = k.supported_cpuid()
        assert any(e.function == 0 for e in cpuid) and repr(cpuid[0]).startswith("CpuidEntry(0x")
        assert "fd=" in repr(k)
    assert "closed" in repr(k)


def test_every_kvm_fd_is_close_on_exec():
    import fcntl
    with Machine(guests.SERIAL_HELLO) as m:
        fds = kvm_fds()
        kinds = {t.split(":")[1] if ":" in t else t for _, t in fds}
        assert {"/dev/kvm", "kvm-vm", "kvm-vcpu"} <= kinds, fds
        for fd, target in fds:
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, f"{target} (fd {fd}) is inheritable"
        assert m.vm.fd > 0


def test_serial_hello_exits_once_per_byte():
    with Machine(guests.SERIAL_HELLO) as m:
        r = m.run()
    message = b"Hello from a real-mode guest!\n"
    assert r.output == message and r.stopped == "hlt"
    assert r.counts == {"IoOut": len(message), "Hlt": 1} and r.exits == len(message) + 1
    assert repr(r).startswith("RunResult(stopped='hlt', exits=31")
    assert m.closed


def test_paravirtual_console_needs_one_exit():
    message = b"x" * 500
    with Machine(guests.pv_source(message)) as serial_free:
        r = serial_free.run()
    assert r.output == message and r.counts == {"IoOut": 1, "Hlt": 1}
    with Machine(guests.serial_source(message)) as m:
        assert m.run().counts == {"IoOut": 500, "Hlt": 1}


def test_pv_console_refuses_a_buffer_outside_memory():
    src = f"""\
    mov word ptr [{guests.MAILBOX:#x}], 0xff00
    mov word ptr [{guests.MAILBOX + 2:#x}], 0x200
    mov dx, {guests.DOORBELL_PORT:#x}
    out dx, al
    hlt
"""
    with Machine(src) as m:
        r = m.run()
        pv = m.device("pv-console")
    assert r.output == b"" and pv.rings == 1 and "refused" in pv.refused[0]


def test_mmio_writes_and_reads():
    with Machine(guests.MMIO_HELLO) as m:
        r = m.run()
    assert r.output == b"MMIO!\n"
    assert r.counts == {"MmioWrite": 6, "MmioRead": 1, "IoOut": 1, "Hlt": 1}
    assert r.reports == (6,)                     # the COUNT register the guest read back


def test_io_in_is_answered():
    src = "    mov dx, 0x3fd\n    in al, dx\n    out 0x10, al\n    in al, 0x99\n    out 0x10, al\n    hlt\n"
    with Machine(src) as m:
        r = m.run()
    assert r.reports == (0x60, 0xFF)             # LSR "transmitter empty"; nothing on port 0x99
    assert r.counts["IoIn"] == 2


def test_add_two_numbers():
    with Machine(guests.ADD_TWO) as m:
        m.write(0x600, (1234).to_bytes(2, "little") + (4321).to_bytes(2, "little"))
        assert m.run().reports == (5555,)


def test_registers_round_trip_and_listing_mark():
    with Machine(guests.SERIAL_HELLO) as m:
        regs = m.regs()
        assert regs.rip == guests.ORIGIN and m.sregs().mode == "real"
        first = m.step()
        assert first == kvm.IoOut(0x3F8, 1, b"H")
        after = m.regs()
        assert after.rdx == 0x3F8 and after.rax & 0xFF == ord("H")
        assert m.program.line_at(after.rip) is not None
        m.vcpu.set_regs(after, rax=0x1234)
        assert m.regs().rax == 0x1234


def test_long_mode_guest_or_a_reason():
    ok, why = _long_mode()
    if not ok:
        assert why                                 # the reason is said, never empty
        pytest.skip(capabilities.reason("kvm-long-mode", f"this host refuses 64-bit guests: {why}"))
    with Machine(kvm.assemble(guests.LONG_HELLO, mode="long")) as m:
        r = m.run()
        s = m.sregs()
        t = m.vcpu.translate(guests.MMIO_BASE)
    assert r.output == b"Hello from long mode!\n" and s.mode == "long"
    cr0, cr4, efer = r.reports
    assert cr0 & 0x80000001 == 0x80000001 and cr4 & 0x20 and efer & 0x500 == 0x500
    assert t.valid and t.physical == guests.MMIO_BASE


def test_triple_fault_is_a_clear_error():
    ok, why = _long_mode()
    if not ok:
        pytest.skip(capabilities.reason("kvm-long-mode", f"the triple-fault guest is 64-bit and this host refuses 64-bit guests: {why}"))
    before = kvm_fds()
    with pytest.raises(kvm.GuestError) as info:
        with Machine(kvm.assemble(guests.TRIPLE_FAULT, mode="long")) as m:
            m.run()
    assert isinstance(info.value.exit, (kvm.Shutdown, kvm.InternalError))
    assert "KVM_EXIT_" in str(info.value) and "rip=" in str(info.value)
    assert kvm_fds() == before
    with Machine(kvm.assemble(guests.TRIPLE_FAULT, mode="long")) as m:
        r = m.run(check=False)
    assert r.stopped in ("KVM_EXIT_SHUTDOWN", "KVM_EXIT_INTERNAL_ERROR")


def test_invalid_special_registers_are_refused_by_kvm():
    with Machine(guests.SERIAL_HELLO) as m:
        s = m.sregs()
        s.cr0 = (s.cr0 | (1 << 31)) & ~1           # paging without protected mode: impossible
        with pytest.raises(SyscallError) as info:
            m.vcpu.set_sregs(s)
        assert info.value.errno == errno.EINVAL and "CR0.PE" in str(info.value)
        with pytest.raises(kvm.RegisterError, match="no such register"):
            m.vcpu.set_regs(rzz=1)
        assert m.run().stopped == "hlt"            # the refused state changed nothing


def test_memory_cap_before_mmap(monkeypatch):
    import mmap as mmap_module
    calls = []

    def no_mmap(*args, **kwargs):                  # any mmap from here on is a failure of the test
        calls.append(args)
        raise AssertionError("mmap was called before the cap was checked")
    with kvm.Kvm() as k:
        vm = k.create_vm()
        try:
            monkeypatch.setattr(mmap_module, "mmap", no_mmap)
            with pytest.raises(kvm.MemoryError_, match="cap"):
                vm.add_memory(kvm.MEMORY_CAP + 4096)
            with pytest.raises(kvm.MemoryError_, match="page size"):
                vm.add_memory(4096 + 1)
            assert calls == [] and vm.memory == []  # refused before any mapping was attempted
            monkeypatch.undo()
            vm.add_memory(0x10000)
            monkeypatch.setattr(mmap_module, "mmap", no_mmap)
            with pytest.raises(kvm.MemoryError_, match="overlaps"):
                vm.add_memory(0x1000, guest_address=0x8000)
            with pytest.raises(kvm.MemoryError_, match="over the lab's cap"):   # the total counts
                vm.add_memory(kvm.MEMORY_CAP, guest_address=0x100000)
            assert calls == []
            monkeypatch.undo()
            with pytest.raises(kvm.MemoryError_, match="no memory slot covers"):
                vm.write(0xFFFF, b"ab")
            with pytest.raises(kvm.MemoryError_, match="cannot write 2 bytes"):
                vm.memory[0].write(0xFFFF, b"ab")
        finally:
            vm.close()
    assert all(m._map.closed for m in vm.memory)


def _mappings() -> list[str]:
    """This process's shared mappings: where guest memory (MAP_SHARED|MAP_ANONYMOUS, shown as
    /dev/zero) and kvm_run pages (anon_inode:kvm-vcpu) appear. Private ones are left out: Python's
    own allocator maps 1 MiB arenas as it pleases, which says nothing about KVM."""
    with open("/proc/self/maps") as fh:
        return [line for line in fh.read().splitlines() if line.split()[1].endswith("s")]


def test_create_close_cycles_leave_no_mapping():
    # R26: guest memory (anonymous, shared) and each vCPU's kvm_run page are mappings of this
    # process; a VM that forgot to unmap them would grow /proc/self/maps by two lines per cycle.
    prog = kvm.assemble(guests.SERIAL_HELLO)
    with Machine(prog) as m:
        m.run()
        during = _mappings()
    assert any("kvm-vcpu" in line for line in during), "the kvm_run page should show while the VM is open"
    assert any("/dev/zero" in line for line in during), "so should guest memory"
    before = _mappings()
    for _ in range(20):
        with Machine(prog) as m:
            m.run()
    after = _mappings()
    assert not any("kvm-vcpu" in line for line in after)
    assert len(after) == len(before), "\n".join(sorted(set(after) - set(before)))


def test_closed_objects_say_so():
    m = Machine(guests.SERIAL_HELLO)
    vcpu = m.vcpu
    m.close()
    m.close()                                      # idempotent
    with pytest.raises(LabError, match="vCPU is closed"):
        vcpu.run()
    with pytest.raises(LabError, match="VM is closed"):
        m.vm.add_memory(4096)
    with pytest.raises(LabError, match="unmapped"):
        m.read(0x1000, 1)


def test_spinning_guest_stops_on_timeout():
    with Machine(guests.SPIN) as m:
        t0 = time.monotonic()
        r = m.run(timeout=0.2)
        took = time.monotonic() - t0
        assert r.stopped == "timeout" and 0.15 < took < scaled(1.0)   # not before the deadline
        assert m.regs().rip == guests.ORIGIN       # still in its loop, intact


def test_sigint_stops_a_spinning_guest_within_a_second_and_closes_it():
    m = Machine(guests.SPIN)
    t0 = time.monotonic()
    with sigint_after(0.2) as info:
        m.run()
    took = time.monotonic() - t0
    assert took < 0.2 + scaled(1.0), f"the interrupt took {took - 0.2:.2f} s to stop the guest"
    assert m.closed and "VM closed" in "".join(getattr(info.value, "__notes__", []))


def test_sigint_while_not_in_a_with_block_leaves_no_fd():
    before = kvm_fds()
    with sigint_after(0.1):
        Machine(guests.SPIN).run()
    assert kvm_fds() == before


def test_no_kvm_fd_in_a_forked_child():
    with Machine(guests.SERIAL_HELLO) as m:
        assert kvm_fds()
        seen = child_answer(lambda: repr(kvm.open_fds()).encode())
        assert seen == b"[]"
        assert m.run().stopped == "hlt"            # the parent's VM is untouched


def test_no_kvm_fd_in_a_subprocess_even_without_close_fds():
    with Machine(guests.SERIAL_HELLO):
        out = subprocess.run(["ls", "-l", "/proc/self/fd"], capture_output=True, text=True,
                             close_fds=False).stdout
    assert "kvm" not in out


def test_no_kvm_fd_in_run_in_child():
    from labhelper import process
    with Machine(guests.SERIAL_HELLO):
        assert process.run_in_child(kvm.open_fds) == []


def test_a_killed_owner_leaves_nothing():
    code = textwrap.dedent("""
        import os, sys, time
        from labhelper.kvm import Machine, guests
        m = Machine(guests.SPIN)
        print("ready", flush=True)
        m.run()
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        assert kvm.open_fds(p.pid), "the child should hold its VM"
        p.kill()
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
    assert kvm.open_fds(p.pid) == []


def _rss_kib() -> int:
    """Resident anonymous and shared-anonymous memory (where a leaked VM's memory would be): not
    RssFile, the pages of libraries and of Python itself faulted in as new code paths run."""
    with open("/proc/self/status") as fh:
        fields = dict(line.split(":", 1) for line in fh)
    return sum(int(fields[k].split()[0]) for k in ("RssAnon", "RssShmem"))


def test_twenty_create_close_cycles_keep_fds_and_rss_flat():
    # Each cycle fills its whole guest memory, so a VM (or its memory) kept alive after close
    # would keep MEMORY bytes resident: 20 cycles, 20 x MEMORY. The bound is a quarter of that,
    # far above the allocator's noise and far below any real leak of a VM.
    memory, cycles = 512 * 1024, 20
    prog = kvm.assemble(guests.SERIAL_HELLO)

    def cycle():
        with Machine(prog, memory=memory) as m:
            m.write(0x2000, b"\xa5" * (memory - 0x2000))   # above the program: every page touched
            m.run()

    for _ in range(5):                              # warm up caches and allocators
        cycle()
    fds0, rss0 = len(os.listdir("/proc/self/fd")), _rss_kib()
    for _ in range(cycles):
        cycle()
    fds1, rss1 = len(os.listdir("/proc/self/fd")), _rss_kib()
    assert fds1 == fds0
    leak_kib = cycles * memory // 1024
    assert rss1 - rss0 < leak_kib // 4, f"RSS grew by {rss1 - rss0} KiB over {cycles} cycles ({leak_kib} KiB if every VM leaked)"


def test_immediate_exit_returns_at_once():
    with Machine(guests.SPIN) as m:
        m.vcpu.set_immediate_exit(True)
        t0 = time.monotonic()
        assert m.vcpu.run() == kvm.Interrupted()
        assert time.monotonic() - t0 < scaled(0.5)
        m.vcpu.set_immediate_exit(False)


def test_stepper_goes_one_exit_at_a_time():
    from labhelper.teach.stepper import Stepper
    with Stepper(guests.SERIAL_HELLO) as s:
        first = s.step()
        assert first.exit == kvm.IoOut(0x3F8, 1, b"H") and first.number == 1
        assert {"rip", "rdx", "rsi"} <= set(first.changed)
        second = s.step()
        assert "rip" not in second.changed and second.exit.data == b"e"   # the same `out`, again
        assert "<b>rax=" in s.registers_html() and "=&gt;" in s.panel_html()
        capabilities.need("ipywidgets")
        s.widget
        s._step_button.click()
        assert len(s.history) == 3
        s._run_button.click()
        assert s.done and s._step_button.disabled and s.output == b"Hello from a real-mode guest!\n"
        s._step_button.click()                      # disabled in the browser; the error shows in the panel
        s._reset_button.click()
        assert s.history == [] and not s._step_button.disabled
    assert s.machine.closed


@pytest.mark.parametrize("step", ["vm-create", "vm-memory"])
def test_fault_after_each_step_leaves_no_fd(step, monkeypatch):
    from labhelper.errors import FaultInjected
    monkeypatch.setenv("LABHELPER_FAULT", f"{step}:raise")
    with pytest.raises(FaultInjected):
        Machine(guests.SERIAL_HELLO)
    monkeypatch.delenv("LABHELPER_FAULT")


@pytest.mark.parametrize("step", ["vm-create", "vm-memory"])
def test_sigkill_after_each_step_leaves_nothing(step):
    # R1: the creator dies mid-setup, as on a kernel restart. The kernel frees its VM with it;
    # what is checked here is what labhelper itself could leave: a process of the creator's
    # group, a ledger record, a lab mount or cgroup, a KVM fd anywhere (the census).
    before = census.take()
    code = ("from labhelper.kvm import Machine, guests\n"
            "Machine(guests.SERIAL_HELLO)\n"
            "print('the fault point was never reached')")
    env = dict(os.environ, LABHELPER_FAULT=f"{step}:sigkill")
    p = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                         stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=60)
    # SIGKILL to the whole group comes only from the fault point of this step: the creator got
    # that far (had it not, it would have printed and exited 0).
    assert p.returncode == -signal.SIGKILL and out == "", out
    with pytest.raises(ProcessLookupError):
        os.killpg(p.pid, 0)                          # nothing of its process group is left
    assert census.diff(before, census.take()) == ""


def test_stepper_on_a_guest_without_exits_comes_back():
    from labhelper.teach.stepper import Stepper
    with Stepper(guests.SPIN, step_timeout=0.3) as s:
        t0 = time.monotonic()
        step = s.step()
        assert step.exit == kvm.Interrupted() and time.monotonic() - t0 < scaled(1.5)
        assert not s.done and s.machine.interruptions >= 1


def test_interruptions_are_not_counted_as_exits():
    # A run longer than a few ticks: the timer's EINTRs must not show up as guest exits.
    with Machine(guests.serial_source(b"z" * 3000)) as m:
        r = m.run()
    assert r.exits == 3001 and r.counts == {"IoOut": 3000, "Hlt": 1}


def test_kicks_bring_kvm_run_back_from_a_guest_without_exits():
    # The watchdog's kicks (immediate_exit + a signal to this thread) are what let a deadline, or
    # an interrupt that Python took just before KVM_RUN, be acted on while the guest never exits.
    from labhelper.kvm import watchdog
    alarm = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)
    with Machine(guests.SPIN) as m:
        t0 = time.monotonic()
        r = m.run(timeout=0.35)
        assert r.stopped == "timeout" and time.monotonic() - t0 < scaled(1.0)
        assert m.interruptions >= 3 and r.exits == 0            # one kick per tick (0.1 s)
        assert m.run(timeout=0.15).stopped == "timeout"         # and again
    assert signal.getsignal(watchdog.KICK_SIGNAL) is watchdog._kicked
    assert (signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)) == alarm   # never borrowed


@pytest.mark.parametrize("where", ["after arm", "in disarm"])
def test_timeouts_still_work_after_an_interrupt_at_the_worst_moment(where, monkeypatch):
    # The review's case: a KeyboardInterrupt while the timer was being set up (or put back)
    # left later run(timeout=) calls without a timer, and a spinning guest hung the kernel.
    from labhelper.kvm import watchdog
    real_arm, real_disarm = watchdog.arm, watchdog.disarm

    def arm_then_interrupt(vcpu, deadline=None):
        real_arm(vcpu, deadline)
        raise KeyboardInterrupt

    def interrupt_in_disarm(vcpu):
        raise KeyboardInterrupt                      # never disarms

    if where == "after arm":
        monkeypatch.setattr(watchdog, "arm", arm_then_interrupt)
    else:
        monkeypatch.setattr(watchdog, "disarm", interrupt_in_disarm)
    m = Machine(guests.SPIN)
    with pytest.raises(KeyboardInterrupt):
        m.run(timeout=0.1)
    assert m.closed
    monkeypatch.undo()
    with Machine(guests.SPIN) as again:
        t0 = time.monotonic()
        assert again.run(timeout=0.3).stopped == "timeout"
        assert time.monotonic() - t0 < scaled(1.0)
    real_disarm(m.vcpu)


def test_sigint_right_after_a_timeout_still_interrupts():
    # An interrupt must work the same on a Machine whose previous run ended by timeout.
    m = Machine(guests.SPIN)
    assert m.run(timeout=0.1).stopped == "timeout"
    t0 = time.monotonic()
    with sigint_after(0.3):
        m.run()
    assert time.monotonic() - t0 < 0.3 + scaled(1.0) and m.closed


def test_exit_counts_agree_everywhere():
    with Machine(guests.serial_source(b"z" * 40)) as m:
        first = m.run(timeout=5)
        m.vcpu.set_immediate_exit(True)              # one EINTR: not an exit
        assert m.vcpu.run() == kvm.Interrupted()
        m.vcpu.set_immediate_exit(False)
        assert m.interruptions >= 1
        assert first.exits == 41 == m.exits == m.vcpu.exits == sum(m.counts.values())
        assert "41 exits" in repr(m) and "41 exits" in repr(m.vcpu)


def test_supported_cpuid_is_asked_once_per_process(monkeypatch):
    from labhelper import syscalls
    from labhelper.kvm import cpuid, ioctls
    with kvm.Kvm() as k:
        first = k.supported_cpuid()
    asked = []
    real = syscalls.ioctl

    def counting(fd, request, *args, **kwargs):
        asked.append(request)
        return real(fd, request, *args, **kwargs)
    from labhelper.kvm import vcpu as vcpu_module
    monkeypatch.setattr(syscalls, "ioctl", counting)
    monkeypatch.setattr(vcpu_module, "_ioctl", counting)
    with kvm.Kvm() as k:
        assert k.supported_cpuid() == first
    with Machine(guests.SERIAL_HELLO) as m:
        assert m.run().stopped == "hlt"
    assert ioctls.KVM_GET_SUPPORTED_CPUID not in asked and ioctls.KVM_SET_CPUID2 in asked
    assert cpuid._SUPPORTED


def test_every_machine_offers_its_guest_the_hypervisor_leaves():
    # The guests' CPUID table is built once per process: the second Machine must get it too.
    from labhelper.kvm.cpuid import CPUID_HYPERVISOR
    for _ in range(2):
        with Machine(guests.CPUID_PROBE) as m:
            leaf1_ecx, *name = m.run().reports
        assert leaf1_ecx & CPUID_HYPERVISOR
        assert b"".join(r.to_bytes(4, "little") for r in name).rstrip(b"\0") == b"KVMKVMKVM"
    with Machine(guests.CPUID_PROBE, cpuid=False) as m:
        assert not m.run().reports[0] & CPUID_HYPERVISOR        # no table given: the vCPU's empty one


def test_a_guest_run_from_another_thread_still_times_out():
    # The kick's handler can only be installed by the main thread: importing labhelper.kvm there
    # is enough, so a worker thread's spinning guest is still kicked at its deadline. In a fresh
    # process, where no Machine has run yet; a hang (the old behaviour) fails by the timeout.
    code = textwrap.dedent("""
        import threading
        from labhelper import kvm
        result = []
        def work():
            with kvm.Machine(kvm.guests.SPIN) as m:
                result.append(m.run(timeout=0.3).stopped)
        t = threading.Thread(target=work, daemon=True)
        t.start()
        t.join(5)
        print(result)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == "['timeout']", (r.stdout, r.stderr)


def test_close_all_leaves_no_fd_and_a_closed_stepper_refuses():
    from labhelper.teach.stepper import Stepper
    s = Stepper(guests.SERIAL_HELLO)
    s.step()
    m = Machine(guests.SERIAL_HELLO)
    bare = kvm.Kvm()
    vm = bare.create_vm()
    # Two machines (/dev/kvm, VM, vCPU each) and a bare /dev/kvm + VM; before Python 3.13 each
    # kvm_run mapping also holds a dup() of its vCPU fd.
    assert len(kvm.open_fds()) >= 3 * 2 + 2
    closed = kvm.close_all()
    assert closed.vcpus >= 2 and closed.vms >= 3 and closed.systems >= 3, closed
    assert kvm.open_fds() == [] and m.closed and s.machine.closed and vm.closed and bare.closed
    with pytest.raises(LabError, match=r"closed: call reset\(\)"):
        s.step()
    s.reset()                                       # a fresh VM, on purpose
    assert s.step().number == 1
    s.close()


@pytest.mark.parametrize("name", sorted(guests.EXPECTED))
def test_the_notebooks_reference_outputs_are_true(name):
    # Without /dev/kvm, chapter 02 prints guests.reference(name) instead of running the guest.
    expected = guests.EXPECTED[name]
    mode = "long" if name.startswith("LONG") else "real"
    if mode == "long" and not _long_mode()[0]:
        pytest.skip(capabilities.reason("kvm-long-mode", f"this host refuses 64-bit guests: {_long_mode()[1]}"))
    if name == "LONG_SYSCALLS" and capabilities.kvm_flavour() == "kvm_pvm":
        # PVM runs the system calls of PVM-aware guest kernels only; the guest stage (kvm_amd) runs this one.
        with Machine(kvm.assemble(guests.LONG_SYSCALLS, mode="long")) as m:
            assert m.run(check=False).stopped == "KVM_EXIT_SHUTDOWN"
        pytest.skip(capabilities.reason("n/a", "kvm_pvm: a guest kernel not built for PVM cannot take system calls; "
                                               "checked on kvm_amd in the guest stage"))
    with Machine(kvm.assemble(getattr(guests, name), mode=mode)) as m:
        r = m.run()
    assert (r.output, r.counts) == (expected.output, expected.counts)
    if expected.reports:
        assert r.reports == expected.reports
    assert guests.reference(name).startswith(f"{r.exits} exits (")


def test_an_interrupt_that_misses_kvm_run_surfaces_within_a_tick():
    # The race the periodic kick exists for: Python has taken the SIGINT (its flag is set) but the
    # thread running the guest was not interrupted, so KVM_RUN goes on. Here the SIGINT is sent to
    # another thread, which catches it, exactly as if it had landed just before KVM_RUN began.
    # Without the kick, KeyboardInterrupt would wait for the guest's next exit: the 3 s deadline.
    def catch_sigint_here():
        time.sleep(0.2)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
    helper = threading.Thread(target=catch_sigint_here)
    m = Machine(guests.SPIN)
    t0 = time.monotonic()
    helper.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            m.run(timeout=3.0)
    finally:
        helper.join()
    took = time.monotonic() - t0
    assert took < 0.2 + scaled(1.0), f"the interrupt surfaced after {took:.2f} s"
    assert m.closed


@pytest.fixture(params=["fcntl", "ctypes"])
def run_ioctl(request, monkeypatch):
    """Both ways KVM_RUN is called (syscalls.ioctl_noarg: fcntl.ioctl before Python 3.14, ctypes
    from 3.14 on): the same exits, interruptions and errors, whichever this Python uses."""
    import fcntl

    from labhelper import syscalls
    from labhelper.kvm import vcpu
    if request.param == "fcntl" and sys.version_info >= (3, 14):
        pytest.skip(capabilities.reason("n/a", "fcntl.ioctl retries EINTR from Python 3.14 on (gh-132742), so it is not used there"))
    impl = {"fcntl": fcntl.ioctl, "ctypes": syscalls._ioctl_noarg_ctypes}[request.param]
    monkeypatch.setattr(vcpu, "_ioctl_noarg", impl)
    # A path that retried EINTR would spin forever on a kicked vCPU: end the run with a traceback
    # (and a failure) instead of hanging the whole suite.
    faulthandler.dump_traceback_later(60, exit=True)
    yield request.param
    faulthandler.cancel_dump_traceback_later()


def test_both_kvm_run_paths_exit_interrupt_and_fail_alike(run_ioctl):
    with Machine(guests.SERIAL_HELLO) as m:
        r = m.run()
        expected = guests.EXPECTED["SERIAL_HELLO"]
        assert (r.stopped, r.output, r.counts) == ("hlt", expected.output, expected.counts)
    with Machine(guests.SPIN) as m:
        m.vcpu.set_immediate_exit(True)
        assert m.vcpu.run() == kvm.Interrupted() and m.vcpu.interruptions == 1 and m.vcpu.exits == 0
        m.vcpu.set_immediate_exit(False)
        t0 = time.monotonic()
        assert m.run(timeout=0.25).stopped == "timeout" and time.monotonic() - t0 < scaled(1.0)
    m = Machine(guests.SPIN)
    with sigint_after(0.2):
        m.run()
    assert m.closed
    with pytest.raises(LabError, match="vCPU is closed"):
        m.vcpu.run()


def test_a_signal_handlers_exception_comes_out_of_kvm_run_unchanged(run_ioctl):
    # Not every signal is the watchdog's: an exception that another handler raises while the
    # guest runs (here SIGALRM's) must reach the caller as itself, not as a KVM_RUN error.
    def alarm(signum, frame):
        raise TimeoutError("the notebook's own alarm")
    previous = signal.signal(signal.SIGALRM, alarm)
    try:
        with Machine(guests.SPIN) as m:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(TimeoutError, match="own alarm"):
                m.run()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_kvm_run_on_a_wrong_fd_names_the_call(run_ioctl):
    with Machine(guests.SERIAL_HELLO) as m:
        real = m.vcpu._fd
        with open(os.devnull) as null:
            m.vcpu._fd = null.fileno()          # not a vCPU: the kernel answers ENOTTY
            try:
                with pytest.raises(SyscallError) as info:
                    m.vcpu.run()
            finally:
                m.vcpu._fd = real
    assert info.value.errno == errno.ENOTTY and "KVM_RUN" in str(info.value)


# --- issue 10: the VMM under load and from two threads ---------------------------------------------

def test_a_guest_that_reports_forever_keeps_only_the_last_values():
    # One `out` to the report port per exit: a Machine kept every value (15.6 MB per million).
    prog = kvm.assemble("    mov ax, 0\nagain:\n    inc ax\n    out 0x10, ax\n    jmp again\n")
    with Machine(prog) as m:
        r = m.run(max_exits=3 * machine_module.REPORTS_KEPT)
        assert r.exits == 3 * machine_module.REPORTS_KEPT and m.reports.total == r.exits
        assert len(m.reports) == machine_module.REPORTS_KEPT == len(r.reports)
        assert r.reports[-1] == r.exits & 0xFFFF                        # the newest are the ones kept
        again = m.run(max_exits=5)
        assert again.reports == tuple((r.exits + i) & 0xFFFF for i in range(1, 6))


def test_the_largest_guest_memory_is_not_refused_by_a_default_device():
    # The default MMIO UART sat at 0xD0000, inside any memory over 832 KiB.
    with Machine(guests.SERIAL_HELLO, memory=kvm.MEMORY_CAP) as m:
        assert m.run().text == "Hello from a real-mode guest!\n"
        assert m.device("mmio-uart").base >= kvm.MEMORY_CAP
    with Machine(guests.MMIO_HELLO) as m:                               # small: where the guest expects it
        assert m.device("mmio-uart").base == guests.MMIO_BASE and m.run().text


def test_closing_a_machine_from_another_thread_stops_its_run_with_a_clear_error():
    m = Machine(guests.SPIN)
    result = []

    def runner():
        try:
            m.run()
            result.append("returned")
        except Exception as exc:  # noqa: BLE001 - the test looks at what the running thread got
            result.append(exc)
    t = threading.Thread(target=runner)
    t.start()
    time.sleep(0.3)                              # spinning inside KVM_RUN
    m.close()
    t.join(scaled(5))
    assert not t.is_alive() and m.closed and kvm.open_fds() == []
    (got,) = result
    assert isinstance(got, LabError) and "closed by another thread" in str(got), repr(got)

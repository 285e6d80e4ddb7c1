"""Chapter 08's measurements against the real kernel: a kernel booted to its init under QEMU
(and a bad kernel refused, no QEMU left), the start, memory and system call measurements in the
relations the chapter relies on, a VM's own system calls without exits (kvm_intel/kvm_amd: the
guest stage) or refused by name (kvm_pvm), and the runtimes side by side, nothing left."""
from __future__ import annotations

import os
import re

import pytest

import capabilities
from labhelper import cleanup, comparison, images, mounts, overlay
from labhelper.errors import LabError, RequirementError


def _qemus() -> list[int]:
    """QEMU processes of comparison.boot (their initrd is in a labhelper-boot-* folder)."""
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"qemu-system-x86_64") and any(b"labhelper-boot-" in a for a in argv):
            found.append(int(pid))
    return found


def test_a_real_kernel_boots_to_its_init_and_qemu_ends():
    # (Not in the guest stage, to keep `make test` under 15 minutes: the lab VM stage boots a
    # kernel with KVM, tests/labvm/test_labvm.py::test_chapter_08_boots_a_kernel_under_kvm_in_the_vm.)
    capabilities.need("qemu", "chapter 08 boots a kernel with QEMU (apt-get install qemu-system-x86)")
    capabilities.need("kernel", "chapter 08 boots a kernel image")
    capabilities.need("busybox")
    booted = comparison.boot()
    assert re.fullmatch(r"\d+\.\d+\S*", booted.version), booted
    assert booted.accelerator == comparison.accelerator()[0]
    assert 0 < booted.kernel_uptime < booted.to_init               # QEMU and firmware come first
    assert booted.qemu_rss > 0 and booted.guest_memory == 256 << 20
    assert repr(booted).startswith(f"Boot(Linux {booted.version} under {booted.accelerator}")
    assert not _qemus()


def test_a_bad_kernel_or_none_is_refused_and_leaves_no_qemu(tmp_path):
    capabilities.need("qemu")
    capabilities.need("busybox")
    with pytest.raises(RequirementError, match="no kernel image to boot"):
        comparison.boot(kernel=str(tmp_path / "no-such-vmlinuz"))
    with pytest.raises(LabError, match="did not reach its init"):
        comparison.boot(kernel="/bin/busybox", timeout=30)           # not a kernel: QEMU says so and ends
    assert not _qemus()


def test_a_container_starts_lives_and_is_charged_less_than_a_vm(bb):
    before = cleanup.census().names()
    life = comparison.container_life(bb, 3)
    assert len(life.samples) == 3 and 0 < life.median < 10
    charged = comparison.container_memory(bb)
    assert 0 < charged < 64 << 20
    path = comparison.syscall_path(samples=10, batch=50)
    keys = [c.key for c in path]
    assert keys[:2] == ["getpid", "container_getpid"]
    if capabilities.probe("kvm")[0]:
        assert keys[2] == "vm_exit" and path.ratio("vm_exit", "container_getpid") > 1
    assert cleanup.census().names() == before


@pytest.mark.kvm
def test_a_vms_own_system_calls_make_no_exit_or_are_refused_by_name():
    capabilities.need("kvm")
    capabilities.need("binutils", "the guest is assembled with GNU as")
    if capabilities.kvm_flavour() == "kvm_pvm":
        with pytest.raises(RequirementError, match="kvm_pvm"):
            comparison.vm_syscalls(few=10, many=100, repeats=1)
        return
    measured = comparison.vm_syscalls(few=100, many=20100, repeats=1)
    assert measured.calls == 20100 and sum(measured.exits.values()) == 2      # the report and hlt, no more
    assert "IoOut: 1" in repr(measured) and "Hlt: 1" in repr(measured)


def test_labhelper_runc_and_crun_on_one_root(bb, uid):
    # (Not in the guest stage: the interop test runs runc and crun there, on cgroup v2.)
    capabilities.need("runc")
    capabilities.need("crun")
    before = cleanup.census().names()
    owner = f"cmptest-{uid}"                 # not the store's owner: its cleanup leaves the store
    base = mounts.make_dir(f"/var/lib/labhelper/cmp-{uid}", owner=owner)
    try:
        for sub in ("upper", "work", "rootfs", "bundles"):
            os.mkdir(f"{base}/{sub}")
        img = images.busybox_image(bb)
        root = overlay.mount(f"{base}/rootfs", [bb.layer_dir(img.layers[0].chain_id)], f"{base}/upper",
                             f"{base}/work", owner=owner)
        starts = comparison.runtime_starts(root.target, f"{base}/bundles", rounds=1, per_round=2, owner=owner)
        root.unmount()
        assert set(starts) == {"labhelper", "runc", "crun"}
        assert all(len(t.samples) == 1 and 0 < t.median < 10 for t in starts.values()), starts
    finally:
        cleanup.cleanup(owner=owner)
    assert cleanup.census().names() == before

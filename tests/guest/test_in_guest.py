"""Checks that only mean something inside the guest stage (tests/guest/boot.sh): the learners'
kind of kernel, pure cgroup v2 and a hardware-assisted KVM (kvm_amd on QEMU's emulated AMD-V),
seen as such by labhelper. Elsewhere they do not apply, and skip saying so."""
import os

import capabilities
import pytest

from labhelper import cleanup, host
from labhelper.teach import lab

pytestmark = [pytest.mark.guest,
              pytest.mark.skipif(os.environ.get("LABHELPER_GUEST") != "1",
                                 reason=capabilities.reason("n/a", "runs in the guest stage only (tests/guest)"))]


def test_the_doctor_sees_pure_cgroup_v2_and_kvm_amd():
    f = host.facts()
    assert f.cgroup.mode == "v2" == capabilities.cgroup_mode()
    assert {"cpu", "memory", "pids", "io"} <= set(f.cgroup.controllers(2))
    assert f.kvm.flavour == "kvm_amd" == capabilities.kvm_flavour() and f.kvm.openable
    assert "svm" in f.kvm.cpu_flags and f.kvm.in_vm
    report = lab.doctor()
    assert report.ok, report.text()
    assert host.virtualization_case(f).case == "nested"


def test_the_lab_folders_given_as_tmpfs_are_the_lab_s_not_foreign_mounts():
    # boot.sh mounts a tmpfs named "labhelper" on each lab folder: labhelper must neither list
    # them as objects to remove nor report them as foreign.
    c = cleanup.census()
    assert not any(o.kind == "mount" and o.name in ("/run/labhelper", "/var/lib/labhelper") for o in c)
    assert not any("lab folder" in p for p in c.problems), c.problems

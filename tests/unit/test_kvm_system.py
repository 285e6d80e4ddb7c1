"""labhelper.kvm.system without /dev/kvm: an absent device, or a file that is not KVM, is a
requirement error that says so, and leaves no fd behind."""
from __future__ import annotations

import os

import pytest

from labhelper import kvm
from labhelper.errors import RequirementError

NOWHERE = "/nonexistent/kvm"


def fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))



def test_absent_device_is_a_requirement_and_leaves_nothing(monkeypatch):
    monkeypatch.setenv("LABHELPER_KVM_DEVICE", NOWHERE)
    before = fds()
    with pytest.raises(kvm.KvmUnavailable) as info:
        kvm.Kvm()
    assert isinstance(info.value, RequirementError) and info.value.missing == ("kvm",)
    assert NOWHERE in str(info.value) and "hint:" in str(info.value)
    ok, why = kvm.available()
    assert ok is False and "does not exist" in why
    assert fds() == before


def test_a_file_that_is_not_kvm_is_refused_and_closed(tmp_path):
    fake = tmp_path / "kvm"
    fake.write_bytes(b"")
    before = fds()
    with pytest.raises(kvm.KvmUnavailable, match="not a KVM device"):
        kvm.Kvm(str(fake))
    with pytest.raises(kvm.KvmUnavailable, match="cannot be opened"):
        kvm.Kvm(str(tmp_path))                               # a directory: EISDIR
    assert fds() == before

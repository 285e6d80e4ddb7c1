import platform
import re

import capabilities
import pytest

from labhelper import host
from labhelper.errors import NotDisposableError, RequirementError

from fake import V1_MOUNTINFO, V2_MOUNTINFO, proc_tree, write


def test_hybrid_cgroups(tmp_path):
    proc = proc_tree(tmp_path, V1_MOUNTINFO)
    write(tmp_path / "sys/fs/cgroup/unified/cgroup.controllers", "")
    info = host.cgroup_info(proc, fs_root=tmp_path)
    assert info.mode == "hybrid"
    assert info.controllers(1) == ("cpu", "cpuacct", "memory", "pids")  # name=systemd is no controller
    assert info.controllers(2) == ()
    assert [h.mountpoint for h in info.hierarchies if h.version == 2] == ["/sys/fs/cgroup/unified"]


def test_pure_v2(tmp_path):
    proc = proc_tree(tmp_path, V2_MOUNTINFO)
    write(tmp_path / "sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n")
    info = host.cgroup_info(proc, fs_root=tmp_path)
    assert info.mode == "v2"
    assert "memory" in info.controllers(2) and info.controllers(1) == ()


def test_v1_only_and_none(tmp_path):
    v1 = "\n".join(l for l in V1_MOUNTINFO.splitlines() if "cgroup2" not in l)
    assert host.cgroup_info(proc_tree(tmp_path / "a", v1), fs_root=tmp_path).mode == "v1"
    assert host.cgroup_info(proc_tree(tmp_path / "b", "garbage line\n"), fs_root=tmp_path).mode == "none"


@pytest.mark.parametrize("module,nested,flags,expect_nested", [
    ("kvm_intel", "Y", "vmx hypervisor", True),
    ("kvm_amd", "0", "svm", False),
    ("kvm_pvm", None, "hypervisor", False),
])
def test_kvm_flavour(tmp_path, module, nested, flags, expect_nested):
    sys_ = tmp_path / "sys"
    (sys_ / "module" / module / "parameters").mkdir(parents=True)
    if nested is not None:
        write(sys_ / "module" / module / "parameters" / "nested", nested + "\n")
    proc = tmp_path / "proc"
    write(proc / "cpuinfo", f"processor\t: 0\nflags\t\t: fpu sse2 {flags} lm\n")
    info = host.kvm_info(device=str(tmp_path / "kvm"), proc=proc, sys_=sys_)
    assert info.flavour == module and info.nested is expect_nested
    assert not info.exists and not info.openable and "does not exist" in info.error
    assert info.in_vm == ("hypervisor" in flags)


def test_kvm_device_override_pretends_absent(monkeypatch, tmp_path):
    monkeypatch.setenv("LABHELPER_KVM_DEVICE", str(tmp_path / "nope"))
    assert not host.kvm_info().openable


def test_disposable_reason(tmp_path):
    marker = tmp_path / "disposable"
    assert host.disposable_reason({}, marker) is None
    assert host.disposable_reason({"LABHELPER_DISPOSABLE": "0"}, marker) is None
    assert "LABHELPER_DISPOSABLE=1" in host.disposable_reason({"LABHELPER_DISPOSABLE": "1"}, marker)
    marker.touch()
    assert str(marker) in host.disposable_reason({}, marker)


def test_guard_refuses_with_explanation(tmp_path):
    with pytest.raises(NotDisposableError) as info:
        host.guard("mount a tmpfs", env={}, marker=tmp_path / "absent")
    text = str(info.value)
    assert "refused to mount a tmpfs" in text and "disposable" in text and "LABHELPER_DISPOSABLE=1" in text
    host.guard("mount a tmpfs", env={"LABHELPER_DISPOSABLE": "1"}, marker=tmp_path / "absent")


def _facts(**changes):
    f = host.facts()
    import dataclasses
    return dataclasses.replace(f, **changes)


def test_require_names_what_is_missing_and_the_fix():
    f = _facts(root=False, strace=None)
    with pytest.raises(RequirementError) as info:
        host.require("root", "strace", "python", f=f)
    text = str(info.value)
    assert info.value.missing == ("root", "strace")
    assert "root privileges" in text and "the strace program" in text and "apt-get install strace" in text
    assert "python" not in info.value.missing


def test_require_unknown_name():
    with pytest.raises(KeyError, match="unknown requirement"):
        host.require("warp-drive")


def test_ready_prints_why_it_skips(capsys):
    assert host.ready("strace", f=_facts(strace="/usr/bin/strace"))
    assert not host.ready("strace", f=_facts(strace=None))
    assert "skipped: this needs the strace program" in capsys.readouterr().out


@pytest.mark.parametrize("flavour,flags,openable,case", [
    ("kvm_intel", ("hypervisor", "vmx"), True, "nested"),
    ("kvm_amd", ("svm",), True, "bare-metal"),
    ("kvm_pvm", ("hypervisor",), True, "pvm"),
    ("none", ("hypervisor",), False, "vm-no-nested"),
    ("none", ("vmx",), False, "kvm-not-loaded"),
    ("none", (), False, "no-kvm"),
])
def test_virtualization_case(flavour, flags, openable, case):
    kvm = host.KvmInfo("/dev/kvm", openable, openable, flavour, flags, None, None if openable else "absent")
    assert host.virtualization_case(_facts(kvm=kvm)).case == case


@pytest.mark.guest
def test_facts_agree_with_independent_probes():
    """The doctor says what tests/capabilities.py finds on its own: if labhelper wrongly said "no
    KVM" (or no overlay, no strace), the tests that need them still run by the probes; this
    test is where the disagreement fails."""
    f = host.facts()
    assert f.root == capabilities.have("root")
    assert f.kvm.openable == capabilities.have("kvm"), (f.kvm, capabilities.probe("kvm"))
    assert f.overlayfs == capabilities.have("overlay"), capabilities.probe("overlay")
    assert (f.strace is not None) == capabilities.have("strace")
    assert f.cgroup.mode == capabilities.cgroup_mode() and f.kvm.flavour == capabilities.kvm_flavour()
    assert f.kernel_version == tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", platform.release()).groups())


def test_overlayfs_as_a_module_not_yet_loaded(tmp_path):
    proc = tmp_path / "proc"
    write(proc / "filesystems", "nodev\tproc\n\text4\n")
    mods = tmp_path / "modules" / platform.release()
    assert host.overlayfs_where(proc, tmp_path / "modules") is None
    write(mods / "modules.dep", "kernel/fs/overlayfs/overlay.ko.xz:\nkernel/fs/ext4/ext4.ko:\n")
    assert "modules.dep" in host.overlayfs_where(proc, tmp_path / "modules")
    write(proc / "filesystems", "nodev\toverlay\n")
    assert host.overlayfs_where(proc, tmp_path / "modules") == "in /proc/filesystems"


def test_not_root_is_told_to_be_root_not_to_enable_nesting():
    import errno
    kvm = host.KvmInfo("/dev/kvm", True, False, "kvm_intel", ("hypervisor", "vmx"), True,
                       "open(/dev/kvm): Permission denied", errno.EACCES)
    case = host.virtualization_case(_facts(kvm=kvm))
    assert case.case == "kvm-no-permission" and "root" in case.consequence


def test_arm64_skips_chapter_02_live_cells():
    kvm = host.KvmInfo("/dev/kvm", True, True, "none", (), None, None, None, "aarch64", "Parallels")
    f = _facts(kvm=kvm)
    assert host.virtualization_case(f).case == "not-x86"
    assert not host.ready("kvm", f=f, quiet=True)


@pytest.mark.parametrize("vendor,product,name", [
    ("innotek GmbH", "VirtualBox", "VirtualBox"),
    ("QEMU", "Standard PC (Q35 + ICH9, 2009)", "QEMU/KVM (libvirt)"),
    ("Microsoft Corporation", "Virtual Machine", "Hyper-V"),
    ("Dell Inc.", "PowerEdge R640", None),
])
def test_dmi_names_the_hypervisor(tmp_path, vendor, product, name):
    write(tmp_path / "sys/class/dmi/id/sys_vendor", vendor + "\n")
    write(tmp_path / "sys/class/dmi/id/product_name", product + "\n")
    assert host.dmi_hypervisor(tmp_path / "sys") == name


def test_vm_without_nested_gets_the_hypervisors_own_fix():
    kvm = host.KvmInfo("/dev/kvm", False, False, "none", ("hypervisor",), None, "absent", None, "x86_64", "VirtualBox")
    case = host.virtualization_case(_facts(kvm=kvm))
    assert case.case == "vm-no-nested" and "--nested-hw-virt on" in case.consequence and "VirtualBox" in case.summary


def test_mountinfo_with_odd_bytes_does_not_crash(tmp_path):
    odd = b"40 25 0:60 / /mnt/caf\xe9\\040x rw - tmpfs tmpfs rw\n"
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_bytes(V2_MOUNTINFO.encode() + odd)
    write(tmp_path / "sys/fs/cgroup/cgroup.controllers", "memory\n")
    assert host.cgroup_info(proc, fs_root=tmp_path).mode == "v2"


def test_module_loaded_but_device_missing():
    kvm = host.KvmInfo("/nonexistent/kvm", False, False, "kvm_pvm", ("hypervisor",), False,
                       "/nonexistent/kvm does not exist")
    assert host.virtualization_case(_facts(kvm=kvm)).case == "no-device"


def test_kvm_fix_follows_the_case(capsys):
    kvm = host.KvmInfo("/nonexistent/kvm", False, False, "kvm_pvm", ("hypervisor",), False, "absent")
    assert not host.ready("kvm", f=_facts(kvm=kvm))
    out = capsys.readouterr().out
    assert "ls -l /dev/kvm" in out and "nested" not in out


def test_userns_restriction_is_read_and_reported(tmp_path):
    proc = proc_tree(tmp_path, V2_MOUNTINFO)
    write(proc / "sys/user/max_user_namespaces", "63000\n")
    (proc / "self" / "ns").mkdir(parents=True)
    for name in ("mnt", "uts", "ipc", "pid", "net", "user", "cgroup"):
        (proc / "self" / "ns" / name).touch()
    f = host.facts(proc=proc)
    assert f.user_namespaces and not f.userns_restricted
    assert not host.ready("namespaces", f=f, quiet=True)         # no time namespace: a kernel before 5.6
    (proc / "self" / "ns" / "time").touch()
    write(proc / "sys/kernel/apparmor_restrict_unprivileged_userns", "1\n")
    f = host.facts(proc=proc)
    assert f.userns_restricted and host.ready("namespaces", "userns", f=f, quiet=True)
    import dataclasses
    old = dataclasses.replace(f, kernel="5.7.0", kernel_version=(5, 7))
    row = next(c for c in host.checks(old) if c.name == "namespaces")
    assert not row.ok and "5.8" in row.found                      # setns(2) takes a pidfd from 5.8 on
    row = next(c for c in host.checks(f) if c.name == "userns")
    assert row.ok and "AppArmor" in row.found and "apparmor_restrict_unprivileged_userns=1" in row.found

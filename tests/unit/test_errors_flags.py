import errno
import pickle

import pytest

from labhelper import syscalls
from labhelper.errors import LabError, RequirementError, SyscallError, hint_for
from labhelper.flags import CLONE_NEWNS, CLONE_NEWUTS, CloneFlags, MountFlags, UmountFlags


def test_flags_print_by_c_name():
    f = CLONE_NEWUTS | CLONE_NEWNS
    assert str(f) == repr(f) == f"{f}" == "CLONE_NEWNS|CLONE_NEWUTS"
    assert str(CloneFlags(0)) == "0"
    assert str(MountFlags.MS_BIND | MountFlags.MS_REC) == "MS_BIND|MS_REC"
    assert str(UmountFlags.MNT_DETACH | UmountFlags.UMOUNT_NOFOLLOW) == "MNT_DETACH|UMOUNT_NOFOLLOW"


def test_unknown_bits_are_shown_not_dropped():
    assert str(MountFlags(MountFlags.MS_RDONLY | (1 << 30))) == "MS_RDONLY|0x40000000"


def test_flag_values_are_the_kernels():
    # include/uapi/linux/sched.h and mount.h
    assert CloneFlags.CLONE_NEWNS == 0x20000 and CloneFlags.CLONE_NEWPID == 0x20000000
    assert MountFlags.MS_BIND == 4096 and MountFlags.MS_PRIVATE == 1 << 18


def test_syscall_error_names_call_arguments_and_errno():
    e = SyscallError("mount", {"source": "none", "target": "/x", "flags": MountFlags.MS_BIND}, errno.EPERM)
    text = str(e)
    assert text.startswith("mount(source='none', target='/x', flags=MS_BIND): EPERM (Operation not permitted)")
    assert "hint:" in text and "root" in text
    assert isinstance(e, OSError) and e.errno == errno.EPERM and e.errno_name == "EPERM"


def test_syscall_error_specific_hint_wins_over_generic():
    assert "multi-threaded" in hint_for("unshare", errno.EINVAL)
    assert hint_for("whatever", errno.EDOM) is None
    assert "hint" not in str(SyscallError("x", {}, errno.EDOM))


def test_errors_survive_pickle_from_a_child():
    e = pickle.loads(pickle.dumps(SyscallError("umount2", {"target": "/a"}, errno.EINVAL)))
    assert isinstance(e, SyscallError) and e.call == "umount2" and e.errno == errno.EINVAL
    r = pickle.loads(pickle.dumps(RequirementError("no kvm", hint="enable it", missing=("kvm",))))
    assert r.hint == "enable it" and r.missing == ("kvm",)
    l2 = pickle.loads(pickle.dumps(LabError("m", hint="h")))
    assert str(l2) == "m\n  hint: h"


def test_a_real_failed_call_raises_syscall_error(tmp_path):
    (tmp_path / "not-a-mount").mkdir()
    with pytest.raises(SyscallError) as info:
        syscalls.umount2(tmp_path / "not-a-mount")
    assert info.value.call == "umount2" and info.value.errno in (errno.EINVAL, errno.EPERM)
    assert str(tmp_path) in str(info.value)


def test_syscall_table():
    assert syscalls.syscall_number("getpid", "x86_64") == 39
    assert syscalls.syscall_number("getpid", "aarch64") == 172
    with pytest.raises(KeyError, match="aarch64 has mkdirat but no mkdir"):
        syscalls.syscall_number("mkdir", "aarch64")
    with pytest.raises(NotImplementedError, match="riscv64"):
        syscalls.syscall_number("getpid", "riscv64")


def test_raw_syscall_getpid_is_our_pid():
    import os
    assert syscalls.raw_syscall("getpid") == os.getpid()


def test_eperm_hint_depends_on_who_is_refused(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert "run it as root" in hint_for("mount", errno.EPERM)
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert "refused even root" in hint_for("mount", errno.EPERM)


def test_raw_syscall_errors_name_the_arguments():
    with pytest.raises(SyscallError) as info:
        syscalls.raw_syscall("write", 999, b"hello", 5)
    assert str(info.value).startswith("write(fd=999, buf=b'hello', count=5): EBADF")
    import ctypes
    with pytest.raises(SyscallError) as info:
        syscalls.raw_syscall("read", 999, ctypes.create_string_buffer(8), 8)
    assert "buf=<buffer 8 bytes>" in str(info.value)


def test_ioctl_fast_path_reports_errors():
    with pytest.raises(SyscallError) as info:
        syscalls.ioctl(999, 0x5401, 0, name="TCGETS")
    assert str(info.value).startswith("ioctl(fd=999, request='TCGETS'): EBADF")


def test_ioctl_noarg_raises_oserror_with_the_errno():
    # KVM_RUN's path: an OSError (EBADF here), whichever implementation this Python uses.
    import fcntl
    import sys
    for impl in (syscalls.ioctl_noarg, syscalls._ioctl_noarg_ctypes):
        with pytest.raises(OSError) as info:
            impl(999, 0x5401)
        assert info.value.errno == errno.EBADF
    # fcntl.ioctl retries EINTR from Python 3.14 on, which would swallow the KVM watchdog's kick.
    assert (syscalls.ioctl_noarg is fcntl.ioctl) == (sys.version_info < (3, 14))

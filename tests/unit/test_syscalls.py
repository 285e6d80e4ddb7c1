"""The one ctypes boundary: system calls by number, their errors, the ioctl paths."""
import errno

import pytest

from labhelper import syscalls
from labhelper.errors import SyscallError


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

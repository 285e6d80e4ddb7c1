"""Errors that name the call, its arguments and the errno, with a hint; refusals; pickling."""
import errno
import pickle

from labhelper import syscalls
from labhelper.errors import LabError, Refused, RequirementError, Shown, SyscallError, hint_for
from labhelper.flags import MountFlags


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


def test_eperm_hint_depends_on_who_is_refused(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert "run it as root" in hint_for("mount", errno.EPERM)
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert "refused even root" in hint_for("mount", errno.EPERM)


def test_refused_is_a_lab_error_and_a_value_error():
    exc = Refused("refusing to mount '/': labhelper does that only below /run/labhelper", hint="pick a lab path")
    assert isinstance(exc, LabError) and isinstance(exc, ValueError)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is Refused and str(back) == str(exc) and back.hint == "pick a lab path"


def test_shown_values_print_bare_and_arguments_can_be_shown_otherwise():
    exc = syscalls.error("mmap", {"prot": Shown("PROT_READ|PROT_WRITE"), "length": 4096}, errno.ENOMEM)
    assert str(exc).startswith("mmap(prot=PROT_READ|PROT_WRITE, length=4096): ENOMEM")
    moved = SyscallError("mount", {"target": "/proc/self/fd/7", "fstype": "tmpfs"}, errno.EPERM)
    shown = moved.with_arguments(target="/run/labhelper/x")
    assert "target='/run/labhelper/x'" in str(shown) and shown.errno == errno.EPERM and shown.hint == moved.hint

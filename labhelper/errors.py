"""Errors that say what went wrong in the kernel's own words, and what to do about it.

This is the floor of the package: it imports nothing from labhelper. Every failed system call
becomes a :class:`SyscallError` that names the call, its arguments (flags by name), the errno
name, and a hint when the fix is known, e.g.::

    mount(source='none', target='/mnt', fstype='tmpfs', flags=0): EPERM (Operation not permitted)
      hint: mounting needs CAP_SYS_ADMIN: run as root inside the lab VM
"""
from __future__ import annotations

import errno as _errno
import os

__all__ = [
    "LabError", "Refused", "SyscallError", "RequirementError", "NotDisposableError",
    "ChildError", "ChildTimeout", "LedgerError", "FaultInjected", "Shown", "hint_for", "errno_name",
]


class LabError(Exception):
    """Base class for every error labhelper raises on purpose.

    ``hint`` says what the learner can do about it; it is printed on its own line.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message

    def __reduce__(self):
        # Exceptions pickle their args only; keep the hint when a child sends us one.
        return (self.__class__, (self.message, self.hint))


class Refused(LabError, ValueError):
    """A request refused before any system call: bad input (a name, a size, a limit), or a path
    or object that is not the lab's to touch. Nothing was changed.

    It is also a ValueError, so ``except ValueError`` catches bad input as Python code expects.
    """


class Shown(str):
    """A value shown bare in an error message: a C constant's name (``prot=PROT_READ``) or a
    description (``buf=<buffer 64 bytes>``), instead of a quoted Python string."""

    def __repr__(self) -> str:
        return str(self)


# Hints for (call, errno) pairs whose cause is well known. "*" matches any call.
_HINTS: dict[tuple[str, int], str] = {
    ("*", _errno.EPERM): "this needs root (CAP_SYS_ADMIN or similar): run it as root inside the lab VM",
    ("*", _errno.EACCES): "permission denied: run as root inside the lab VM, and check the path's mode",
    ("unshare", _errno.EINVAL): "unshare(CLONE_NEWUSER) is refused in a multi-threaded process: "
                                "labhelper does it in a forked child (process.run_in_child)",
    ("unshare", _errno.ENOSPC): "the namespace limit is reached: see /proc/sys/user/max_*_namespaces",
    ("setns", _errno.EINVAL): "the file is not a namespace of that type, or this process is multi-threaded",
    ("mount", _errno.ENODEV): "the kernel does not know this filesystem type: see /proc/filesystems",
    ("mount", _errno.ENOENT): "the mount point or source does not exist: create it first",
    ("mount", _errno.EBUSY): "something is already mounted there, or the device is in use",
    ("umount2", _errno.EINVAL): "nothing is mounted there (already unmounted?)",
    ("umount2", _errno.EBUSY): "the mount is in use: a process has its cwd or an open file inside; "
                               "MNT_DETACH unmounts lazily",
    ("pivot_root", _errno.EINVAL): "new_root must be a mount point, put_old must be under it, and the "
                                   "current root must not be shared (make / private in a new mount namespace)",
    ("open", _errno.ENOENT): "the file does not exist on this machine",
    ("ioctl", _errno.ENOTTY): "this file does not understand that ioctl request",
    ("rmdir", _errno.EBUSY): "the cgroup still has processes, or the directory is a mount point",
    ("rmdir", _errno.ENOTEMPTY): "the directory is not empty (a cgroup still has children)",
    # rtnetlink requests (chapter 04): the errno alone is ambiguous, EEXIST from RTM_NEWLINK is a
    # name in use, from RTM_NEWADDR an address in use.
    ("netlink RTM_NEWLINK", _errno.EEXIST): "an interface of that name exists in that namespace already: choose "
                                            "another name, or remove the old one (`labhelper cleanup` removes the lab's)",
    ("netlink RTM_NEWLINK", _errno.EOPNOTSUPP): "this kernel lacks that kind of link (its module is not loaded)",
    ("netlink RTM_NEWLINK", _errno.ENODEV): "no such interface in that namespace",
    ("netlink RTM_DELLINK", _errno.ENODEV): "no such interface in that namespace (deleted already?)",
    ("netlink RTM_GETLINK", _errno.ENODEV): "no such interface in that namespace",
    ("netlink RTM_NEWADDR", _errno.EEXIST): "that address is on this interface already",
    ("netlink RTM_NEWADDR", _errno.ENODEV): "no such interface in that namespace",
    ("netlink RTM_NEWROUTE", _errno.EEXIST): "that route exists already (a default route too?)",
    ("netlink RTM_NEWROUTE", _errno.ENETUNREACH): "the gateway is not on any subnet this namespace has: give an "
                                                  "interface an address in the gateway's subnet first, and bring it up",
    ("netlink RTM_NEWROUTE", _errno.ENODEV): "no such interface in that namespace",
    ("netlink RTM_GETROUTE", _errno.ENETUNREACH): "this namespace has no route to that address",
}


# When root itself is refused, "run as root" is no help: the cause is elsewhere.
_ROOT_REFUSED = ("the kernel refused even root: a capability is missing in this namespace (a user "
                 "namespace, or dropped capabilities), or a security module (seccomp, AppArmor) forbids it")


def hint_for(call: str, err: int) -> str | None:
    """The known fix for ``call`` failing with ``err``, or None."""
    specific = _HINTS.get((call, err))
    if specific:
        return specific
    if err in (_errno.EPERM, _errno.EACCES) and os.geteuid() == 0:
        return _ROOT_REFUSED if err == _errno.EPERM else None
    return _HINTS.get(("*", err))


def errno_name(err: int) -> str:
    return _errno.errorcode.get(err, f"errno {err}")


def _format_value(value: object) -> str:
    # Flags (enum.IntFlag subclasses from labhelper.flags) print by name; the rest by repr.
    if hasattr(value, "flag_names"):
        return value.flag_names()  # type: ignore[no-any-return,attr-defined]
    return repr(value)


class SyscallError(OSError):
    """A system call failed. It is an OSError, so ``except OSError`` and ``.errno`` still work.

    ``call`` is the call's name, ``arguments`` the arguments it got (a dict, printed in order),
    ``errno`` the kernel's answer and ``hint`` the known fix, if any.
    """

    def __init__(self, call: str, arguments: dict | None = None, err: int = 0, hint: str | None = None):
        super().__init__(err, os.strerror(err))
        self.call = call
        self.arguments = dict(arguments or {})
        self.hint = hint if hint is not None else hint_for(call, err)

    @property
    def errno_name(self) -> str:
        return errno_name(self.errno)

    def __str__(self) -> str:
        args = ", ".join(f"{k}={_format_value(v)}" for k, v in self.arguments.items())
        text = f"{self.call}({args}): {self.errno_name} ({self.strerror})"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def __reduce__(self):
        # Keep the class and its fields across the pipe from a forked child (pickle).
        return (self.__class__, (self.call, self.arguments, self.errno, self.hint))

    def with_arguments(self, **shown) -> "SyscallError":
        """The same error with some arguments shown otherwise: a mount made on
        ``/proc/self/fd/7`` (to pin the folder) is reported with the path the learner gave."""
        return self.__class__(self.call, {**self.arguments, **shown}, self.errno, self.hint)


class RequirementError(LabError):
    """This machine lacks something a step needs (host.require)."""

    def __init__(self, message: str, hint: str | None = None, missing: tuple[str, ...] = ()):
        super().__init__(message, hint)
        self.missing = tuple(missing)

    def __reduce__(self):
        return (self.__class__, (self.message, self.hint, self.missing))


class NotDisposableError(RequirementError):
    """A privileged step was refused because this machine is not declared disposable."""


class ChildError(LabError):
    """A forked child failed in a way that is not an ordinary exception (killed, lost, garbled)."""


class ChildTimeout(ChildError):
    """A forked child ran past its timeout and was killed."""


class LedgerError(LabError):
    """The ledger under /run/labhelper could not be read or written."""


class FaultInjected(LabError):
    """Raised by a test-only fault point (LABHELPER_FAULT=<step>:raise)."""

    def __init__(self, step: str):
        super().__init__(f"fault injected after step {step!r} (LABHELPER_FAULT)")
        self.step = step

    def __reduce__(self):
        return (self.__class__, (self.step,))

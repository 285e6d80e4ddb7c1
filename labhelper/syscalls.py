"""The one ctypes boundary: every direct call into libc or the kernel goes through here.

Python's ``os`` module covers many system calls (fork, waitpid, setns, pidfd_open, ...). The ones
it lacks (unshare with flags, mount, umount2, pivot_root, sethostname, prctl, ioctl with a
structure, raw ``syscall(2)``) are wrapped here, and each wrapper turns a failure into a
:class:`~labhelper.errors.SyscallError` that names the call, its arguments and the errno. The
one exception to that rule is :func:`ioctl_noarg`, KVM_RUN's path, which raises a plain OSError
for its caller to sort out (one call per VM exit: the error handling stays off the hot path).

Nothing above this module imports ctypes to *call* anything.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import partial
import platform
import signal
import sys

from .errors import Shown, SyscallError
from .flags import CloneFlags, FsconfigCmd, MountAttr, MountFlags, Prctl, UmountFlags

__all__ = [
    "SYSCALL_NUMBERS", "syscall_number", "raw_syscall", "clone", "unshare", "setns", "mount", "umount2",
    "msgget", "msgctl_rmid", "IPC_CREAT", "IPC_PRIVATE",
    "pivot_root", "sethostname", "prctl", "ioctl", "ioctl_noarg", "address_of", "check", "error",
    "fsopen", "fsconfig", "fsmount", "move_mount", "MOVE_MOUNT_F_EMPTY_PATH", "MOVE_MOUNT_T_EMPTY_PATH",
    "openat2", "RESOLVE_NO_MAGICLINKS", "RESOLVE_NO_SYMLINKS", "RESOLVE_BENEATH", "RESOLVE_IN_ROOT", "syncfs", "munmap",
    "seccomp_filter", "statx_mount_root", "statx_mount_id", "bpf",
]

# use_errno=True: ctypes saves errno right after each call, so threads cannot clobber it.
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
# Look each function up once, here: a forked child then finds it ready instead of paying for
# dlsym and for copy-on-write faults on ctypes' caches in every child.
for _name in ("syscall", "unshare", "setns", "mount", "umount2", "sethostname", "prctl", "ioctl"):
    getattr(_libc, _name)

# System call numbers differ per architecture (arch/x86/entry/syscalls/syscall_64.tbl and
# include/uapi/asm-generic/unistd.h, which aarch64 uses). Only the ones the course calls raw.
SYSCALL_NUMBERS: dict[str, dict[str, int]] = {
    "x86_64": {
        "read": 0, "write": 1, "close": 3, "getpid": 39, "uname": 63, "getppid": 110,
        "gettid": 186, "clone": 56, "mount": 165, "umount2": 166, "pivot_root": 155, "sethostname": 170,
        "unshare": 272, "setns": 308, "clock_gettime": 228, "pidfd_open": 434,
        "pidfd_send_signal": 424, "ioctl": 16, "openat": 257, "mkdir": 83, "mkdirat": 258,
        "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "openat2": 437,
    },
    "aarch64": {
        "read": 63, "write": 64, "close": 57, "getpid": 172, "uname": 160, "getppid": 173,
        "gettid": 178, "clone": 220, "mount": 40, "umount2": 39, "pivot_root": 41, "sethostname": 161,
        "unshare": 97, "setns": 268, "clock_gettime": 113, "pidfd_open": 434,
        "pidfd_send_signal": 424, "ioctl": 29, "openat": 56, "mkdirat": 34,
        "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "openat2": 437,
    },
}


# The names of each call's arguments (from its man page), so that errors read like C:
# write(fd=999, buf=b'hello', count=5): EBADF.
SYSCALL_ARGS: dict[str, tuple[str, ...]] = {
    "read": ("fd", "buf", "count"), "write": ("fd", "buf", "count"), "close": ("fd",),
    "getpid": (), "getppid": (), "gettid": (), "uname": ("buf",),
    "openat": ("dirfd", "pathname", "flags", "mode"), "mkdir": ("pathname", "mode"),
    "mkdirat": ("dirfd", "pathname", "mode"), "clock_gettime": ("clockid", "tp"),
    "ioctl": ("fd", "request", "arg"), "pidfd_open": ("pid", "flags"),
    "fsopen": ("fsname", "flags"), "fsconfig": ("fd", "cmd", "key", "value", "aux"),
    "fsmount": ("fd", "flags", "attr_flags"), "openat2": ("dirfd", "pathname", "how", "size"),
    "move_mount": ("from_dfd", "from_pathname", "to_dfd", "to_pathname", "flags"),
}

_MACHINE = platform.machine()


def syscall_number(name: str, machine: str | None = None) -> int:
    """The number of system call ``name`` on ``machine`` (default: this one)."""
    machine = machine or _MACHINE
    table = SYSCALL_NUMBERS.get(machine)
    if table is None:
        raise NotImplementedError(f"no system call table for architecture {machine!r} "
                                  f"(known: {', '.join(SYSCALL_NUMBERS)})")
    try:
        return table[name]
    except KeyError:
        others = [m for m, t in SYSCALL_NUMBERS.items() if name in t]
        note = f"; {', '.join(others)} has it" if others else ""
        if name == "mkdir" and machine == "aarch64":
            note = ": aarch64 has mkdirat but no mkdir"
        raise KeyError(f"system call {name!r} is not in the course's table for {machine}{note}") from None


def _show(value) -> object:
    # What an argument looks like in an error message: ctypes buffers by size, not by address.
    if isinstance(value, ctypes.Array):
        return Shown(f"<buffer {ctypes.sizeof(value)} bytes>")
    if isinstance(value, (bytes, bytearray)) and len(value) > 40:
        return Shown(f"{bytes(value[:32])!r}... ({len(value)} bytes)")
    return value


def error(call: str, arguments: dict, err: int, hint: str | None = None) -> SyscallError:
    """The SyscallError for ``call`` failing with ``err``: the one place where one is made.

    For calls made here through ctypes, :func:`check` uses it; for calls that Python's own
    modules make (``mmap.mmap``, ``os.open``), the caller passes the OSError's errno, so the
    learner reads the same kind of message whichever way the call went.
    """
    return SyscallError(call, arguments, err, hint)


def check(result: int, call: str, arguments: dict) -> int:
    """Raise SyscallError if a libc call returned -1; otherwise return its result."""
    if result == -1:
        raise error(call, arguments, ctypes.get_errno())
    return result


def _path(value: str | os.PathLike | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def raw_syscall(name: str, *args: int | bytes | None) -> int:
    """Make system call ``name`` directly with libc's ``syscall(2)``, by number.

    Integers, bytes (passed as pointers) and None (NULL) are accepted.
    """
    nr = syscall_number(name)
    cargs = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    result = _libc.syscall(ctypes.c_long(nr), *cargs)
    if result == -1:
        names = SYSCALL_ARGS.get(name, ())
        shown = {(names[i] if i < len(names) else f"arg{i}"): _show(a) for i, a in enumerate(args)}
        check(result, name, shown)
    return result


# The same libc, called with the GIL held (a PyDLL): clone() must run as os.fork() runs fork(2),
# with no other Python thread able to run between Python's bookkeeping before and after it.
_libc_gil_held = ctypes.PyDLL(_libc._name, use_errno=True)
_libc_gil_held.syscall.restype = ctypes.c_long


def clone(flags: CloneFlags | int, *, bookkeeping: bool = True) -> int:
    """fork(2) with flags: clone(2) with ``flags`` and SIGCHLD, made as os.fork() makes fork(2),
    Python's bookkeeping around it included (PyOS_BeforeFork, PyOS_AfterFork_Child/_Parent: the
    import lock, the at-fork hooks, the child's thread state). 0 in the child, its pid here.

    What os.fork() cannot say: CLONE_NEWPID (the child is PID 1 of a new PID namespace) and
    CLONE_PARENT (its parent is this process's parent, not this process). No stack is given, so
    the child goes on from here on a copy of this one, as after fork. Call it only in a
    single-threaded process: libc's own fork bookkeeping (its locks, its cached thread id) is
    not done; a single-threaded caller holds none of those locks.

    ``bookkeeping=False``: the system call alone, for a child that only prepares a program and
    executes it (the fork server's container init). What PyOS_AfterFork_Child repairs is what
    *other* threads left behind (locks they held, their thread states): a single-threaded
    caller has none, and its child's thread is the caller's, with the same thread id. The
    at-fork hooks (threading's, random's, labhelper's) are for a child that lives on as a
    Python program. Skipped, they spare each such child about 80 copy-on-write page faults.
    """
    flags = int(flags)
    api = ctypes.pythonapi
    if bookkeeping:
        api.PyOS_BeforeFork()
    pid = _libc_gil_held.syscall(ctypes.c_long(syscall_number("clone")), ctypes.c_ulong(flags | signal.SIGCHLD),
                                 None, None, None, None)     # SIGCHLD: what its end sends its parent
    err = ctypes.get_errno()
    if pid == 0:
        if bookkeeping:
            api.PyOS_AfterFork_Child()
        return 0
    if bookkeeping:
        api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise error("clone", {"flags": CloneFlags(flags)}, err)
    return pid


def unshare(flags: CloneFlags | int) -> None:
    """Move the calling process into new namespaces (unshare(2)).

    Call it only in a single-threaded process: the kernel refuses CLONE_NEWUSER (EINVAL) in a
    threaded one, and a Jupyter kernel is threaded. labhelper calls it in a forked child.
    """
    if _libc.unshare(ctypes.c_int(int(flags))) == -1:
        check(-1, "unshare", {"flags": CloneFlags(flags)})


def setns(fd: int, nstype: CloneFlags | int = 0) -> None:
    """Join the namespace that ``fd`` (an open /proc/PID/ns/* file or a pidfd) refers to."""
    if _libc.setns(ctypes.c_int(fd), ctypes.c_int(int(nstype))) == -1:
        check(-1, "setns", {"fd": fd, "nstype": CloneFlags(nstype)})


def mount(source: str | None, target: str | os.PathLike, fstype: str | None = None,
          flags: MountFlags | int = 0, data: str | None = None) -> None:
    """mount(2). ``source`` and ``fstype`` may be None for bind mounts and propagation changes."""
    # Plain ints on the way in, names only on error (as prctl): a container's init makes some
    # 25 mounts in a fresh copy of this process, where each flag enum made is paid again.
    if _libc.mount(_path(source), _path(target), _path(fstype), ctypes.c_ulong(int(flags)), _path(data)) == -1:
        args = {"source": source, "target": os.fspath(target), "fstype": fstype, "flags": MountFlags(flags)}
        if data is not None:
            args["data"] = data
        check(-1, "mount", args)


def umount2(target: str | os.PathLike, flags: UmountFlags | int = 0) -> None:
    """umount2(2): unmount ``target``; MNT_DETACH makes it lazy (gone now, freed when unused)."""
    if _libc.umount2(_path(target), ctypes.c_int(int(flags))) == -1:
        check(-1, "umount2", {"target": os.fspath(target), "flags": UmountFlags(flags)})


# --- the new mount API (Linux 5.2): a mount built step by step, on file descriptors ---------------
#
# fsopen("overlay") gives a filesystem context; fsconfig() sets its parameters one at a time
# (overlayfs takes "lowerdir+" once per layer since Linux 6.8, so a hundred layers need no page
# of options); FSCONFIG_CMD_CREATE makes the superblock; fsmount() a detached mount of it; and
# move_mount() attaches that where it belongs. When a step fails, the kernel writes why into
# the context ("e overlay: ...") for whoever reads the context's fd: the error carries it.

_FSOPEN_CLOEXEC = 0x1
_FSMOUNT_CLOEXEC = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4    # include/uapi/linux/mount.h: the source is from_dfd itself
MOVE_MOUNT_T_EMPTY_PATH = 0x40   # ... and the target is to_dfd itself (an opened folder)


def _context_log(fd: int) -> str:
    """What the kernel said about a filesystem context's last failure (its message log)."""
    lines = []
    for _ in range(8):
        try:
            data = os.read(fd, 1024)
        except OSError:
            break
        if not data:
            break
        lines.append(os.fsdecode(data).strip())
    return "; ".join(lines)


def fsopen(fsname: str) -> int:
    """fsopen(2): a new filesystem context of type ``fsname``, as a file descriptor (close-on-exec)."""
    return raw_syscall("fsopen", os.fsencode(fsname), _FSOPEN_CLOEXEC)


_NR_FSCONFIG = None


def fsconfig(fd: int, cmd: FsconfigCmd | int, key: str | None = None, value: str | None = None,
             aux: int = 0) -> None:
    """fsconfig(2): set one parameter of the context ``fd`` (or create its superblock)."""
    global _NR_FSCONFIG
    if _NR_FSCONFIG is None:
        _NR_FSCONFIG = ctypes.c_long(syscall_number("fsconfig"))
    # One call per layer when mounting an overlay: the error's arguments are made only on error.
    # fd, cmd and aux are C ints in the kernel's prototype: ctypes' default int conversion fits.
    result = _libc.syscall(_NR_FSCONFIG, fd, int(cmd), None if key is None else key.encode(),
                           None if value is None else value.encode(), aux)
    if result == -1:
        err = ctypes.get_errno()
        args = {"fd": fd, "cmd": FsconfigCmd(cmd).name}
        if key is not None:
            args["key"] = key
        if value is not None:
            args["value"] = value
        said = _context_log(fd)
        raise error("fsconfig", args, err, f"the kernel said: {said}" if said else None)


def fsmount(fd: int, attr_flags: MountAttr | int = 0) -> int:
    """fsmount(2): a detached mount of the context's superblock, as a file descriptor."""
    attr = MountAttr(attr_flags)
    return check(_libc.syscall(ctypes.c_long(syscall_number("fsmount")), ctypes.c_long(fd),
                               ctypes.c_long(_FSMOUNT_CLOEXEC), ctypes.c_long(int(attr))),
                 "fsmount", {"fd": fd, "attr_flags": attr})


def move_mount(from_fd: int, to_fd: int, to_path: str = "", flags: int = MOVE_MOUNT_F_EMPTY_PATH) -> None:
    """move_mount(2): attach the detached mount ``from_fd`` at ``to_path`` relative to ``to_fd``
    (with the empty path and MOVE_MOUNT_T_EMPTY_PATH: on ``to_fd`` itself)."""
    check(_libc.syscall(ctypes.c_long(syscall_number("move_mount")), ctypes.c_long(from_fd), b"",
                        ctypes.c_long(to_fd), _path(to_path), ctypes.c_long(flags)),
          "move_mount", {"from_dfd": from_fd, "to_dfd": to_fd, "to_pathname": to_path, "flags": hex(flags)})


# --- openat2 (Linux 5.6): a path looked up under rules ------------------------------------------

RESOLVE_NO_XDEV = 0x01           # include/uapi/linux/openat2.h
RESOLVE_NO_MAGICLINKS = 0x02     # no /proc/PID/fd/N-style links
RESOLVE_NO_SYMLINKS = 0x04       # no symlink anywhere in the path: ELOOP
RESOLVE_BENEATH = 0x08           # never above dirfd: EXDEV
RESOLVE_IN_ROOT = 0x10           # dirfd is "/": absolute symlinks and ".." stay inside it


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open ``path`` (relative to ``dirfd``, or absolute) with the lookup rules
    ``resolve``, in one call; a file descriptor. Raises SyscallError (ENOSYS before Linux 5.6)."""
    global _NR_OPENAT2
    if _NR_OPENAT2 is None:
        _NR_OPENAT2 = ctypes.c_long(syscall_number("openat2"))
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd = _libc.syscall(_NR_OPENAT2, ctypes.c_long(dirfd), os.fsencode(path), ctypes.byref(how), _OPEN_HOW_SIZE)
    if fd == -1:
        check(fd, "openat2", {"dirfd": dirfd, "pathname": path, "resolve": hex(resolve)})
    return fd


_NR_OPENAT2 = None
_OPEN_HOW_SIZE = ctypes.c_size_t(ctypes.sizeof(_OpenHow))


def syncfs(fd: int) -> None:
    """syncfs(2): write out everything of the filesystem that holds ``fd`` (one flush for many
    files, where fsync(2) flushes one; Python's os has sync() for every filesystem, not this)."""
    check(_libc.syncfs(ctypes.c_int(fd)), "syncfs", {"fd": fd})


def munmap(address: int, length: int) -> None:
    """munmap(2): remove the mapping at ``address`` (Python's mmap objects unmap their own; this
    is for a mapping whose object this process must not use, such as one a fork inherited)."""
    check(_libc.munmap(ctypes.c_void_p(address), ctypes.c_size_t(length)), "munmap",
          {"address": Shown(hex(address)), "length": length})


_AT_EMPTY_PATH = 0x1000          # include/uapi/linux/fcntl.h
_STATX_MNT_ID = 0x1000           # include/uapi/linux/stat.h (Linux 5.8)
_STX_MNT_ID_OFFSET = 0x90        # struct statx: __u64 stx_mnt_id, after the timestamps and devices


_STATX_ATTR_MOUNT_ROOT = 0x2000  # stx_attributes: the file is the root of a mount (Linux 5.8)


def statx_mount_root(fd: int) -> bool | None:
    """Is the open folder ``fd`` the root of a mount (something is mounted on it)? One statx(2)
    call (STATX_ATTR_MOUNT_ROOT); None where the kernel or libc cannot say (before Linux 5.8)."""
    statx = getattr(_libc, "statx", None)
    if statx is None:
        return None
    buf = ctypes.create_string_buffer(256)
    if statx(ctypes.c_int(fd), b"", ctypes.c_int(_AT_EMPTY_PATH), ctypes.c_uint(0), buf) != 0:
        return None
    # struct statx: __u64 stx_attributes at 0x08, __u64 stx_attributes_mask at 0x38 (what this
    # kernel can report: a bit outside it says nothing either way).
    attributes = int.from_bytes(buf.raw[0x08:0x10], sys.byteorder)
    known = int.from_bytes(buf.raw[0x38:0x40], sys.byteorder)
    if not known & _STATX_ATTR_MOUNT_ROOT:
        return None
    return bool(attributes & _STATX_ATTR_MOUNT_ROOT)


def statx_mount_id(fd: int) -> int | None:
    """The id of the mount ``fd`` lies on, from statx(2) (one call, no /proc read), or None where
    the kernel or libc cannot say (before Linux 5.8 or glibc 2.28)."""
    statx = getattr(_libc, "statx", None)
    if statx is None:
        return None
    buf = ctypes.create_string_buffer(256)               # sizeof(struct statx)
    if statx(ctypes.c_int(fd), b"", ctypes.c_int(_AT_EMPTY_PATH), ctypes.c_uint(_STATX_MNT_ID), buf) != 0:
        return None
    mask = int.from_bytes(buf.raw[0:4], sys.byteorder)   # stx_mask: what the kernel filled in
    if not mask & _STATX_MNT_ID:
        return None
    return int.from_bytes(buf.raw[_STX_MNT_ID_OFFSET:_STX_MNT_ID_OFFSET + 8], sys.byteorder)


def pivot_root(new_root: str | os.PathLike, put_old: str | os.PathLike) -> None:
    """pivot_root(2) has no glibc wrapper: it is called by number."""
    nr = syscall_number("pivot_root")
    check(_libc.syscall(ctypes.c_long(nr), _path(new_root), _path(put_old)), "pivot_root",
          {"new_root": os.fspath(new_root), "put_old": os.fspath(put_old)})


# System V message queues (sysvipc(7)): Python's os module has no call for them. Chapter 03 makes
# one to show that an IPC namespace has queues of its own.
IPC_CREAT = 0o1000
IPC_PRIVATE = 0
IPC_RMID = 0


def msgget(key: int = IPC_PRIVATE, flags: int = IPC_CREAT | 0o600) -> int:
    """msgget(2): the id of a (new) System V message queue."""
    return check(_libc.msgget(ctypes.c_int(key), ctypes.c_int(flags)), "msgget", {"key": key, "msgflg": oct(flags)})


def msgctl_rmid(queue: int) -> None:
    """msgctl(queue, IPC_RMID): remove a System V message queue."""
    check(_libc.msgctl(ctypes.c_int(queue), ctypes.c_int(IPC_RMID), None), "msgctl",
          {"msqid": queue, "cmd": Shown("IPC_RMID")})


def sethostname(name: str) -> None:
    raw = name.encode()
    check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname", {"name": name})


def prctl(option: Prctl | int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    # Called in every forked child (PR_SET_PDEATHSIG): plain ints on the way in, names only on error.
    result = _libc.prctl(int(option), arg2, arg3, arg4, arg5)
    if result == -1:
        check(result, "prctl", {"option": Prctl(option), "arg2": arg2})
    return result


_NR_BPF = {"x86_64": 321, "aarch64": 280}


def bpf(cmd: int, attr: bytes | bytearray, what: str) -> int:
    """bpf(2): ``cmd`` with the union bpf_attr ``attr`` (the bytes of the struct the command
    reads); its result (a new fd for BPF_PROG_LOAD). ``what`` names the command in an error."""
    nr = _NR_BPF.get(_MACHINE)
    if nr is None:
        raise NotImplementedError(f"no bpf(2) number for {_MACHINE!r} in the course's table")
    buf = ctypes.create_string_buffer(bytes(attr), len(attr))
    result = _libc.syscall(ctypes.c_long(nr), ctypes.c_long(cmd), buf, ctypes.c_long(len(attr)))
    if result == -1:
        check(result, "bpf", {"cmd": what, "size": len(attr)})
    return result


class _SockFprog(ctypes.Structure):
    """struct sock_fprog (include/uapi/linux/filter.h): a classic BPF program, by length and address."""
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_SECCOMP_MODE_FILTER = 2     # include/uapi/linux/seccomp.h


def seccomp_filter(program: bytes) -> None:
    """prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog): attach the classic BPF ``program``
    (8 bytes an instruction: struct sock_filter) to this thread, for ever. The kernel wants
    no_new_privs set first (or CAP_SYS_ADMIN): a filter must never make a setuid program err."""
    if not program or len(program) % 8:
        raise ValueError(f"a classic BPF program is a whole number of 8-byte instructions, not {len(program)} bytes")
    code = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(code, ctypes.c_void_p))
    check(_libc.prctl(int(Prctl.PR_SET_SECCOMP), _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0), "prctl",
          {"option": Prctl.PR_SET_SECCOMP, "arg2": "SECCOMP_MODE_FILTER", "arg3": f"<{len(program) // 8} instructions>"})


# The same libc function without argument types: ctypes then converts plain ints with the least
# work.
_ioctl_fast = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).ioctl


def _ioctl_noarg_ctypes(fd: int, request: int) -> int:
    result = _ioctl_fast(fd, request, 0)
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


# ioctl_noarg(fd, request): an ioctl whose argument is unused (KVM_RUN), raising OSError on
# failure. It is KVM's run loop, one call per VM exit, so it takes the shortest way from Python
# to the system call: fcntl.ioctl called with no third argument converts the fd and the request
# and calls ioctl() with the GIL released, where ctypes also prepares a call frame for libffi and
# swaps errno: about half the cost. Two CPython behaviours matter here:
# * on EINTR, fcntl.ioctl raises through PyErr_SetFromErrno, which first runs the pending signal
#   handlers (in the main thread): a notebook's SIGINT then comes out as KeyboardInterrupt from
#   the call itself, and the KVM watchdog's kick (a handler that does nothing) as an OSError
#   with errno EINTR;
# * Python 3.14 made fcntl.ioctl retry a call that failed with EINTR (gh-132742). An EINTR is
#   exactly how the watchdog's kick gets a vCPU back, so a retried KVM_RUN would never come back:
#   from 3.14 on, the ctypes call is used (and an exit costs about 1 us more).
if sys.version_info < (3, 14):
    from fcntl import ioctl as ioctl_noarg
else:
    ioctl_noarg = _ioctl_noarg_ctypes


def ioctl(fd: int, request: int, arg: int | ctypes.Structure | ctypes.Array | None = 0,
          name: str | None = None) -> int:
    """ioctl(2) with an integer argument or a pointer to a ctypes structure/array.

    ``name`` is the request's symbolic name (e.g. ``KVM_CREATE_VM``), used in error messages.
    """
    if arg.__class__ is int and 0 <= arg < 1 << 31 and request < 1 << 31:
        result = _ioctl_fast(fd, request, arg)
        if result != -1:
            return result
        raise error("ioctl", {"fd": fd, "request": name or hex(request)}, ctypes.get_errno())
    if isinstance(arg, (ctypes.Structure, ctypes.Array, ctypes.Union)):
        carg = ctypes.c_void_p(ctypes.addressof(arg))
    else:
        carg = ctypes.c_void_p(arg or 0)
    return check(_libc.ioctl(fd, request, carg), "ioctl",
                 {"fd": fd, "request": name or hex(request)})


def address_of(buffer) -> int:
    """The address of a writable buffer (an mmap, a bytearray): for structures the kernel reads,
    such as KVM's memory slots. The caller keeps ``buffer`` alive as long as the kernel uses it."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


# --- Direct system calls for chapter 01 ---
# Chapter 01 calls the kernel by number, without the C library's wrappers, to show that a system
# call is nothing more than a number and a few arguments in registers. Each wrapper below goes
# through raw_syscall(), i.e. libc's generic syscall(2): it loads the number into rax (x86_64)
# or x8 (aarch64), the arguments into the next registers, and executes `syscall` / `svc #0`.
from typing import NamedTuple as _NamedTuple

__all__ += ["Uname", "sys_getpid", "sys_uname", "sys_write", "sys_read", "libc_noop", "matched_ctypes_calls"]

_UTS_LEN = 65  # each field of struct utsname is char[__NEW_UTS_LEN + 1] (include/uapi/linux/utsname.h)


class Uname(_NamedTuple):
    """struct new_utsname, as the uname system call fills it in."""
    sysname: str
    nodename: str
    release: str
    version: str
    machine: str
    domainname: str


def sys_getpid() -> int:
    """getpid(2) by number (39 on x86_64, 172 on aarch64): the cheapest real system call."""
    return raw_syscall("getpid")


def sys_uname() -> Uname:
    """uname(2) by number: the kernel copies six 65-byte strings into our buffer."""
    buf = ctypes.create_string_buffer(6 * _UTS_LEN)
    raw_syscall("uname", buf)  # a ctypes buffer is passed as a pointer to its first byte
    raw = buf.raw
    fields = [raw[i * _UTS_LEN:(i + 1) * _UTS_LEN].split(b"\0", 1)[0].decode("utf-8", "replace")
              for i in range(6)]
    return Uname(*fields)


def sys_write(fd: int, data: bytes) -> int:
    """write(2) by number: hand the kernel ``len(data)`` bytes for file descriptor ``fd``.

    Returns how many bytes the kernel took (it may take fewer than offered, e.g. on a pipe).
    """
    data = bytes(data)
    return raw_syscall("write", fd, data, len(data))


def sys_read(fd: int, count: int) -> bytes:
    """read(2) by number: up to ``count`` bytes from ``fd`` (b"" at end of file)."""
    buf = ctypes.create_string_buffer(max(int(count), 1))
    n = raw_syscall("read", fd, buf, int(count))
    return buf.raw[:n]


_libc.labs.restype = ctypes.c_long
_libc.labs.argtypes = (ctypes.c_long,)


def libc_noop() -> int:
    """Call a C library function that never enters the kernel (labs(0)) through ctypes.

    Timing it measures the ctypes boundary alone, without the kernel.
    """
    return _libc.labs(0)


def matched_ctypes_calls():
    """Two ctypes calls that differ only in entering the kernel: libc's abs(nr) and syscall(nr).

    Both are called the cheapest way ctypes offers: no argument types declared, one plain int,
    bound once with partial(). ctypes then does the same work for both (convert the int, call
    through libffi, convert the result), so the difference of their costs is the system call
    (labhelper.syscost measures it). The getpid number is looked up here, once, not on every
    call as raw_syscall() does.
    """
    nr = syscall_number("getpid")
    # _libc["abs"] (not _libc.abs) makes a fresh function object, with no argument types set,
    # like _libc.syscall; abs never enters the kernel.
    return partial(_libc["abs"], nr), partial(_libc.syscall, nr)

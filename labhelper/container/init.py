"""The container's side of the fork: from a copy of Python to the container's first program.

This runs in the process that becomes PID 1 of the container's PID namespace (runc calls it the
container's init), cloned by the runtime's fork server. It is already in the container's cgroup
and in its new namespaces but one (it made them right after its clone, while the runtime made
the cgroup and then moved it there: runtime.py); the cgroup namespace comes first here, so that
it starts at the container's own cgroup. Each step below is one or two system calls, in the
order a runtime must make them; a failed step ends the process with exit status 125 and says
which step failed, through a pipe closed on exec (so an exec that succeeds says nothing):

    0  unshare(CLONE_NEWCGROUP)  its cgroup is "/" from now on
    1  setsid                    a session of its own, no controlling terminal of the host's
    2  volumes                   each host folder bound at its destination, looked up *inside* the root
    3  /proc                     a proc of the new PID namespace (it sees only the container)
    4  /dev                      a small tmpfs with null, zero, full, random, urandom, tty; pts; shm; mqueue
    5  /sys                      sysfs, read-only; on cgroup v2 its own cgroup at /sys/fs/cgroup, read-only
    6  masked, read-only paths   /proc/kcore and friends hidden; /proc/sys and friends read-only
    7  pivot_root                the root becomes the image's; the host's is detached from the tree
    8  hostname, loopback        the UTS namespace's name; lo up in the network namespace
    9  working directory, user   chdir inside the new root; setgid/setuid if asked
   10  capabilities              the bounding set cut to Docker's 14 (capabilities.DOCKER_DEFAULT)
   11  no_new_privs, seccomp     the filter of system calls (seccomp.program), for ever
   12  execve                    only fds 0, 1 and 2 cross it: nothing of the runtime leaks in

Every path from the image (a volume's destination, the mount points /proc, /dev, /sys) is opened
with openat2(RESOLVE_IN_ROOT) from the root folder: a symlink in the image, absolute or full of
``..``, resolves inside the root, never on the host (the CVE-2019-19921 class); the runtime's own
mount points must not be symlinks at all. After pivot_root, "/" *is* the root, so the working
directory and the command are looked up inside it by the kernel itself.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import struct
from typing import Callable, NamedTuple

from .. import capabilities, mounts, seccomp, syscalls
from ..errors import LabError, Refused
from ..flags import CloneFlags, MountFlags, Prctl, UmountFlags

__all__ = ["main", "steps", "Step", "execute", "become", "exit_code", "DEVICES", "MASKED", "READ_ONLY", "EXIT_RUNTIME", "EXIT_CANNOT_RUN", "EXIT_NOT_FOUND"]

EXIT_RUNTIME = 125          # Docker's: the runtime failed before the command ran
EXIT_CANNOT_RUN = 126       # the command exists but cannot be executed
EXIT_NOT_FOUND = 127        # no such command

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# Docker's masked paths (moby oci/defaults.go): kernel memory, keys and timing data of the host.
MASKED = ("/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
          "/sys/devices/virtual/powercap")
# ...and its read-only ones: kernel settings shared by the whole machine.
READ_ONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# Each mount's flags, combined here once. Combining two flags makes a new enum member the first
# time (tens of microseconds), and each container's init is a fresh copy of the runtime's
# Python: one made there, at import, is made for all of them.
_NOSUID_NODEV_NOEXEC = MountFlags.MS_NOSUID | MountFlags.MS_NODEV | MountFlags.MS_NOEXEC
_READ_ONLY = MountFlags.MS_RDONLY | _NOSUID_NODEV_NOEXEC                   # sysfs, masked folders
_BIND_REC = MountFlags.MS_BIND | MountFlags.MS_REC                           # a folder and what is mounted below it
PRIVATE_REC = MountFlags.MS_REC | MountFlags.MS_PRIVATE                     # no propagation either way
_REMOUNT_BIND_RO = MountFlags.MS_REMOUNT | MountFlags.MS_BIND | MountFlags.MS_RDONLY
_REMOUNT_BIND_RO_NOSUID_NODEV_NOEXEC = _REMOUNT_BIND_RO | _NOSUID_NODEV_NOEXEC
_DEV = MountFlags.MS_NOSUID | MountFlags.MS_NODEV | MountFlags.MS_STRICTATIME
_DEVPTS = MountFlags.MS_NOSUID | MountFlags.MS_NOEXEC
_IN_ROOT = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS


class StepFailed(Exception):
    def __init__(self, step: str, error: str):
        super().__init__(f"{step}: {error}")
        self.step, self.error = step, error


def _step(name: str, fn, *args):
    try:
        return fn(*args)
    except StepFailed:
        raise
    except (OSError, LabError, ValueError) as exc:
        raise StepFailed(name, str(exc)) from None


def open_in_root(root_fd: int, path: str, *, directory: bool = True, no_symlinks: bool = False,
                 create: bool = False) -> int:
    """Open ``path`` (absolute, in the container) below the open root folder, resolved as if the
    root were "/" (RESOLVE_IN_ROOT): an absolute symlink or ``..`` never leaves it. ``create``:
    make the missing folders on the way (each one below a folder opened that way)."""
    rel = path.lstrip("/") or "."
    # A symlink at the end is followed too (inside the root), unless symlinks are refused.
    flags = (os.O_RDONLY | os.O_DIRECTORY if directory else os.O_RDONLY) | (os.O_NOFOLLOW if no_symlinks else 0)
    resolve = _IN_ROOT | (syscalls.RESOLVE_NO_SYMLINKS if no_symlinks else 0)
    try:
        return syscalls.openat2(root_fd, rel, flags, resolve)
    except OSError as exc:
        if exc.errno != errno.ENOENT or not create:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and no_symlinks:
                raise Refused(f"{path} in the image is a symlink (or has one on the way), or not a folder: the "
                              "runtime mounts there only on a real folder, never through a link") from None
            raise
    parent = open_in_root(root_fd, os.path.dirname(path), create=True, no_symlinks=no_symlinks)
    try:
        try:
            os.mkdir(os.path.basename(path), 0o755, dir_fd=parent)
        except FileExistsError:
            pass
        return syscalls.openat2(parent, os.path.basename(path), flags | os.O_NOFOLLOW,
                                resolve & ~syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_BENEATH)
    finally:
        os.close(parent)


def _volume(root_fd: int, volume: dict) -> None:
    source = mounts.open_folder(volume["source"])         # a lab folder, no symlink on the way
    try:
        target = open_in_root(root_fd, volume["destination"], create=True)
        try:
            syscalls.mount(f"/proc/self/fd/{source}", f"/proc/self/fd/{target}", None, _BIND_REC)
        finally:
            os.close(target)
        if volume["read_only"]:
            _remount_read_only(root_fd, volume["destination"], _REMOUNT_BIND_RO)
    finally:
        os.close(source)


def _remount_read_only(root_fd: int, path: str, flags) -> None:
    """A bind mount takes its flags from a second call (``flags``: MS_REMOUNT | MS_BIND |
    MS_RDONLY, and maybe more), made on the new mount: the folder is opened again, since an fd
    opened before the bind still names the folder below it."""
    fd = open_in_root(root_fd, path, directory=False)
    try:
        syscalls.mount(None, f"/proc/self/fd/{fd}", None, flags)
    finally:
        os.close(fd)


def _mount_at(root_fd: int, path: str, fstype: str, flags, data: str | None = None) -> None:
    fd = open_in_root(root_fd, path, no_symlinks=True, create=True)
    try:
        mounts.mount_on(fd, path, fstype, fstype, flags, data)
    finally:
        os.close(fd)


def _dev(root_fd: int) -> None:
    # nodev on the tmpfs: a node made here with mknod (CAP_MKNOD is in the default set) cannot be
    # opened; the bind-mounted host nodes keep the flags of the host's /dev, where they work.
    _mount_at(root_fd, "/dev", "tmpfs", _DEV, "mode=755,size=65536k")
    dev = open_in_root(root_fd, "/dev", no_symlinks=True)
    try:
        for name in DEVICES:
            if os.path.exists(f"/dev/{name}"):
                mounts.bind_file(dev, name, f"/dev/{name}", 0o666)
        for name, mode in (("pts", 0o755), ("shm", 0o1777), ("mqueue", 0o1777)):
            os.mkdir(name, mode, dir_fd=dev)
        for name, target in (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, name, dir_fd=dev)
    finally:
        os.close(dev)
    # newinstance: the container's terminals are its own, numbered from 0, not the host's.
    _mount_at(root_fd, "/dev/pts", "devpts", _DEVPTS, "newinstance,ptmxmode=0666,mode=0620,gid=5")
    _mount_at(root_fd, "/dev/shm", "tmpfs", _NOSUID_NODEV_NOEXEC, "mode=1777,size=65536k")
    _mount_at(root_fd, "/dev/mqueue", "mqueue", _NOSUID_NODEV_NOEXEC)


def _mask(root_fd: int) -> None:
    for path in MASKED:
        try:
            fd = open_in_root(root_fd, path, directory=False, no_symlinks=True)
        except OSError:
            continue                    # not on this kernel
        try:
            where = f"/proc/self/fd/{fd}"
            if os.path.isdir(where):
                syscalls.mount("tmpfs", where, "tmpfs", _READ_ONLY)
            else:
                syscalls.mount("/dev/null", where, None, MountFlags.MS_BIND)
        finally:
            os.close(fd)
    for path in READ_ONLY:
        try:
            fd = open_in_root(root_fd, path, directory=False, no_symlinks=True)
        except OSError:
            continue
        try:
            where = f"/proc/self/fd/{fd}"
            syscalls.mount(where, where, None, _BIND_REC)
        finally:
            os.close(fd)
        _remount_read_only(root_fd, path, _REMOUNT_BIND_RO_NOSUID_NODEV_NOEXEC)


def _pivot(rootfs: str) -> None:
    # pivot_root wants the new root to be a mount point: a plain folder (a root given as it is,
    # not an overlay) is bound onto itself first, in this namespace only.
    fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not syscalls.statx_mount_root(fd):
            syscalls.mount(rootfs, rootfs, None, _BIND_REC)
    finally:
        os.close(fd)
    os.chdir(rootfs)
    syscalls.pivot_root(".", ".")           # the old root is stacked on the new one...
    syscalls.umount2(".", UmountFlags.MNT_DETACH)      # ...and detached: nothing of the host is left
    os.chdir("/")


def _loopback_up() -> None:
    # SIOCGIFFLAGS / SIOCSIFFLAGS on any socket of this network namespace: set IFF_UP on "lo".
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), 0x8913, ifreq))[1]
        fcntl.ioctl(sock.fileno(), 0x8914, struct.pack("16sH14x", b"lo", flags | 0x1))


def _workdir(path: str) -> None:
    try:
        os.chdir(path)
    except FileNotFoundError:
        os.makedirs(path, 0o755, exist_ok=True)     # as Docker does; "/" is the container's root now
        os.chdir(path)


def become(uid: int, gid: int) -> None:
    """Drop to ``uid``:``gid`` with no supplementary groups (after the capabilities are cut)."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def _stdin() -> None:
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


class Step(NamedTuple):
    name: str       # what the notebook calls it
    what: str       # the system calls it makes, in a few words
    run: Callable[[], object]


def steps(spec: dict, rootfs: str) -> list[Step]:
    """The steps from a forked Python to the command, in order (the table above). The root folder
    is opened by the first mount step and closed before pivot_root."""
    state: dict = {}

    def root() -> int:
        if "root" not in state:
            state["root"] = mounts.open_folder(rootfs)
        return state["root"]

    def volumes():
        for volume in spec["volumes"]:
            _step(f"volume {volume['source']}:{volume['destination']}", _volume, root(), volume)

    def sys_():
        _mount_at(root(), "/sys", "sysfs", _READ_ONLY)
        if spec.get("cgroup2"):
            # Its own cgroup, read-only, as Docker shows it on v2 (the namespace makes it the root).
            _mount_at(root(), "/sys/fs/cgroup", "cgroup2", _READ_ONLY)

    def pivot():
        fd = state.pop("root", None)
        if fd is not None:
            os.close(fd)
        _pivot(rootfs)

    out = [
        # Its own cgroup namespace, made now that it is in the container's cgroup: that cgroup is
        # "/" for everything in the container (/proc/self/cgroup, a cgroup2 mount).
        Step("cgroup namespace", "unshare(CLONE_NEWCGROUP)", lambda: syscalls.unshare(CloneFlags.CLONE_NEWCGROUP)),
        Step("session", "setsid()", os.setsid),
        Step("volumes", "openat2(RESOLVE_IN_ROOT), mount(MS_BIND)", volumes),
        Step("/proc", "mount(\"proc\")", lambda: _mount_at(root(), "/proc", "proc", _NOSUID_NODEV_NOEXEC)),
        Step("/dev", "mount(\"tmpfs\"), bind mounts of 6 devices, devpts, shm, mqueue", lambda: _dev(root())),
        Step("/sys", "mount(\"sysfs\", MS_RDONLY)", sys_),
        Step("masked paths", "bind /dev/null over files, read-only tmpfs over folders; read-only binds",
             lambda: _mask(root())),
        Step("pivot_root", "pivot_root(\".\", \".\"), umount2(\".\", MNT_DETACH)", pivot),
        Step("hostname", "sethostname()", lambda: syscalls.sethostname(spec["hostname"])),
        Step("loopback", "ioctl(SIOCSIFFLAGS, IFF_UP) on lo", _loopback_up),
        Step("working directory", f"chdir({spec['workdir']!r})", lambda: _workdir(spec["workdir"])),
        Step("capabilities", "prctl(PR_CAPBSET_DROP) for each capability Docker drops",
             lambda: capabilities.drop_bounding(capabilities.DOCKER_DEFAULT)),
    ]
    if spec["user"] is not None:
        out.append(Step("user", f"setgroups, setgid({spec['user'][1]}), setuid({spec['user'][0]})",
                        lambda: become(*spec["user"])))
    if spec["seccomp"]:
        out.append(Step("seccomp", "prctl(PR_SET_NO_NEW_PRIVS), prctl(PR_SET_SECCOMP, filter)", seccomp.attach))
    else:
        out.append(Step("no_new_privs", "prctl(PR_SET_NO_NEW_PRIVS)",
                        lambda: syscalls.prctl(Prctl.PR_SET_NO_NEW_PRIVS, 1)))
    if not spec["interactive"]:
        out.append(Step("stdin", "/dev/null as fd 0", _stdin))
    return out


def _line(fd: int) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            return b""                   # the runtime is gone
        data += chunk
    return data.strip()


def main(spec: dict, rootfs: str, error_w: int, control_r: int, reply_w: int) -> None:
    """Set the container up and execve its command; never returns. ``spec``: the runtime's
    plain description (runtime.py); ``error_w``: the pipe (O_CLOEXEC) for a step's failure.
    Before each step a line is read from ``control_r``: "step" runs one and answers on
    ``reply_w`` (a notebook going step by step), "start" runs the rest without asking."""
    try:
        asking = True
        for step in steps(spec, rootfs) + [Step("exec", "execve(command)", lambda: None)]:
            if asking:
                order = _line(control_r)
                if order not in (b"step", b"start"):
                    os._exit(EXIT_RUNTIME)          # the runtime went away, or gave up
                asking = order == b"step"
            if step.name == "exec":
                if asking:
                    os.write(reply_w, json.dumps({"step": "exec"}).encode() + b"\n")
                break
            _step(step.name, step.run)
            if asking:
                os.write(reply_w, json.dumps({"step": step.name}).encode() + b"\n")
        execute(spec["command"], spec["env"], error_w)
    except StepFailed as failed:
        _report(error_w, failed.step, failed.error)
        _report(reply_w, failed.step, failed.error, line=True)
    except BaseException as exc:      # noqa: BLE001 - nothing may return into the runtime's code
        _report(error_w, "setup", repr(exc))
        _report(reply_w, "setup", repr(exc), line=True)
    os._exit(EXIT_RUNTIME)


def exit_code(status: int) -> int:
    """Docker's exit code from a wait status: the command's own, or 128 + N for a signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def execute(command: list[str], env: list[str], error_w: int) -> None:
    """The last step (also ``docker exec``'s): only fds 0-2, and the error pipe that the exec
    itself closes, cross into ``command``, looked up in the PATH of ``env``. Never returns: a
    command not found ends the process with 127, one that cannot be executed with 126, said on
    ``error_w`` first."""
    os.closerange(3, error_w)
    os.closerange(error_w + 1, 1 << 20)
    variables = dict(e.split("=", 1) for e in env)
    try:
        os.execvpe(command[0], command, variables)
    except FileNotFoundError:
        _report(error_w, "exec", f"{command[0]!r}: executable file not found in $PATH ({variables.get('PATH', '')})")
        os._exit(EXIT_NOT_FOUND)
    except OSError as exc:
        _report(error_w, "exec", f"{command[0]!r}: {os.strerror(exc.errno)} ({errno.errorcode.get(exc.errno)})")
        os._exit(EXIT_CANNOT_RUN)


def _report(fd: int, step: str, error: str, line: bool = False) -> None:
    try:
        os.write(fd, json.dumps({"step": step, "error": error[:3000]}).encode() + (b"\n" if line else b""))
    except OSError:
        pass

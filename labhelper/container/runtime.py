"""The runtime's side of the fork: what `docker run` does outside the container.

    the runtime (the notebook kernel)            its fork server (process.ForkServer)
      1  check everything (config.check): nothing is made for a bad request
      2  a folder for the container              /var/lib/labhelper/containers/NAME   (recorded)
      3  its root: an overlay of the image's layers, upper and work in that folder
      4  ask for init ------------------------> clone(CLONE_NEWPID | CLONE_PARENT) --> init (init.py):
                                                                             PID 1, the runtime's child
      5  meanwhile, a cgroup with its limits and                            unshare mnt, uts, ipc, net
         its device rules (cgroups.devices)                                 make every mount private
      6  move init into the cgroup, say "go" ------------------------------> waits for that, then
                                                                             unshare cgroup, setsid, mounts, ...
      7  collect its output; waitpid: its status                            ... execve(command)
      8  undo 6 to 2 (kill init, and so its PID namespace; what the cgroup still holds; ...)

One clone, as runc and crun make their init with clone(CLONE_NEWPID), by a fork server: a copy
of this process, forked once, that forks for it from then on. It is single-threaded, as a raw
clone from Python needs (libc's fork does its bookkeeping of locks other threads may hold; a
raw clone does not), and a Jupyter kernel is not. A fork here would cost this process a page fault
on every page it writes afterwards (some 650 per start, 1.5 ms under kvm_pvm), besides the fork;
the server's clone costs it nothing, and runs while it makes the cgroup. With CLONE_PARENT init
is the runtime's own child: the runtime reaps it and reads its status, and stays outside its
cgroup, so that the OOM killer never picks it. The cgroup is made while init makes its
namespaces (crun too makes it after its clone): both at once.

Each step's undo is registered as soon as the step is done, so a failure (or Ctrl-C) anywhere
leaves nothing; a kill of the whole kernel leaves records, and ``labhelper cleanup`` removes what
they name (R1). Init is moved into the cgroup before it takes its first step, so everything the
container runs is limited, and the cgroup namespace it makes then shows it its own cgroup as "/".

Exit codes are Docker's: the command's own, 128+N for a signal N (137 for SIGKILL, as after an
OOM kill or the timeout), 125 when the runtime failed before the command ran, 126 when the command
cannot be executed, 127 when it is not found.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import time
from dataclasses import dataclass, field, replace

from .. import capabilities, cgroups, images, marks, mounts, network, overlay, process, procfs, registry, seccomp, syscalls
from ..cgroups import devices
from ..errors import ChildTimeout, LabError, Refused
from ..flags import CloneFlags, Prctl
from ..registry import fault_point
from . import config, init

__all__ = ["run", "create", "settings", "Container", "Result", "NAMESPACES", "OUTPUT_LIMIT", "LOG", "group_name", "find_image", "remove_folder"]

NAMESPACES = (CloneFlags.CLONE_NEWNS | CloneFlags.CLONE_NEWUTS | CloneFlags.CLONE_NEWIPC | CloneFlags.CLONE_NEWNET
              | CloneFlags.CLONE_NEWPID | CloneFlags.CLONE_NEWCGROUP)
OUTPUT_LIMIT = 1 << 20          # bytes of output kept (the rest is counted, not kept)
LOG = "container.log"           # a detached container's output, in its folder
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Result:
    """How a container's command ended: ``exit_code`` as Docker reports it, what it printed
    (stdout and stderr together, in order), and the runtime's own message when it did not run."""
    name: str
    exit_code: int
    output: str
    error: str = ""
    timed_out: bool = False
    oom_killed: bool = False
    seconds: float = 0.0
    timings: dict = field(default_factory=dict, repr=False, compare=False)   # seconds per phase (run())

    def __repr__(self) -> str:
        notes = [n for n, on in (("OOM-killed", self.oom_killed), ("timed out", self.timed_out)) if on]
        extra = f" ({', '.join(notes)})" if notes else ""
        said = f"; {self.error}" if self.error else ""
        return f"Result({self.name}: exit {self.exit_code}{extra}{said})"


def settings(cfg: config.Config, img: images.Image | None) -> dict:
    """The plain spec init.main reads: the request merged with the image's own settings, as
    Docker merges them (ENTRYPOINT + the command or CMD; ENV, then -e over it; WORKDIR)."""
    s = (img.settings or {}) if img is not None else {}
    entry = list(s.get("Entrypoint") or [])
    command = entry + (list(cfg.command) if cfg.command is not None else list(s.get("Cmd") or []))
    if not command:
        raise Refused(f"no command: the image {img.name if img else None!r} has no CMD or ENTRYPOINT; give one")
    env = {}
    for entry_ in list(s.get("Env") or []) + list(cfg.env):
        key, _, value = entry_.partition("=")
        env[key] = value
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOSTNAME", cfg.hostname)
    env.setdefault("HOME", "/root")
    user = cfg.user
    if user is None and s.get("User"):
        try:
            user = config.parse_user(s["User"])
        except Refused:
            raise Refused(f"the image's USER {s['User']!r} is a name; give user='UID:GID'") from None
    workdir = cfg.workdir or s.get("WorkingDir") or "/"
    return {"command": command, "env": [f"{k}={v}" for k, v in env.items()], "hostname": cfg.hostname,
            "workdir": workdir, "user": user, "interactive": cfg.interactive, "seccomp": cfg.seccomp,
            "volumes": [{"source": v.source, "destination": v.destination, "read_only": v.read_only}
                        for v in cfg.volumes]}


def _init_side(pipes: dict[str, int], spec: dict, rootfs: str, unshare: CloneFlags, log: str | None) -> None:
    """In the child (process.ForkServer): PID 1 of the new PID namespace, a copy of the fork
    server's Python, the runtime's child. It makes the other namespaces, then waits until the
    runtime has moved it into the container's cgroup, then becomes the container (init.main).
    ``pipes``: its fds by name (go_r, err_w, control_r, reply_w; out_w when its output is
    captured; netns for --net bridge). Never returns."""
    try:
        # Nothing of the parent's heap is collected here: a collection would touch, and so copy
        # page by page, everything fork shares copy-on-write.
        gc.freeze()
        syscalls.prctl(Prctl.PR_SET_PDEATHSIG, signal.SIGKILL)    # the runtime gone: the container too
        # Only the pipes cross: the notebook kernel's ZeroMQ sockets, /dev/kvm and the rest do not.
        process.close_fds(set(pipes.values()))
        if "out_w" in pipes:
            os.dup2(pipes["out_w"], 1)
            os.dup2(pipes["out_w"], 2)
            os.close(pipes["out_w"])
        elif log is not None:
            # A detached container's output: its log file, appended to, as it comes.
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        # Its other namespaces, made while the runtime writes it into the cgroup (the two at once).
        syscalls.unshare(unshare)
        # Every mount this namespace makes stays in it, and nothing the host mounts later appears.
        syscalls.mount(None, "/", None, init.PRIVATE_REC)
        if "netns" in pipes:
            # --net bridge: the network namespace was made and wired to the bridge first (a veth,
            # an address, a route), as CNI does for Kubernetes: join it instead of a new one.
            syscalls.setns(pipes["netns"], CloneFlags.CLONE_NEWNET)
            os.close(pipes["netns"])
        # The runtime says "1" or "2" (the cgroup version) once this process is in its cgroup; an
        # end of file means it failed, or died (PR_SET_PDEATHSIG cannot tell it if it died before
        # that was set).
        said = os.read(pipes["go_r"], 1)
        if said not in (b"1", b"2"):
            os._exit(init.EXIT_RUNTIME)
        os.close(pipes["go_r"])
        spec["cgroup2"] = said == b"2"
        os.write(pipes["reply_w"], b'{"ready": true}\n')      # create() returns: its namespaces are there
        init.main(spec, rootfs, pipes["err_w"], pipes["control_r"], pipes["reply_w"])
    except BaseException as exc:         # noqa: BLE001 - nothing may return into the runtime's code
        said = json.dumps({"step": "namespaces", "error": str(exc)[:3000] or repr(exc)}).encode()
        with contextlib.suppress(Exception):
            os.write(pipes["err_w"], said)
            os.write(pipes["reply_w"], said + b"\n")
    finally:
        os._exit(init.EXIT_RUNTIME)


class _Init:
    """The container's init as the runtime holds it: its pid and a pidfd, the pipe of its output,
    and the error pipe that ends when it executes the command. The runtime is its parent and stays
    outside the cgroup, as runc does: the OOM killer, choosing in the cgroup, never picks it."""

    def __init__(self, pid: int, go_w: int, err_r: int, out_r: int, timeout: float):
        self.pid, self._go, self._err, self._out, self._timeout = pid, go_w, err_r, out_r, timeout
        self.pidfd = os.pidfd_open(pid)     # our child, not yet reaped: the pid cannot be reused
        self._chunks: list[bytes] = []
        self._kept = 0
        self._error = b""
        self._deadline: float | None = None
        self._timed_out = False
        self._status: int | None = None

    def go(self, group: cgroups.Group) -> None:
        """Move init into ``group`` (in every hierarchy on v1), then let it go on: the runtime
        says "1" or "2", the cgroup version it is in (its /sys shows its own cgroup on v2)."""
        try:
            group.add(self.pid)
            os.write(self._go, str(group.version).encode())
        except (Refused, BrokenPipeError) as exc:
            # It is gone already: it failed to make its namespaces, and said why on its error pipe.
            said = self._error + self._ready(self._err)
            failed = json.loads(said) if said else {"step": "start", "error": f"it ended before it was told to go ({exc})"}
            raise LabError(f"the container's init did not start: {failed['step']}: {failed['error']}",
                           hint="nothing was left behind") from None
        self._close("_go")

    @staticmethod
    def _ready(fd: int) -> bytes:
        """What the open ``fd`` holds now, without waiting (b"" if nothing, or at its end)."""
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return os.read(fd, 65536) if poller.poll(0) else b""

    def begin(self) -> None:
        """Its timeout counts from now, if it did not already (told to run its last steps, or
        to execve, while nothing reads its error pipe: a container stepped by hand)."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self._timeout

    def fds(self) -> list[int]:
        """The pipes still open, to poll with the rest (a port proxy's sockets)."""
        return [fd for fd in (self._err, self._out) if fd >= 0]

    def take(self, fd: int) -> None:
        """Read what ``fd`` (one of fds()) has. The error pipe ends (EOF) when init executes the
        command (O_CLOEXEC) or dies: the timeout counts from then, not while a notebook goes
        step by step (from wait(), for a container stepped to its execve: that is when the
        runtime reads again)."""
        data = os.read(fd, 65536)
        if fd == self._err:
            self._error += data
            if not data:
                self._close("_err")
                self.begin()
        elif not data:
            self._close("_out")
        else:
            if self._kept < OUTPUT_LIMIT:
                self._chunks.append(data[:OUTPUT_LIMIT - self._kept])
            self._kept += len(data)

    def patience(self) -> float:
        """Kill init if it is overdue; how long the next poll may wait (seconds)."""
        if self._deadline is not None and not self._timed_out and time.monotonic() >= self._deadline:
            self._timed_out = True
            self.signal(signal.SIGKILL)        # PID 1 gone: the kernel kills the whole namespace
        return 1.0 if self._deadline is None or self._timed_out else max(self._deadline - time.monotonic(), 0.01)

    def signal(self, sig: int) -> None:
        if self._status is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, sig)

    def collect(self, deadline: float | None) -> dict:
        """Its output until it has exited, then its exit status. ``deadline``
        (time.monotonic()): then it is killed and ChildTimeout raised."""
        if self._status is not None:
            raise LabError(f"the container's init (pid {self.pid}) was killed already", hint="remove() it")
        poller_fds = None
        while True:
            fds = self.fds()
            if poller_fds != fds:
                poller = select.poll()
                for fd in fds + [self.pidfd]:
                    poller.register(fd, select.POLLIN)
                poller_fds = fds
            wait = self.patience()
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise ChildTimeout(f"the container's init (pid {self.pid}) did not end in time; it was killed",
                                       hint="pass a larger timeout=")
                wait = min(wait, left)
            ready = {fd for fd, _ in poller.poll(max(1, int(wait * 1000)))}
            for fd in fds:
                if fd in ready:
                    self.take(fd)
            if self.pidfd in ready:
                # It has exited, and with PID 1 every process of its namespace: what they wrote
                # is in the pipes. Read it without waiting for their ends (a copy of a write end
                # in some other process of this kernel's must not keep us here).
                for fd in self.fds():
                    now = select.poll()
                    now.register(fd, select.POLLIN)
                    while fd in self.fds() and now.poll(0):
                        self.take(fd)
                break
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            status = 0
        self._status = status
        self._close("pidfd")
        output = b"".join(self._chunks).decode(errors="replace")
        if self._kept > OUTPUT_LIMIT:
            output += f"\n[... {self._kept - OUTPUT_LIMIT} more bytes not kept]"
        return {"exit_code": init.exit_code(status), "output": output, "timed_out": self._timed_out,
                "error": json.loads(self._error) if self._error else None}

    def _close(self, attr: str) -> None:
        fd = getattr(self, attr)
        if fd >= 0:
            os.close(fd)
            setattr(self, attr, -1)

    def kill(self, patience: float = 30.0) -> None:
        """SIGKILL init, and so every process of its PID namespace, and reap it (idempotent).
        It is waited for ``patience`` seconds at most: a process of its namespace stuck in the
        kernel (state D), or frozen in a v1 freezer cgroup, holds PID 1's end back; it is then
        left to the cgroup's kill and the next cleanup, and not waited for here."""
        if self._status is None:
            self.signal(signal.SIGKILL)
            if self.pidfd >= 0:
                gone = select.poll()
                gone.register(self.pidfd, select.POLLIN)
                if not gone.poll(int(patience * 1000)):
                    return
            try:
                self._status = os.waitpid(self.pid, 0)[1]
            except ChildProcessError:
                self._status = 0
        for attr in ("_go", "_err", "_out", "pidfd"):
            self._close(attr)


def find_image(store: images.Store, name: str) -> images.Image:
    """The image ``name`` of ``store``; Refused, naming the images there, if it is not one."""
    try:
        return images.image(store, name)
    except LabError as exc:
        names = sorted(i.name for i in images.images(store))
        raise Refused(f"no image {name!r} in the store {store.root}: {getattr(exc, 'message', exc)}",
                      hint=f"images there: {', '.join(names) or 'none'}; make one with rootfs.base_image(store)"
                      ) from None


def group_name(name: str) -> str:
    """The lab cgroup of the container ``name``."""
    return f"ct-{name}"


def remove_folder(path: str) -> None:
    """Remove a container's folder (recorded), and the folder of all containers once it is empty:
    whichever container made that one, the last to go removes it."""
    mounts.remove_dir(marks.Obj("dir", path, where=(path,)), registry.ledger())
    mounts.rmdir_empty([config.CONTAINERS])


def _order(control_w: int, order: bytes) -> None:
    """Tell init an order ("step", "start"). If it has ended already, wait() reads why."""
    with contextlib.suppress(BrokenPipeError):
        os.write(control_w, order)


def _read_line(fd: int, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise LabError(f"the container's init did not answer within {timeout:g} s")
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


class _Asked:
    """The container's init, asked of this process's fork server and not yet answered: the
    request, and the runtime's ends of init's pipes, held until :meth:`init` hands them over."""

    def __init__(self, request: process.FirstProcess, ends: dict[str, int]):
        self.request, self.ends = request, ends

    def init(self, timeout: float) -> tuple[_Init, int, int]:
        """The answer: init, this process's child; and the runtime's ends of the control pipe
        (orders: "step", "start") and of the reply pipe, the caller's from now on."""
        pid = self.request.pid()
        try:
            init_ = _Init(pid, self.ends["go_w"], self.ends["err_r"], self.ends.get("out_r", -1), timeout)
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        for name in ("go_w", "err_r", "out_r"):
            self.ends.pop(name, None)       # init_'s now (its kill closes them)
        return init_, self.ends.pop("control_w"), self.ends.pop("reply_r")

    def abandon(self) -> None:
        """Undo (idempotent): kill and reap init unless :meth:`init` took it; close the ends."""
        self.request.abandon()
        for fd in self.ends.values():
            os.close(fd)
        self.ends.clear()


def _ask_for_init(spec: dict, rootfs: str, flags: CloneFlags, capture: bool, log: str | None, netns_fd: int,
                  undo: contextlib.ExitStack) -> _Asked:
    """Ask this process's fork server for the container's init, PID 1 of a new PID namespace
    (it makes the namespaces in ``flags``, then waits for :meth:`_Init.go`), and return at once:
    the server forks while the runtime makes the cgroup. Its undo is registered in ``undo``."""
    pipes, ends = {}, {}
    try:
        for name in ("go", "err", "out", "control", "reply"):
            if name == "out" and not capture:
                continue
            read, write = os.pipe2(os.O_CLOEXEC)
            if name in ("go", "control"):       # init reads these
                pipes[f"{name}_r"], ends[f"{name}_w"] = read, write
            else:                               # and writes those
                pipes[f"{name}_w"], ends[f"{name}_r"] = write, read
        if netns_fd >= 0:
            pipes["netns"] = netns_fd
        request = process.fork_server().start_first(_init_side, (spec, rootfs, flags, log), pipes)
    except BaseException:
        for fd in ends.values():
            os.close(fd)
        raise
    finally:
        for name, fd in pipes.items():      # init's ends: the server has its copies
            if name != "netns":
                os.close(fd)
    asked = _Asked(request, ends)
    undo.callback(asked.abandon)
    return asked


class Container:
    """A container made by :func:`create` and not yet ended: its init waits before each step
    until told (:meth:`step`, :meth:`start`). What the notebook sees of it from outside: its pid
    here (``pid``), the mounts of its namespace (:meth:`mounts`), its process status
    (:meth:`status`). :meth:`remove` undoes everything (and kills what still runs)."""

    def __init__(self, cfg: config.Config, spec: dict, rootfs: str, group: cgroups.Group, init_: _Init,
                 control_w: int, reply_r: int, started: float, marks_: list[tuple[str, float]]):
        self.name, self.config, self.spec, self.rootfs, self.group = cfg.name, cfg, spec, rootfs, group
        self._init, self._control, self._reply, self._started = init_, control_w, reply_r, started
        self._undo = contextlib.ExitStack()
        self._keep: dict | None = None
        self.address: str | None = None          # with net="bridge": its address on the bridge
        self.ports: network.proxy.Proxy | None = None   # its published ports (-p), served by wait()
        self._marks = marks_                     # (phase, when it ended): Result.timings
        self.steps = [s.name for s in init.steps(spec, rootfs)] + ["exec"]
        self.done: list[str] = []
        self.result: Result | None = None
        self.pid: int = init_.pid
        # The first line only: with start=True a failed step's line may come right behind it
        # (that failure is then read from the error pipe, by wait()).
        hello = json.loads(_read_line(reply_r, 30).split(b"\n")[0] or b'{"error": "it ended"}')
        if "error" in hello:
            raise LabError(f"the container's init did not start: {hello.get('step', 'start')}: {hello['error']}",
                           hint="nothing was left behind")
        self._marks.append(("namespaces, init in its cgroup", time.perf_counter()))

    @property
    def next(self) -> str | None:
        return self.steps[len(self.done)] if len(self.done) < len(self.steps) else None

    def step(self) -> str:
        """Run init's next step; returns its name. A failed step is a LabError naming it (the
        container is then gone: call remove())."""
        if self.next is None or self._control < 0:
            raise Refused(f"{self.name} has no step left: wait() for it")
        _order(self._control, b"step\n")
        answer = json.loads(_read_line(self._reply, 60) or b'{"error": "init ended"}')
        if "error" in answer:
            raise LabError(f"step {answer.get('step', self.next)!r} failed: {answer['error']}")
        self.done.append(answer["step"])
        if answer["step"] == "exec":
            self._init.begin()
            self._close_control()
        return answer["step"]

    def start(self) -> None:
        """Run every step left and the command (``runc start``). Its timeout counts from now;
        what it prints waits in a pipe (64 kB) until :meth:`wait` reads it."""
        if self._control >= 0:
            self._init.begin()
            _order(self._control, b"start\n")
            self._close_control()
            self.done = list(self.steps)

    def _close_control(self) -> None:
        for attr in ("_control", "_reply"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)

    def wait(self, timeout: float | None = None) -> Result:
        """Wait until the command ends; its Result (started first if it was not)."""
        if self.result is not None:
            return self.result
        self.start()
        deadline = time.monotonic() + (timeout if timeout is not None else self.config.timeout + 60)
        try:
            if self.ports is not None:
                # Carry its published ports' connections while it runs (docker-proxy's work),
                # its output read meanwhile.
                self.ports.serve(self._init.pidfd, deadline, also=self._init)
            ended = self._init.collect(deadline)
        except BaseException:
            # Ctrl-C (a notebook interrupt), or no end in time: it is killed, nothing waits on.
            self._end()
            raise
        error = ended["error"]
        if error is not None and ended["exit_code"] == init.EXIT_RUNTIME:
            self.remove()
            raise LabError(f"the container could not start: {error['step']}: {error['error']}",
                           hint="nothing was left behind; see the step named")
        # Killed by SIGKILL: by the OOM killer, if the cgroup counted one (else a kill, the timeout).
        oom = ended["exit_code"] == 128 + signal.SIGKILL and bool(self.group.stats().oom_kills)
        self._marks.append(("init's steps, the command, its end", time.perf_counter()))
        self.result = Result(self.name, ended["exit_code"], ended["output"], error["error"] if error else "",
                             ended["timed_out"], oom, time.perf_counter() - self._started)
        return self.result

    @property
    def timings(self) -> dict[str, float]:
        """Seconds spent in each phase so far, in order (the first mark is the start)."""
        return {name: t - self._marks[i][1] for i, (name, t) in enumerate(self._marks[1:])}

    def mounts(self) -> list:
        """The mounts of the container's mount namespace, as its init sees them (its mountinfo)."""
        return procfs.mountinfo(pid=self.pid)

    def status(self) -> dict[str, str]:
        """Its init's identity and limits now, from /proc/PID/status: Uid, NoNewPrivs, Seccomp, Cap*."""
        keep = ("Uid", "Gid", "NoNewPrivs", "Seccomp", "CapEff", "CapBnd")
        return {key: value for key, value in procfs.status(self.pid).items() if key in keep}

    def remove(self, keep_folder: bool = False) -> None:
        """Kill what still runs in it, then undo every step of create (idempotent); with
        ``keep_folder``, its folder stays (a detached container's log, state and upper layer)."""
        self._close_control()
        if keep_folder and self._keep is not None:
            self._keep["folder"] = True
        if self.result is None:
            self._end()
        if self._undo is not None:
            self._undo.close()
            self._undo = None
            self._marks.append(("remove", time.perf_counter()))

    def _end(self) -> None:
        """Kill its PID 1 (the kernel then kills the rest of its PID namespace) and whatever its
        cgroup still holds (the group's kill thaws a frozen v1 group first, where a SIGKILL
        waits), then reap its init: the runtime is its parent."""
        self._init.signal(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.group.kill()
        self._init.kill()

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        where = f"next: {self.next}" if self.next else ("ended" if self.result else "running")
        return f"Container({self.name}: {self.config.image}, pid {self.pid}, {len(self.done)}/{len(self.steps)} steps; {where})"


def create(image: str, command=None, *, store: images.Store | None = None, owner: str | None = None,
           capture: bool = True, log: bool = False, listening: network.proxy.Proxy | None = None,
           start: bool = False, **options) -> Container:
    """Make a container of ``image`` and stop before its first step (``runc create``): its folder,
    its overlay root, its cgroup, and its init, waiting. Go on with :meth:`Container.step`, or
    :meth:`Container.start`; :meth:`Container.remove` undoes it all. Options as :func:`run`.
    ``listening``: its published ports, bound already (by detach, before its fork); the
    container owns them from here. ``start``: every step is run at once, without waiting for
    :meth:`Container.start` (run() does so)."""
    started = time.perf_counter()
    cfg = config.check(image, command, **options)
    registry.guard(f"run a container of {cfg.image or cfg.rootfs}")
    if cfg.rootfs is not None:
        # A root folder given as it is (runc's bundle): no image, no layers, no folder of its own.
        if log:
            raise Refused("a detached container needs an image (its folder keeps its log and its layer)")
        try:
            os.close(mounts.open_folder(cfg.rootfs))
        except FileNotFoundError:
            raise Refused(f"the root folder {cfg.rootfs} does not exist") from None
        img = None
    else:
        store = store or images.Store()
        img = find_image(store, cfg.image)
        if not img.layers:
            raise Refused(f"the image {cfg.image!r} has no layers: nothing to make a root from")
    spec = settings(cfg, img)
    for volume in cfg.volumes:
        # Each source opened now, as init will (a lab folder, no symlink on the way): a bad one
        # is refused before anything is made.
        try:
            os.close(mounts.open_folder(volume.source))
        except FileNotFoundError:
            raise Refused(f"volume source {volume.source} does not exist", hint="make the folder first") from None
        except (OSError, LabError) as exc:
            raise Refused(f"volume source {volume.source}: {exc}") from None
    bundle = f"{config.CONTAINERS}/{cfg.name}"
    if img is not None and (os.path.lexists(bundle) or registry.ledger().find("dir", bundle) is not None):
        raise Refused(f"a container named {cfg.name!r} exists already ({bundle})",
                      hint="choose another name, or remove it (labhelper cleanup removes what a killed run left)")
    marks_ = [("check", started)]
    keep = {"folder": False}                # a detached container's folder stays until `rm`
    with contextlib.ExitStack() as undo:
        ports = listening
        if cfg.publish and ports is None:
            ports = network.proxy.Proxy(cfg.publish)    # first: a port in use is refused, nothing made
        if ports is not None:
            undo.callback(ports.close)
        if img is None:
            rootfs = cfg.rootfs
            marks_.append(("check", time.perf_counter()))
        else:
            undo.enter_context(store.working())     # no garbage collection of its layers meanwhile
            images.ensure_layers(store, img)
            lowers = [store.layer_dir(layer.chain_id) for layer in reversed(img.layers)]
            marks_.append(("check, the image", time.perf_counter()))
            mounts.make_dir(bundle, owner=owner)
            undo.callback(lambda: None if keep["folder"] else remove_folder(bundle))
            fault_point("container-bundle")
            rootfs = f"{bundle}/rootfs"
            for sub in ("upper", "work", "rootfs"):
                os.mkdir(f"{bundle}/{sub}", 0o755)
            marks_.append(("folder", time.perf_counter()))
            root = overlay.mount(rootfs, lowers, f"{bundle}/upper", f"{bundle}/work", owner=owner)
            undo.callback(root.unmount)
            fault_point("container-rootfs")
            marks_.append(("overlay root", time.perf_counter()))
        netns_fd, address = -1, None
        if cfg.net == "bridge":
            ns = network.create(group_name(cfg.name), owner=owner)
            undo.callback(network.remove_ns, ns)
            # The veth's host end is a recorded link: deleted (with its record) before the
            # namespace goes, which would take the pair along but leave the record.
            undo.callback(network.delete_link, network.port_name(ns, cfg.network))
            address = network.attach(ns, cfg.network, owner=owner)
            netns_fd = network.netns.open_ns(ns)
            undo.callback(os.close, netns_fd)
            fault_point("container-network")
            marks_.append(("network namespace on the bridge", time.perf_counter()))
        # What init will need, made here once per process and inherited by every fork: the
        # capabilities to drop and the encoded seccomp filter (about half a millisecond each).
        capabilities.to_drop(capabilities.DOCKER_DEFAULT)
        if cfg.seccomp:
            seccomp.default_program()
        # init's namespaces but the PID namespace (made by the fork) and the cgroup namespace
        # (made by init once it is in its cgroup, so that its cgroup is its "/").
        flags = NAMESPACES & ~(CloneFlags.CLONE_NEWCGROUP | CloneFlags.CLONE_NEWPID)
        if netns_fd >= 0:
            flags &= ~CloneFlags.CLONE_NEWNET
        asked = _ask_for_init(spec, rootfs, flags, capture and not log, f"{bundle}/{LOG}" if log else None,
                              netns_fd, undo)
        marks_.append(("init asked of the fork server", time.perf_counter()))
        # run() with published ports on its own loopback (--net none): they reach it through its
        # network namespace, opened below while init still waits; so "start" waits until then.
        early = start and (not cfg.publish or cfg.net == "bridge")
        control_w = reply_r = -1
        try:
            # Its cgroup is made while the server forks init and init makes its namespaces (as
            # crun makes it after its clone): init waits for "go" before it takes a step of its own.
            group = cgroups.group(group_name(cfg.name), owner=owner)
            undo.callback(group.remove)
            if cfg.limits:
                group.limit(**cfg.limits)
            devices.restrict(group.folders, group.version)
            spec["cgroup2"] = group.version == 2
            fault_point("container-cgroup")
            marks_.append(("cgroup and device rules", time.perf_counter()))
            init_, control_w, reply_r = asked.init(cfg.timeout)
            undo.callback(init_.kill)       # before the cgroup goes: its init is gone, and reaped
            init_.go(group)
            if early:
                # run(): the order to run every step goes in now, read by init as soon as it is
                # in its cgroup (no round trip through this process between the two).
                init_.begin()
                _order(control_w, b"start\n")
            box = Container(cfg, spec, rootfs, group, init_, control_w, reply_r, started, marks_)
        except BaseException:
            for fd in (control_w, reply_r):     # the Container owns them once made, not before
                if fd >= 0:
                    os.close(fd)
            raise
        undo.callback(box._close_control)   # idempotent: wait() and remove() close them too
        if early:
            box._close_control()
            box.done = list(box.steps)
        box.address = address
        if ports is not None:
            if address is not None:
                ports.connect_to(address.split("/")[0])     # its bridge address, from the host
            else:
                # --net none: its own loopback, through sockets made in its namespace.
                netns_of_init = os.open(f"/proc/{box.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                undo.callback(os.close, netns_of_init)
                ports.connect_in(lambda: network.netns.socket_at(netns_of_init))
            box.ports = ports
        box._undo = undo.pop_all()
        box._keep = keep
    if start and not early:
        box.start()
    return box


def run(image: str, command=None, *, store: images.Store | None = None, owner: str | None = None,
        capture: bool = True, **options) -> Result:
    """Run ``command`` (a list; default: the image's) in a new container of ``image`` and wait
    for it, like ``docker run --rm``: everything made for it is removed again when it ends.
    ``image=None, rootfs=FOLDER``: in that lab folder as it is, as runc runs a bundle.

    ``options`` (config.check): name, hostname, env (["K=V"] or a dict), workdir, user ("UID:GID"),
    memory ("64m"), cpus (0.5), pids (64), volumes (["SRC:DST[:ro]"], SRC a lab folder), net ("none",
    or "bridge" with network="NAME"), publish (["127.0.0.1:HOSTPORT:PORT"]: served while it runs), timeout
    (seconds after its start: then SIGKILL, exit 137), interactive (stdin passed in), seccomp (True).
    ``capture``: keep what it prints in Result.output (False: it goes to this process's fds 1, 2).
    """
    with create(image, command, store=store, owner=owner, capture=capture, start=True, **options) as box:
        result = box.wait()
    return replace(result, timings=box.timings)

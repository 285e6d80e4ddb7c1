"""Detached containers: one supervisor each, in the style of conmon, and what talks to it.

``docker run -d`` returns at once, and the container outlives the shell (here: the notebook
kernel) that started it. Something must still be its parent, reap it, keep its exit code and
its output: Podman's conmon, containerd's shim. Here it is a small daemon per container:

    notebook / CLI                    supervisor (setsid; its own process, not the notebook's)
    --------------                    --------------------------------------------------------
    fork -> fork, setsid -----------> create(): folder, overlay root, cgroup (records: its pid)
    read "started, pid N" <---------- start(); the output goes to the folder's container.log
    return the name                   wait(); state.json: exited, the exit code; unmount, rmdir
                                      the cgroup; the folder (log, state, upper) stays until rm

Everything a supervisor makes is recorded with *its* pid as the creator, so a notebook kernel
restart neither kills it nor makes its container a leftover; when it is gone, what is left is a
leftover like any other, and ``labhelper cleanup`` removes it (R4). :func:`ps`, :func:`logs`,
:func:`stop`, :func:`rm` and :func:`inspect` read the folder's ``state.json`` and check that the
supervisor it names is still that process (pid and start time). :func:`exec` joins a running
container: its cgroup first, then its namespaces, non-dumpable until execve.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
from dataclasses import dataclass

from .. import capabilities, cgroups, images, marks, mounts, network, process, procfs, registry, seccomp, syscalls
from ..errors import LabError, Refused
from ..flags import Prctl
from . import config, init, runtime

__all__ = ["detach", "ps", "logs", "stop", "rm", "inspect", "exec_", "Info", "STATE"]

STATE = "state.json"


@dataclass(frozen=True)
class Info:
    """One line of ``docker ps -a``."""
    name: str
    image: str
    command: str
    status: str             # "running" or "exited"
    exit_code: int | None
    pid: int | None         # init's pid on the host, while running
    ports: tuple[str, ...] = ()     # published, while running: 127.0.0.1:8080->80/tcp

    def __repr__(self) -> str:
        state = "Up" if self.status == "running" else f"Exited ({self.exit_code})"
        ports = f" {', '.join(self.ports)}" if self.ports else ""
        return f"{self.name:16} {self.image:12} {self.command[:30]:30} {state}{ports}"


def _folder(name: str) -> str:
    marks.plain_name(name, "container name")
    return f"{config.CONTAINERS}/{name}"


def _supervisor_group(name: str) -> str:
    """The lab cgroup a supervisor lives in: the census sees it there, and cleanup can end it."""
    return f"sup-{name}"


def _write_state(folder: str, state: dict) -> None:
    # Whole or not at all (a new file renamed over the old), and root's only: it holds the
    # container's environment, which may hold secrets (`docker inspect` is root's too).
    tmp = f"{folder}/.{STATE}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(state, fh)
    os.rename(tmp, f"{folder}/{STATE}")


def _read_state(name: str) -> dict:
    path = f"{_folder(name)}/{STATE}"
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise Refused(f"no detached container named {name!r}",
                      hint="`labhelper ps -a` lists them; a container started without -d has no state to ask") from None
    except ValueError as exc:
        raise LabError(f"the state of {name!r} cannot be read ({exc})") from None


def _running(state: dict) -> bool:
    return state.get("status") == "running" and process.is_same_process(state["supervisor"],
                                                                       state.get("supervisor_start"))


def _supervise(write_fd: int, image: str, command, store_root: str, owner: str | None, options: dict,
               listening) -> None:
    """The supervisor's life (in the daemon, never returns)."""
    process.own_lifetime()
    name = options["name"]
    try:
        # In a lab cgroup of its own (not the container's: the OOM killer must never pick it).
        cgroups.group(_supervisor_group(name), owner=owner).add(os.getpid())
        box = runtime.create(image, command, store=images.Store(store_root), owner=owner, log=True,
                             listening=listening, **options)
        process.stop_fork_server()        # one container: its fork server is not kept waiting
    except BaseException as exc:          # noqa: BLE001 - told to the caller, who raises it
        said = {"error": f"{type(exc).__name__}: {exc}"}
        if isinstance(exc, Refused):
            said.update(refused=exc.message, hint=exc.hint)
        os.write(write_fd, json.dumps(said).encode())
        os._exit(1)                       # the caller removes its cgroup
    folder = f"{config.CONTAINERS}/{name}"
    state = {"name": name, "image": image, "command": box.spec["command"], "env": box.spec["env"],
             "address": box.address, "ports": [repr(p) for p in (box.ports.publish if box.ports else ())],
             "supervisor": os.getpid(),
             "supervisor_start": procfs.start_time(os.getpid()), "pid": box.pid, "status": "running",
             "exit_code": None, "oom_killed": False, "started": time.time(), "finished": None}
    _write_state(folder, state)
    box.start()
    os.write(write_fd, json.dumps({"pid": box.pid}).encode())
    os.close(write_fd)
    try:
        result = box.wait(timeout=None)
        state.update(status="exited", exit_code=result.exit_code, oom_killed=result.oom_killed,
                     error=result.error, finished=time.time())
    except BaseException as exc:          # noqa: BLE001 - said in the state
        state.update(status="exited", exit_code=init.EXIT_RUNTIME, error=str(exc), finished=time.time())
    # Its mount, cgroup and network go first; "exited" is written once they are gone, so that
    # whoever waits for it (stop, rm) finds nothing half removed.
    try:
        box.remove(keep_folder=True)
    finally:
        _write_state(folder, state)
    os._exit(0)


def detach(image: str, command=None, *, store: images.Store | None = None, owner: str | None = None,
           **options) -> str:
    """``docker run -d``: start a container under its own supervisor and return its name at
    once. The request is checked here first (Refused: nothing made)."""
    options.setdefault("name", config.new_name())
    options.setdefault("timeout", config.MAX_TIMEOUT)
    cfg = config.check(image, command, **options)
    registry.guard(f"run a container of {cfg.image}")
    if cfg.rootfs is not None:
        raise Refused("a detached container needs an image (its folder keeps its log and its layer)")
    store = store or images.Store()
    runtime.find_image(store, cfg.image)        # a missing image is refused here, before the fork
    if os.path.lexists(_folder(cfg.name)):
        raise Refused(f"a container named {cfg.name!r} exists already", hint="choose another name, or rm it")
    # Its published ports are bound here, so that a port in use is refused before the fork; the
    # supervisor inherits the listening sockets and serves them (docker-proxy's work).
    listening = network.proxy.Proxy(cfg.publish) if cfg.publish else None
    try:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_fd)
                os.setsid()                         # no terminal, no process group of the caller's
                if os.fork() != 0:
                    os._exit(0)                     # the supervisor is orphaned: reparented, not ours
                null = os.open("/dev/null", os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                process.close_fds({write_fd, *(listening.fds() if listening else ())})
                _supervise(write_fd, image, command, store.root, owner, options, listening)
            finally:
                os._exit(1)
    finally:
        if listening is not None:
            listening.close()                   # the supervisor's copies are its own
    os.close(write_fd)
    os.waitpid(pid, 0)
    try:
        if not select.select([read_fd], [], [], 60)[0]:
            raise LabError(f"the supervisor of {cfg.name!r} did not answer within 60 s")
        answer = json.loads(os.read(read_fd, 65536) or b'{"error": "the supervisor ended"}')
    finally:
        os.close(read_fd)
    if "error" in answer:
        # The supervisor ended (or is ending) without a container: its cgroup goes too (remove
        # kills what is left in it, and waits until it is empty).
        supervisor = cgroups.existing(_supervisor_group(cfg.name))
        if supervisor is not None:
            supervisor.remove()
        if answer.get("refused"):
            raise Refused(answer["refused"], hint=answer.get("hint"))
        raise LabError(f"the container could not start: {answer['error']}")
    return cfg.name


def inspect(name: str) -> dict:
    """What the container's state says, with whether its supervisor still runs."""
    state = _read_state(name)
    state["running"] = _running(state)
    return state


def ps(all_: bool = True) -> list[Info]:
    """The detached containers (``docker ps -a``; ``all_=False``: the running ones)."""
    out = []
    try:
        names = sorted(os.listdir(config.CONTAINERS))
    except FileNotFoundError:
        return []
    for name in names:
        try:
            state = _read_state(name)
        except LabError:
            continue                            # a container started without -d: no state
        running = _running(state)
        if running or all_:
            out.append(Info(name, state["image"], " ".join(state["command"]), "running" if running else "exited",
                            None if running else state.get("exit_code"), state["pid"] if running else None,
                            tuple(state.get("ports", ())) if running else ()))
    return out


def logs(name: str, follow: bool = False, timeout: float = 60.0) -> str:
    """What the container printed (stdout and stderr, in order); ``follow``: until it ends."""
    path = f"{_folder(name)}/{runtime.LOG}"
    _read_state(name)
    deadline = time.monotonic() + timeout
    while follow and _running(_read_state(name)) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        with open(path, errors="replace") as fh:
            return fh.read(runtime.OUTPUT_LIMIT)
    except FileNotFoundError:
        return ""


def stop(name: str, timeout: float = 10.0) -> int | None:
    """``docker stop``: SIGTERM to the container's PID 1, SIGKILL after ``timeout`` s; its exit
    code. (PID 1 of a namespace ignores a signal it has no handler for: a shell needs a trap.)"""
    state = _read_state(name)
    if _running(state):
        group = cgroups.existing(runtime.group_name(name))
        with contextlib.suppress(ProcessLookupError):
            os.kill(state["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _running(_read_state(name)) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _running(_read_state(name)) and group is not None:
            group.kill()                            # every process in its cgroup, init first among them
        deadline = time.monotonic() + 30
        while _running(_read_state(name)) and time.monotonic() < deadline:
            time.sleep(0.02)
    return _read_state(name).get("exit_code")


def rm(name: str, force: bool = False) -> None:
    """``docker rm [-f]``: remove a stopped container's folder (its log, state and writable
    layer); with ``force``, stop it first (SIGKILL)."""
    state = _read_state(name)
    if _running(state):
        if not force:
            raise Refused(f"{name} is running", hint="stop it first, or rm with force=True (-f)")
        stop(name, timeout=0)
    folder = _folder(name)
    # What its supervisor would have removed, had it been killed: the overlay, the cgroup.
    mounts.unmount(f"{folder}/rootfs")
    group = cgroups.existing(runtime.group_name(name))
    if group is not None:
        group.remove()
    runtime.remove_folder(folder)
    supervisor = cgroups.existing(_supervisor_group(name))
    if supervisor is not None:
        supervisor.remove()


# --- exec ---------------------------------------------------------------------------------------------

def _exec_in(pidfd: int, spec: dict, capture: bool) -> dict:
    """In a child born in the container's cgroup (spawn joined it first): non-dumpable, join its
    namespaces (all at once, through the pidfd), then fork into its PID namespace and execve."""
    # Non-dumpable until execve: a process of the container cannot ptrace this one or open its
    # /proc/PID/exe (the host's python3) meanwhile (the CVE-2019-5736 class). execve of the
    # command makes it dumpable again.
    syscalls.prctl(Prctl.PR_SET_DUMPABLE, 0)
    syscalls.setns(pidfd, runtime.NAMESPACES)
    os.close(pidfd)
    os.chdir("/")                                # the mount namespace's root: the container's
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()                              # the first child joins the PID namespace
    if pid == 0:
        try:
            os.close(out_r)
            os.close(err_r)
            if capture:
                os.dup2(out_w, 1)
                os.dup2(out_w, 2)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            os.chdir(spec["workdir"])
            capabilities.drop_bounding(capabilities.DOCKER_DEFAULT)
            if spec["user"] is not None:
                init.become(*spec["user"])
            seccomp.attach()
            init.execute(spec["command"], spec["env"], err_w)
        except BaseException as exc:         # noqa: BLE001
            with contextlib.suppress(OSError):
                os.write(err_w, json.dumps({"step": "exec", "error": repr(exc)}).encode())
        finally:
            os._exit(init.EXIT_RUNTIME)
    os.close(out_w)
    os.close(err_w)
    chunks = []
    while capture:
        data = os.read(out_r, 65536)
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    said = os.read(err_r, 8192)
    return {"exit_code": init.exit_code(status), "output": b"".join(chunks).decode(errors="replace"),
            "error": json.loads(said)["error"] if said else ""}


def exec_(name: str, command, *, capture: bool = True, user=None, workdir: str | None = None, env=None,
          timeout: float = 60.0) -> runtime.Result:
    """``docker exec``: run ``command`` in the running container ``name``: in its cgroup (joined
    first, so the limits hold from the start), its namespaces and its root, with the same
    capabilities and seccomp filter as its PID 1."""
    cfg = config.check("x", command, name=name, user=user, workdir=workdir, env=env, timeout=timeout)
    state = _read_state(name)
    if not _running(state):
        raise Refused(f"{name} is not running", hint="`labhelper ps -a` says how it ended")
    group = cgroups.existing(runtime.group_name(name))
    if group is None:
        raise LabError(f"the cgroup of {name} is gone")
    base = dict(e.split("=", 1) for e in state.get("env", [])) if state.get("env") else {}
    base.update(dict(e.split("=", 1) for e in cfg.env))
    base.setdefault("PATH", runtime.DEFAULT_PATH)
    spec = {"command": list(cfg.command), "env": [f"{k}={v}" for k, v in base.items()],
            "workdir": cfg.workdir or "/", "user": cfg.user}
    pidfd = os.pidfd_open(state["pid"])
    try:
        # Born in the container's cgroup (spawn joins it before anything else runs).
        child = process.spawn(_exec_in, pidfd, spec, capture, cgroup=tuple(dict.fromkeys(group.folders.values())),
                              keep_fds=(pidfd,))
    finally:
        os.close(pidfd)
    started = time.perf_counter()
    ended = child.wait(cfg.timeout)
    return runtime.Result(name, ended["exit_code"], ended["output"], ended["error"], False, False,
                          time.perf_counter() - started)


"""The runtime's side of the fork: what `docker run` does outside the container.

    notebook kernel (threaded: it never unshares)
      1  check everything (config.check): nothing is made for a bad request
      2  a folder for the container              /var/lib/labhelper/containers/NAME   (recorded)
      3  its root: an overlay of the image's layers, upper and work in that folder
      4  a cgroup with its limits and its device rules (cgroups.devices)
      5  fork a child ------------------------> child: unshare mnt, uts, ipc, net, pid
                                                  make every mount private
                                                  fork -----------------> init: PID 1 (init.py)
                                                  move init into the cgroup  waits for that, then
                                                  collect its output         unshare cgroup ...
                                                                             ... execve(command)
                                                  waitpid: its exit status
      6  <------------------------------ the status, the output, the failed step if any
      7  undo 4, 3, 2 (kill what is left in the cgroup first)

Each step's undo is registered as soon as the step is done, so a failure (or Ctrl-C) anywhere
leaves nothing; a kill of the whole kernel leaves records, and ``labhelper cleanup`` removes what
they name (R1). Init is moved into the cgroup before it takes its first step, so everything the
container runs is limited, and the cgroup namespace it makes then shows it its own cgroup as "/".
The child that waits for it stays outside, so that the OOM killer never picks it.

Exit codes are Docker's: the command's own, 128+N for a signal N (137 for SIGKILL, as after an
OOM kill or the timeout), 125 when the runtime failed before the command ran, 126 when the command
cannot be executed, 127 when it is not found.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
from dataclasses import dataclass, field, replace

from .. import capabilities, cgroups, images, marks, mounts, network, overlay, process, procfs, registry, seccomp, syscalls
from ..cgroups import devices
from ..errors import LabError, Refused
from ..flags import CloneFlags, MountFlags, Prctl
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


def _outer(group: cgroups.Group, spec: dict, rootfs: str, capture: bool, timeout: float, control_r: int,
           reply_w: int, log: str | None = None, netns_fd: int = -1) -> dict:
    """In the child, in the new namespaces but the cgroup's (spawn unshared them): start init,
    move it into the container's cgroup before it goes on, say its pid, collect its output until it
    ends (or ``timeout`` s after its execve), and report how it ended. This process stays outside
    the cgroup, as runc does: the OOM killer, choosing in the cgroup, never picks it."""
    # Every mount this namespace makes stays in it, and nothing the host mounts later appears.
    syscalls.mount(None, "/", None, MountFlags.MS_REC | MountFlags.MS_PRIVATE)
    if netns_fd >= 0:
        # --net bridge: the network namespace was made and wired to the bridge first (a veth, an
        # address, a route), as CNI does for Kubernetes: join it instead of a new, empty one.
        syscalls.setns(netns_fd, CloneFlags.CLONE_NEWNET)
        os.close(netns_fd)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    out_r = out_w = -1
    if capture:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()                     # the first process of the new PID namespace: PID 1
    if pid == 0:
        try:
            syscalls.prctl(Prctl.PR_SET_PDEATHSIG, signal.SIGKILL)   # the runtime gone: the container too
            for fd in (err_r, go_w, out_r):
                if fd >= 0:
                    os.close(fd)
            if capture:
                os.dup2(out_w, 1)
                os.dup2(out_w, 2)
            elif log is not None:
                # A detached container's output: its log file, appended to, as it comes.
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(fd)
            if os.read(go_r, 1) != b"1":        # in its cgroup now, or the runtime failed
                os._exit(init.EXIT_RUNTIME)
            os.close(go_r)
            init.main(spec, rootfs, err_w, control_r, reply_w)
        finally:
            os._exit(init.EXIT_RUNTIME)
    for fd in (err_w, go_r, out_w, control_r):
        if fd >= 0:
            os.close(fd)
    try:
        group.add(pid)              # in every hierarchy (v1), before init runs a single step
        os.write(go_w, b"1")
        os.write(reply_w, json.dumps({"pid": pid}).encode() + b"\n")
    finally:
        os.close(go_w)
        os.close(reply_w)
    # The error pipe ends (EOF) when init executes the command (O_CLOEXEC) or dies: the timeout
    # counts from then, not while a notebook goes step by step.
    chunks, kept, timed_out, error = [], 0, False, b""
    watching = [err_r] + ([out_r] if capture else [])
    deadline = None

    def overdue() -> None:
        nonlocal timed_out
        if deadline is not None and time.monotonic() >= deadline and not timed_out:
            timed_out = True
            os.kill(pid, signal.SIGKILL)        # PID 1 gone: the kernel kills the whole namespace

    def patience() -> float:
        """Kill init if it is overdue; how long the next select may wait."""
        overdue()
        return 1.0 if deadline is None or timed_out else max(deadline - time.monotonic(), 0.01)

    while watching:                     # the output ends when the namespace's last process does
        for fd in select.select(watching, [], [], patience())[0]:
            data = os.read(fd, 65536)
            if fd == err_r:
                error += data
                if not data:
                    watching.remove(err_r)
                    deadline = time.monotonic() + timeout
            elif not data:
                watching.remove(out_r)
            else:
                if kept < OUTPUT_LIMIT:
                    chunks.append(data[:OUTPUT_LIMIT - kept])
                kept += len(data)
    # The output ends as init's files close, a moment before it can be reaped: wait on a pidfd
    # (readable once it has exited), never a sleep-and-poll that would add up to its period.
    pidfd = os.pidfd_open(pid)
    try:
        while not select.select([pidfd], [], [], patience())[0]:
            pass
    finally:
        os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    output = b"".join(chunks).decode(errors="replace")
    if kept > OUTPUT_LIMIT:
        output += f"\n[... {kept - OUTPUT_LIMIT} more bytes not kept]"
    return {"exit_code": init.exit_code(status), "output": output, "timed_out": timed_out,
            "error": json.loads(error) if error else None}


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


class Container:
    """A container made by :func:`create` and not yet ended: its init waits before each step
    until told (:meth:`step`, :meth:`start`). What the notebook sees of it from outside: its pid
    here (``pid``), the mounts of its namespace (:meth:`mounts`), its process status
    (:meth:`status`). :meth:`remove` undoes everything (and kills what still runs)."""

    def __init__(self, cfg: config.Config, spec: dict, rootfs: str, group: cgroups.Group, child: process.Child,
                 control_w: int, reply_r: int, started: float, marks_: list[tuple[str, float]]):
        self.name, self.config, self.spec, self.rootfs, self.group = cfg.name, cfg, spec, rootfs, group
        self._child, self._control, self._reply, self._started = child, control_w, reply_r, started
        self._undo = contextlib.ExitStack()
        self._keep: dict | None = None
        self.address: str | None = None          # with net="bridge": its address on the bridge
        self.ports: network.proxy.Proxy | None = None   # its published ports (-p), served by wait()
        self._marks = marks_                     # (phase, when it ended): Result.timings
        self.steps = [s.name for s in init.steps(spec, rootfs)] + ["exec"]
        self.done: list[str] = []
        self.result: Result | None = None
        hello = json.loads(_read_line(reply_r, 30) or b"{}")
        if "pid" not in hello:
            raise LabError("the container's init did not start", hint="see the result of wait()")
        self.pid: int = hello["pid"]
        self._marks.append(("fork, namespaces, init in the cgroup", time.perf_counter()))

    @property
    def next(self) -> str | None:
        return self.steps[len(self.done)] if len(self.done) < len(self.steps) else None

    def step(self) -> str:
        """Run init's next step; returns its name. A failed step is a LabError naming it (the
        container is then gone: call remove())."""
        if self.next is None or self._control < 0:
            raise Refused(f"{self.name} has no step left: wait() for it")
        os.write(self._control, b"step\n")
        answer = json.loads(_read_line(self._reply, 60) or b'{"error": "init ended"}')
        if "error" in answer:
            raise LabError(f"step {answer.get('step', self.next)!r} failed: {answer['error']}")
        self.done.append(answer["step"])
        if answer["step"] == "exec":
            self._close_control()
        return answer["step"]

    def start(self) -> None:
        """Run every step left and the command (``runc start``)."""
        if self._control >= 0:
            os.write(self._control, b"start\n")
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
        if self.ports is not None:
            # Carry its published ports' connections while it runs (docker-proxy's work).
            self.ports.serve(self._child.fileno(), deadline)
        ended = self._child.wait(max(0.001, deadline - time.monotonic()))
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
            with contextlib.suppress(ProcessLookupError):
                self.group.kill()
            with contextlib.suppress(Exception):
                self._child.wait(30)
        if self._undo is not None:
            self._undo.close()
            self._undo = None
            self._marks.append(("remove", time.perf_counter()))

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        where = f"next: {self.next}" if self.next else ("ended" if self.result else "running")
        return f"Container({self.name}: {self.config.image}, pid {self.pid}, {len(self.done)}/{len(self.steps)} steps; {where})"


def create(image: str, command=None, *, store: images.Store | None = None, owner: str | None = None,
           capture: bool = True, log: bool = False, listening: network.proxy.Proxy | None = None,
           **options) -> Container:
    """Make a container of ``image`` and stop before its first step (``runc create``): its folder,
    its overlay root, its cgroup, and its init, waiting. Go on with :meth:`Container.step`, or
    :meth:`Container.start`; :meth:`Container.remove` undoes it all. Options as :func:`run`.
    ``listening``: its published ports, bound already (by detach, before its fork); the
    container owns them from here."""
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
        group = cgroups.group(group_name(cfg.name), owner=owner)
        undo.callback(group.remove)
        if cfg.limits:
            group.limit(**cfg.limits)
        devices.restrict(group.folders, group.version)
        spec["cgroup2"] = group.version == 2
        fault_point("container-cgroup")
        marks_.append(("cgroup and device rules", time.perf_counter()))
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
        control_r, control_w = os.pipe2(os.O_CLOEXEC)
        reply_r, reply_w = os.pipe2(os.O_CLOEXEC)
        try:
            flags = NAMESPACES & ~CloneFlags.CLONE_NEWCGROUP
            if netns_fd >= 0:
                flags &= ~CloneFlags.CLONE_NEWNET
            child = process.spawn(_outer, group, spec, rootfs, capture and not log, cfg.timeout, control_r, reply_w,
                                  f"{bundle}/{LOG}" if log else None, netns_fd, unshare=flags,
                                  keep_fds=(control_r, reply_w) + ((netns_fd,) if netns_fd >= 0 else ()))
        finally:
            os.close(control_r)
            os.close(reply_w)
        undo.callback(child.kill)           # last in, first out: before the cgroup and the mount go
        try:
            box = Container(cfg, spec, rootfs, group, child, control_w, reply_r, started, marks_)
        except BaseException:
            os.close(control_w)
            os.close(reply_r)
            raise
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
    with create(image, command, store=store, owner=owner, capture=capture, **options) as box:
        result = box.wait()
    return replace(result, timings=box.timings)

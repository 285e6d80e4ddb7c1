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
from dataclasses import dataclass

from .. import cgroups, images, marks, mounts, overlay, process, registry, syscalls
from ..cgroups import devices
from ..errors import LabError, Refused
from ..flags import CloneFlags, MountFlags, Prctl
from ..registry import fault_point
from . import config, init

__all__ = ["run", "Result", "NAMESPACES", "OUTPUT_LIMIT"]

NAMESPACES = (CloneFlags.CLONE_NEWNS | CloneFlags.CLONE_NEWUTS | CloneFlags.CLONE_NEWIPC | CloneFlags.CLONE_NEWNET
              | CloneFlags.CLONE_NEWPID | CloneFlags.CLONE_NEWCGROUP)
OUTPUT_LIMIT = 1 << 20          # bytes of output kept (the rest is counted, not kept)
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

    def __repr__(self) -> str:
        notes = [n for n, on in (("OOM-killed", self.oom_killed), ("timed out", self.timed_out)) if on]
        extra = f" ({', '.join(notes)})" if notes else ""
        said = f"; {self.error}" if self.error else ""
        return f"Result({self.name}: exit {self.exit_code}{extra}{said})"


def _settings(cfg: config.Config, img: images.Image) -> dict:
    """The plain spec init.main reads: the request merged with the image's own settings, as
    Docker merges them (ENTRYPOINT + the command or CMD; ENV, then -e over it; WORKDIR)."""
    s = img.settings or {}
    entry = list(s.get("Entrypoint") or [])
    command = entry + (list(cfg.command) if cfg.command is not None else list(s.get("Cmd") or []))
    if not command:
        raise Refused(f"no command: the image {img.name!r} has no CMD or ENTRYPOINT; give one")
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


def _outer(group: cgroups.Group, spec: dict, rootfs: str, capture: bool, timeout: float) -> dict:
    """In the child, in the new namespaces but the cgroup's (spawn unshared them): start init,
    move it into the container's cgroup before it goes on, collect its output until it ends or the
    timeout, and report how it ended. This process stays outside the cgroup, as runc does: the
    OOM killer, choosing in the cgroup, never picks the runtime instead of the container."""
    # Every mount this namespace makes stays in it, and nothing the host mounts later appears.
    syscalls.mount(None, "/", None, MountFlags.MS_REC | MountFlags.MS_PRIVATE)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    out_r = out_w = -1
    if capture:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()                     # the first process of the new PID namespace: PID 1
    if pid == 0:
        try:
            syscalls.prctl(Prctl.PR_SET_PDEATHSIG, signal.SIGKILL)   # the runtime gone: the container too
            os.close(err_r)
            os.close(go_w)
            if capture:
                os.close(out_r)
                os.dup2(out_w, 1)
                os.dup2(out_w, 2)
            if os.read(go_r, 1) != b"1":        # in its cgroup now, or the runtime failed
                os._exit(init.EXIT_RUNTIME)
            os.close(go_r)
            init.main(spec, rootfs, err_w)
        finally:
            os._exit(init.EXIT_RUNTIME)
    os.close(err_w)
    os.close(go_r)
    try:
        group.add(pid)              # in every hierarchy (v1), before init runs a single step
        os.write(go_w, b"1")
    finally:
        os.close(go_w)
    if capture:
        os.close(out_w)
    chunks, kept, timed_out = [], 0, False
    deadline = time.monotonic() + timeout
    while capture:
        left = deadline - time.monotonic()
        if left <= 0 and not timed_out:
            timed_out = True
            os.kill(pid, signal.SIGKILL)        # PID 1 gone: the kernel kills the whole namespace
        ready, _, _ = select.select([out_r], [], [], max(left, 0.05) if not timed_out else 1.0)
        if not ready:
            continue
        data = os.read(out_r, 65536)
        if not data:
            break
        if kept < OUTPUT_LIMIT:
            chunks.append(data[:OUTPUT_LIMIT - kept])
        kept += len(data)
    if not capture:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline and not timed_out:
                timed_out = True
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
    else:
        _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    error = os.read(err_r, 8192)
    output = b"".join(chunks).decode(errors="replace")
    if kept > OUTPUT_LIMIT:
        output += f"\n[... {kept - OUTPUT_LIMIT} more bytes not kept]"
    return {"exit_code": 128 - code if code < 0 else code, "output": output, "timed_out": timed_out,
            "error": json.loads(error) if error else None}


def _image(store: images.Store, name: str) -> images.Image:
    try:
        return images.image(store, name)
    except LabError as exc:
        names = sorted(i.name for i in images.images(store))
        raise Refused(f"no image {name!r} in the store {store.root}: {exc.message if hasattr(exc, 'message') else exc}",
                      hint=f"images there: {', '.join(names) or 'none'}; make one with images.busybox_image(store)"
                      ) from None


def _remove_bundle(path: str) -> None:
    mounts.remove_dir(marks.Obj("dir", path, where=(path,)), registry.ledger())


def run(image: str, command=None, *, store: images.Store | None = None, owner: str | None = None,
        capture: bool = True, **options) -> Result:
    """Run ``command`` (a list; default: the image's) in a new container of ``image`` and wait
    for it, like ``docker run --rm``: everything made for it is removed again when it ends.

    ``options`` (config.check): name, hostname, env (["K=V"] or a dict), workdir, user ("UID:GID"),
    memory ("64m"), cpus (0.5), pids (64), volumes (["SRC:DST[:ro]"], SRC a lab folder), timeout
    (seconds: then SIGKILL, exit 137), interactive (stdin passed in), seccomp (True).
    ``capture``: keep what it prints in Result.output (False: it goes to this process's fds 1, 2).
    """
    cfg = config.check(image, command, **options)
    registry.guard(f"run a container of {cfg.image}")
    store = store or images.Store()
    img = _image(store, cfg.image)
    if not img.layers:
        raise Refused(f"the image {cfg.name!r} has no layers: nothing to make a root from")
    spec = _settings(cfg, img)
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
    if os.path.lexists(bundle) or registry.ledger().find("dir", bundle) is not None:
        raise Refused(f"a container named {cfg.name!r} exists already ({bundle})",
                      hint="choose another name, or remove it (labhelper cleanup removes what a killed run left)")
    started = time.monotonic()
    with contextlib.ExitStack() as undo:
        undo.enter_context(store.working())     # no garbage collection of its layers meanwhile
        images.ensure_layers(store, img)
        lowers = [store.layer_dir(layer.chain_id) for layer in reversed(img.layers)]
        mounts.make_dir(bundle, owner=owner)
        undo.callback(_remove_bundle, bundle)
        fault_point("container-bundle")
        rootfs = f"{bundle}/rootfs"
        for sub in ("upper", "work", "rootfs"):
            os.mkdir(f"{bundle}/{sub}", 0o755)
        root = overlay.mount(rootfs, lowers, f"{bundle}/upper", f"{bundle}/work", owner=owner)
        undo.callback(root.unmount)
        fault_point("container-rootfs")
        group = cgroups.group(f"ct-{cfg.name}", owner=owner)
        undo.callback(group.remove)
        if cfg.limits:
            group.limit(**cfg.limits)
        devices.restrict(group.folders, group.version)
        spec["cgroup2"] = group.version == 2
        fault_point("container-cgroup")
        child = process.spawn(_outer, group, spec, rootfs, capture, cfg.timeout,
                              unshare=NAMESPACES & ~CloneFlags.CLONE_NEWCGROUP)
        ended = child.wait(cfg.timeout + 60)
        stats = group.stats()
    error = ended["error"]
    if error is not None and ended["exit_code"] == init.EXIT_RUNTIME:
        raise LabError(f"the container could not start: {error['step']}: {error['error']}",
                       hint="nothing was left behind; see the step named")
    oom = bool(stats.oom_kills) and ended["exit_code"] == 128 + signal.SIGKILL
    return Result(cfg.name, ended["exit_code"], ended["output"], error["error"] if error else "",
                  ended["timed_out"], oom, time.monotonic() - started)

"""A container by hand (chapter 07): `docker run` composed from the kernel's parts, the way a
runtime such as runc or crun composes them.

* ``config``   the request, checked whole before anything is made (names, limits, paths, volumes);
* ``runtime``  the outside: a folder, an overlay root of the image's layers, a cgroup with limits
               and device rules, init cloned into new namespaces (by its fork server), the wait, the undo;
* ``init``     the inside, PID 1 of the container: volumes, /proc, /dev, /sys, masked paths,
               pivot_root, hostname, capabilities, seccomp, then execve;
* ``supervisor`` detached containers (``docker run -d``): a daemon per container that reaps it
               and keeps its exit code and output; ps, logs, stop, rm, inspect; exec.

    from labhelper import container, images
    store = images.Store()
    images.busybox_image(store)
    container.run("busybox", ["/bin/sh", "-c", "echo hello from $(hostname)"], name="web")
"""
from __future__ import annotations

from .config import CONTAINERS, Config, Volume, check
from .init import (DEVICES, EXIT_CANNOT_RUN, EXIT_NOT_FOUND, EXIT_RUNTIME, MASKED, READ_ONLY, Step, open_in_root,
                   steps)
from .runtime import NAMESPACES, Container, Result, create, run
from .supervisor import Info, detach, exec_, inspect, logs, ps, rm, stop

__all__ = ["run", "create", "Container", "Result", "detach", "ps", "logs", "stop", "rm", "inspect", "exec_", "Info", "Config", "Volume", "check", "CONTAINERS", "NAMESPACES", "DEVICES", "MASKED",
           "READ_ONLY", "EXIT_RUNTIME", "EXIT_CANNOT_RUN", "EXIT_NOT_FOUND", "open_in_root", "steps", "Step"]

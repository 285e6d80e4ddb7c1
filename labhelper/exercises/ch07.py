"""Chapter 07 exercises: a volume, and what root in a container can and cannot do.

Each check runs containers itself and looks at what happened: the file on the host, the exit
status of each operation inside.
"""
from __future__ import annotations

import os

from .. import container, images, mounts, network, rootfs
from ..errors import LabError
from . import Exercise, right, wrong

__all__ = ["q1", "q2", "q3", "EX1", "PROBES", "prepare_q1", "prepare_q3", "BRIDGE", "SERVER"]

EX1 = "/var/lib/labhelper/ch07/ex1"
_GREETING = "hello from inside\n"


def prepare_q1(folder: str = EX1, owner: str = "ch07") -> str:
    """Make exercise 1's (empty) lab folder, recorded as chapter 07's; returns it."""
    if not os.path.isdir(folder):
        mounts.make_dir(folder, owner=owner)
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))
    return folder


def _store(store):
    store = store or images.Store()
    rootfs.base_image(store)
    return store


def _check_volume(answer, store=None, folder: str = EX1) -> object:
    if not isinstance(answer, list) or not all(isinstance(v, str) for v in answer):
        return wrong("answer with the list you would pass as volumes=, such as ['SOURCE:DESTINATION'].")
    if not os.path.isdir(folder):
        return wrong(f"{folder} does not exist: run the exercise's first cell (ch07.prepare_q1()).")
    target = os.path.join(folder, "greeting")
    if os.path.lexists(target):
        os.unlink(target)
    try:
        result = container.run("busybox", ["sh", "-c", f"echo '{_GREETING.strip()}' > /out/greeting"],
                               store=_store(store), volumes=answer, owner="ch07")
    except LabError as exc:
        return wrong(f"the container could not start with those volumes: {exc.message}")
    if result.exit_code != 0:
        said = result.output.strip().splitlines()[-1] if result.output.strip() else f"exit {result.exit_code}"
        if "Read-only file system" in result.output:
            return wrong("the container cannot write to /out: the volume is mounted read-only (':ro').")
        if "nonexistent directory" in result.output or "No such file" in result.output:
            shown = ", ".join(v.split(":")[1] for v in answer if v.count(":") >= 1) or "nowhere"
            return wrong(f"inside the container there is no /out: your volume is at {shown} (DESTINATION is the "
                         "path inside).")
        return wrong(f"the container could not write /out/greeting: {said}")
    if not os.path.isfile(target):
        return wrong(f"the container wrote /out/greeting, but it is not in {folder}: /out is not that folder "
                     "(SOURCE is the host's folder, DESTINATION the path inside).")
    if open(target).read() != _GREETING:
        return wrong(f"{target} does not hold what the container wrote.")
    return right(f"what the container wrote to /out/greeting is in {folder}/greeting on the host: one folder, two "
                 "names, by a bind mount made in the container's mount namespace.")


q1 = Exercise(
    "07.1",
    f"Give the `volumes` list for a busybox container so that what it writes to `/out` lands in the lab folder "
    f"`{EX1}` on the host; `ch07.q1.check(volumes)` runs the container and looks for the file on the host.",
    _check_volume,
    "Docker's `-v SOURCE:DESTINATION`: SOURCE is the host's folder, DESTINATION the path inside the container; "
    "`:ro` would make it read-only.",
    f"`['{EX1}:/out']`. The runtime binds the host folder on `/out` inside the container's root, looked up with "
    "openat2(RESOLVE_IN_ROOT) so that a symlink in the image cannot send it elsewhere.",
)


# --- q2: what root inside can and cannot do -----------------------------------------------------------

# operation: (the shell command that tries it inside, what decides)
PROBES = {
    "chown a file": ("touch /tmp/f && chown 1000:1000 /tmp/f", "CAP_CHOWN, in Docker's default set"),
    "make a device node": ("mknod /tmp/kvm c 10 232", "CAP_MKNOD, in the default set (the node is useless: below)"),
    "open the device node it made": ("mknod /tmp/kvm c 10 232 && cat /tmp/kvm",
                                     "the root is mounted nodev, and the cgroup's device rules allow no 10:232"),
    "ping over loopback": ("ping -c 1 -W 2 127.0.0.1", "CAP_NET_RAW, in the default set (a raw ICMP socket)"),
    "mount a tmpfs": ("mount -t tmpfs none /mnt", "CAP_SYS_ADMIN is dropped, and seccomp refuses mount(2)"),
    "change its host name": ("hostname other", "CAP_SYS_ADMIN is dropped (sethostname)"),
    # (busybox's date exits 0 even when the kernel refused: its complaint on stderr says so)
    "set the clock": ("! date -s 2001-01-01 2>&1 >/dev/null | grep -q .",
                      "CAP_SYS_TIME is dropped, and seccomp refuses settimeofday"),
    "read the kernel log": ("dmesg", "CAP_SYSLOG is dropped, and seccomp refuses syslog(2)"),
    "raise its own priority": ("nice -n -5 true", "CAP_SYS_NICE is dropped"),
    "write a kernel setting": ("echo 1 > /proc/sys/net/ipv4/ip_forward", "/proc/sys is mounted read-only"),
}


def measure(store=None) -> dict[str, bool]:
    """Try each operation of PROBES as root in one container: {operation: it worked}."""
    lines = "; ".join(f"({command}) >/dev/null 2>&1; echo \"$?\"" for command, _ in PROBES.values())
    result = container.run("busybox", ["sh", "-c", lines], store=_store(store), owner="ch07")
    codes = result.output.split()
    if result.exit_code != 0 or len(codes) != len(PROBES):
        raise LabError(f"the probe container failed: {result!r}: {result.output[-300:]}")
    return {name: code == "0" for name, code in zip(PROBES, codes)}


def _check_powers(answer, store=None, measured: dict[str, bool] | None = None) -> object:
    if not isinstance(answer, dict) or set(answer) != set(PROBES) or not all(isinstance(v, bool)
                                                                              for v in answer.values()):
        return wrong("answer with a dict of every operation in ch07.PROBES to True (it works as root inside) or "
                     "False (it is refused).")
    seen = measured if measured is not None else measure(store)
    off = [name for name in PROBES if answer[name] != seen[name]]
    if off:
        first = off[0]
        said = "works" if seen[first] else "is refused"
        return wrong(f"{len(off)} of {len(PROBES)} differ from what the container showed; for one: "
                     f"'{first}' {said} inside. Try it yourself with container.run(...).")
    return right("every answer is what the kernel did: root in a container keeps 14 capabilities, loses the rest, "
                 "meets a seccomp filter, a read-only /proc/sys and a device list.")


q2 = Exercise(
    "07.2",
    "What can root do inside a container? For each operation of `ch07.PROBES`, say True (it works) or False (it is "
    "refused): `ch07.q2.check({'chown a file': ..., ...})`. The check tries each one in a container.",
    _check_powers,
    "Try them: `container.run('busybox', ['sh', '-c', 'mount -t tmpfs none /mnt; echo $?'])`. What decides is "
    "the bounding set (capabilities.DOCKER_DEFAULT), the seccomp filter (seccomp.DENIED), the read-only paths and "
    "the device rules.",
    "Works: chown a file, make a device node, ping over loopback. Refused: open the node it made (nodev, device "
    "rules), mount (no CAP_SYS_ADMIN, seccomp), host name (no CAP_SYS_ADMIN), clock (no CAP_SYS_TIME, seccomp), "
    "kernel log (no CAP_SYSLOG, seccomp), a higher priority (no CAP_SYS_NICE), a kernel setting (read-only "
    "/proc/sys). `{name: name in ('chown a file', 'make a device node', 'ping over loopback') for name in "
    "ch07.PROBES}`.",
)


# --- q3: two containers talking -------------------------------------------------------------------------

BRIDGE, SERVER, PORT = "ch07ex3", "ex3-server", 7000
_SAYS = "says hi"


def prepare_q3(store=None, bridge: str = BRIDGE, server: str = SERVER, owner: str = "ch07") -> str:
    """Make exercise 3's lab bridge and start its server container on it (detached): on port
    7000 it answers each connection with one line. Returns the server's name."""
    store = _store(store)
    if not any(link.name == network.host_name(bridge) for link in network.list_links()):
        network.bridge(bridge, owner=owner)
    try:
        state = container.inspect(server)
        if state["running"]:
            return server
        container.rm(server)
    except LabError:
        pass
    return container.detach("busybox", ["sh", "-c", f"while true; do echo \"$(hostname) {_SAYS}\" | "
                                                    f"nc -l -p {PORT}; done"],
                            store=store, name=server, net="bridge", network=bridge, owner=owner)


def _check_talk(answer, store=None, bridge: str = BRIDGE, server: str = SERVER) -> object:
    if not isinstance(answer, list) or not answer or not all(isinstance(a, str) for a in answer):
        return wrong("answer with the client container's command, as a list: ['nc', ADDRESS, PORT].")
    try:
        state = container.inspect(server)
    except LabError:
        return wrong(f"the server {server!r} is not there: run the exercise's first cell (ch07.prepare_q3()).")
    if not state["running"]:
        return wrong(f"the server {server!r} is not running any more: run ch07.prepare_q3() again.")
    try:
        result = container.run("busybox", answer, store=_store(store), net="bridge", network=bridge, timeout=10,
                               owner="ch07")
    except LabError as exc:
        return wrong(f"the client container could not start: {exc.message}")
    if f"{server} {_SAYS}" in result.output:
        return right(f"the client reached {server} at {state['address'].split('/')[0]}:{PORT} through the bridge "
                     f"{network.host_name(bridge)}: two network namespaces, one veth each, one bridge between them.")
    text = " ".join(answer)
    if "127.0.0.1" in text or "localhost" in text:
        return wrong("127.0.0.1 inside a container is its own loopback, not the server's: use the server's "
                     "address on the bridge.")
    said = result.output.strip().splitlines()[-1] if result.output.strip() else f"nothing (exit {result.exit_code})"
    return wrong(f"the server's greeting did not arrive; the client printed: {said[:200]}")


q3 = Exercise(
    "07.3",
    f"A server container, `{SERVER}`, listens on port {PORT} of its address on the lab bridge `{BRIDGE}`. Give the "
    "command of a second container, on the same bridge, that prints what the server says: "
    "`ch07.q3.check(['...', ...], store)` runs it with `net='bridge', network=ch07.BRIDGE`.",
    _check_talk,
    f"The server's address: `container.inspect('{SERVER}')['address']` (without the /24). busybox has `nc ADDRESS "
    "PORT`, which prints what the other end sends.",
    f"`['nc', container.inspect('{SERVER}')['address'].split('/')[0], '{PORT}']`. Each container has its own network "
    "namespace; a veth pair joins each to the bridge, which forwards between them like a switch (chapter 04).",
)

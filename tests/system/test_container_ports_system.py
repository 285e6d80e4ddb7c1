"""Published ports (``-p 127.0.0.1:HOSTPORT:PORT``, chapter 07): a container's server reached
from this machine's loopback through the lab's user-space proxy, detached (its supervisor
proxies), in the foreground (run() proxies while it waits) and on a lab bridge; a port in use is
refused with nothing made (R3). Traffic goes to 127.0.0.1 and to the lab's own namespaces only."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from labhelper import cleanup, container
from labhelper.errors import Refused

# Serves its host name and 300 kB of 'x' (more than the proxy's buffers hold at once).
WEB = ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && "
       "head -c 300000 /dev/zero | tr '\\0' x > /www/big && exec httpd -f -p 8080 -h /www"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str = "/", seconds: float = 10.0) -> str:
    """GET, again until the server in the container listens (before, the proxy closes the
    connection it cannot carry)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                return answer.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _census():
    return cleanup.census().names()


def test_a_detached_server_published_on_loopback(bb, uid):
    before = _census()
    port = _free_port()
    name = container.detach("busybox", WEB, store=bb, name=f"web-{uid}", publish=[f"127.0.0.1:{port}:8080"])
    try:
        assert _get(port) == f"web-{uid}\n"                    # its hostname: served from inside it
        big = _get(port, "/big")
        assert len(big) == 300000 and set(big) == {"x"}
        assert container.inspect(name)["ports"] == [f"127.0.0.1:{port}->8080/tcp"]
        [row] = [r for r in container.ps() if r.name == name]
        assert repr(row).endswith(f"Up 127.0.0.1:{port}->8080/tcp")
        # The port is taken now: a second container asking for it is refused, nothing made.
        during = _census()
        for start in (container.detach, container.run):
            with pytest.raises(Refused, match=f"127.0.0.1:{port} is in use here"):
                start("busybox", ["true"], store=bb, name=f"two-{uid}", publish=[f"{port}:80"])
        assert _census() == during
    finally:
        container.rm(name, force=True)
    assert _census() == before
    with socket.socket() as again:                          # the proxy is gone with it: free again
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


def test_in_the_foreground_from_the_cli(bb, uid):
    # run() carries the connections while it waits: the CLI's foreground `labhelper run -p`.
    before = _census()
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "labhelper", "run", "--store", bb.root, "--name", f"fg-{uid}",
                             "-p", f"{port}:7000", "busybox", "sh", "-c", "echo pong | nc -l -p 7000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        said = b""
        while not said and time.monotonic() < deadline:
            try:                            # refused until the CLI listens; closed until nc does
                with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                    said = client.recv(100)
            except OSError:
                pass
            time.sleep(0.05)
        assert said == b"pong\n"
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        proc.kill()
        proc.wait()
    assert _census() == before


def test_on_a_lab_bridge_the_proxy_goes_to_its_address(bb, uid, network_owner):
    from labhelper import network
    before = _census()
    bridge = network.bridge(f"p{uid}")
    port = _free_port()
    try:
        name = container.detach("busybox", WEB, store=bb, name=f"bw-{uid}", net="bridge", network=f"p{uid}",
                                publish=[f"{port}:8080"])
        assert _get(port) == f"bw-{uid}\n"
        container.rm(name, force=True)
    finally:
        network.delete_link(bridge)
    assert _census() == before


def test_a_failed_start_in_the_supervisor_leaves_nothing(bb, uid):
    # Refused by the supervisor (a volume folder missing), not before its fork: its own cgroup
    # goes too, and the port it held is free.
    before = _census()
    port = _free_port()
    with pytest.raises(Refused, match="does not exist"):
        container.detach("busybox", ["true"], store=bb, name=f"vf-{uid}", publish=[f"{port}:80"],
                         volumes=[f"/var/lib/labhelper/no-such-{uid}:/data"])
    assert _census() == before
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))


def test_its_output_is_read_while_its_ports_are_served(bb, uid):
    # The runtime is init's parent and reads its output itself: while run() carries the ports'
    # connections, it must go on reading, or a container printing more than a pipe holds (64 kB)
    # would wait for ever (here: until its timeout, exit 137).
    before = _census()
    result = container.run("busybox", ["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x; echo; echo done"],
                           store=bb, name=f"loud-{uid}", publish=[f"{_free_port()}:80"], timeout=30)
    assert result.exit_code == 0 and not result.timed_out, result
    assert result.output.count("x") == 300000 and result.output.endswith("done\n")
    assert _census() == before


def test_a_short_command_with_ports_on_its_own_loopback(bb, uid):
    # --net none: the ports reach it through its network namespace, opened while its init waits;
    # a command that ends at once must not have taken that namespace away before.
    before = _census()
    for i in range(5):
        result = container.run("busybox", ["true"], store=bb, name=f"brief-{uid}-{i}",
                               publish=[f"{_free_port()}:80"], timeout=30)
        assert result.exit_code == 0, result
    assert _census() == before

"""Published ports (``docker run -p 127.0.0.1:8080:80``): a small user-space proxy, as docker-proxy is.

A container's port lives in its own network namespace, so nothing on the host's 127.0.0.1 reaches
it. Docker publishes a port two ways at once: DNAT rules in the host's firewall, and docker-proxy,
a process that listens on the host's port and copies each connection's bytes to the container's.
The lab uses only the proxy. DNAT from 127.0.0.1 to a container would need the sysctl
``route_localnet=1``, which lets packets with loopback addresses onto real interfaces: a hole the
kernel keeps closed by default.

    client --TCP--> 127.0.0.1:HOSTPORT      listening here, in the host's namespace
                    accept, then connect to the container's PORT:
                      --net bridge: its address on the lab bridge, from the host
                      --net none:   127.0.0.1 from a socket made inside its namespace
                    copy bytes both ways; a side that closes is passed on (shutdown),
                    and the pair is closed when both sides have

It is one poll loop and no threads. It runs in whoever waits for the container: its supervisor
(detached), or :func:`container.run` while it waits. The host side is a loopback address only:
a lab container is never a service for the network. The connect to the container is made in the
loop (a local address answers at once; at most CONNECT_TIMEOUT s), which is enough for a lab; a
connection that fails is closed on its own, and never ends the proxy or the container.
"""
from __future__ import annotations

import contextlib
import errno
import ipaddress
import re
import select
import socket
import time
from dataclasses import dataclass

from ..errors import LabError, Refused

__all__ = ["Publish", "parse", "Proxy"]

BUFFER = 1 << 16            # bytes held per direction before the proxy stops reading that side
CONNECT_TIMEOUT = 2.0       # to the container: a local address answers at once, or refuses


@dataclass(frozen=True)
class Publish:
    """One published port: ``host_ip:host_port`` here, ``port`` in the container (TCP)."""
    host_ip: str
    host_port: int
    port: int

    def __repr__(self) -> str:
        return f"{self.host_ip}:{self.host_port}->{self.port}/tcp"


def _port(text, spec) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", str(text)) or not 1 <= int(text) <= 65535:
        raise Refused(f"port {text!r} in -p {spec!r}: a number from 1 to 65535")
    return int(text)


def parse(spec) -> Publish:
    """Docker's ``-p``: ``[IP:]HOSTPORT:PORT[/tcp]``; the IP is 127.0.0.1 unless given, and must
    be a loopback address."""
    if isinstance(spec, Publish):
        spec = f"{spec.host_ip}:{spec.host_port}:{spec.port}"
    if not isinstance(spec, str):
        raise Refused(f"a published port is '[127.0.0.1:]HOSTPORT:PORT', not {spec!r}")
    text, _, proto = spec.partition("/")
    if proto not in ("", "tcp"):
        raise Refused(f"-p {spec!r}: the lab's proxy carries TCP only")
    parts = text.split(":")
    if len(parts) == 2:
        parts.insert(0, "127.0.0.1")
    if len(parts) != 3:
        raise Refused(f"-p {spec!r}: [127.0.0.1:]HOSTPORT:PORT (a container port needs a host port here)")
    try:
        address = ipaddress.ip_address(parts[0])
    except ValueError:
        raise Refused(f"-p {spec!r}: {parts[0]!r} is not an IP address") from None
    if address.version != 4 or not address.is_loopback:
        raise Refused(f"-p {spec!r}: publish on a loopback address (127.0.0.1), not {address}",
                      hint="a lab container is reached from this machine only, never from the network")
    return Publish(str(address), _port(parts[1], spec), _port(parts[2], spec))


class _Pair:
    """One proxied connection: the client's socket and the container's, and what is in flight."""

    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.socks = (client, upstream)
        self.pending = [b"", b""]          # pending[i]: read from side i, not yet written to the other
        self.eof = [False, False]          # side i has closed its sending half
        self.passed = [False, False]       # its close was passed on (shutdown SHUT_WR on the other)

    def done(self) -> bool:
        return all(self.passed)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


class Proxy:
    """The listening sockets of a container's published ports, bound at once: a port in use is
    refused here, before anything else is made. :meth:`connect_to` or :meth:`connect_in` says
    where the container is; :meth:`serve` then carries connections until a given fd is readable."""

    def __init__(self, publish):
        self.publish = tuple(parse(p) for p in publish)
        self.listeners: list[socket.socket] = []
        self._connect = None
        self._pairs: list[_Pair] = []
        self._resting_until = 0.0
        try:
            for p in self.publish:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                self.listeners.append(sock)
                # SO_REUSEADDR: a port whose last connections are in TIME_WAIT can be published
                # again at once (it does not allow two listeners on one port).
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((p.host_ip, p.host_port))
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise Refused(f"-p {p!r}: {p.host_ip}:{p.host_port} is in use here (bind: EADDRINUSE)",
                                      hint=f"choose another host port; `ss -ltnp 'sport = :{p.host_port}'` says "
                                           "which process holds it") from None
                    if exc.errno == errno.EACCES:
                        raise Refused(f"-p {p!r}: binding port {p.host_port} needs root (bind: EACCES)") from None
                    raise
                sock.listen(16)
                sock.setblocking(False)
        except BaseException:
            self.close()
            raise

    def fds(self) -> list[int]:
        return [s.fileno() for s in self.listeners]

    def connect_to(self, address: str) -> None:
        """The container is at ``address`` (its bridge address), reached from here."""
        def connect(port: int) -> socket.socket:
            return socket.create_connection((address, port), timeout=CONNECT_TIMEOUT)
        self._connect = connect

    def connect_in(self, make_socket) -> None:
        """The container is reached at 127.0.0.1 through a socket made in its namespace by
        ``make_socket()`` (its own loopback: --net none)."""
        def connect(port: int) -> socket.socket:
            sock = make_socket()
            sock.settimeout(CONNECT_TIMEOUT)
            try:
                sock.connect(("127.0.0.1", port))
            except BaseException:
                sock.close()
                raise
            return sock
        self._connect = connect

    def _accept(self, index: int) -> None:
        try:
            client, _ = self.listeners[index].accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # One connection that could not be taken (the client gave up, or no fd is left: EMFILE)
            # never ends the proxy, nor the container it serves. Out of fds, the listeners rest a
            # moment: polling them again at once would spin.
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self._resting_until = time.monotonic() + 0.1
            return
        try:
            upstream = self._connect(self.publish[index].port)
        except (OSError, LabError):
            # Nothing listens there (yet), or no socket could be made in its namespace: the client
            # sees its connection closed, as with Docker.
            client.close()
            return
        for sock in (client, upstream):
            sock.setblocking(False)
        self._pairs.append(_Pair(client, upstream))

    def _events(self, pair: _Pair, side: int) -> int:
        events = 0
        if not pair.eof[side] and len(pair.pending[side]) < BUFFER:
            events |= select.POLLIN
        if pair.pending[1 - side]:
            events |= select.POLLOUT
        return events

    def _step(self, pair: _Pair, side: int, revents: int) -> None:
        sock = pair.socks[side]
        if revents & (select.POLLERR | select.POLLNVAL):
            raise ConnectionResetError(f"poll: revents {revents:#x}")
        if revents & (select.POLLIN | select.POLLHUP) and not pair.eof[side]:
            data = sock.recv(BUFFER)
            if data:
                pair.pending[side] += data
            else:
                pair.eof[side] = True
        if revents & select.POLLOUT and pair.pending[1 - side]:
            sent = sock.send(pair.pending[1 - side])
            pair.pending[1 - side] = pair.pending[1 - side][sent:]
        for s in (0, 1):
            if pair.eof[s] and not pair.pending[s] and not pair.passed[s]:
                # Side s said all it had to say: pass its close on, so the other side reads EOF.
                with contextlib.suppress(OSError):
                    pair.socks[1 - s].shutdown(socket.SHUT_WR)
                pair.passed[s] = True

    def serve(self, until_fd: int, deadline: float | None = None, also=None) -> bool:
        """Carry connections until ``until_fd`` is readable (True) or ``deadline`` (a
        time.monotonic() value) passes (False). ``also``: more to watch meanwhile (the container's
        output): its ``fds()`` are polled too and handed to its ``take(fd)`` when readable, and
        each wait is at most its ``patience()`` seconds."""
        if self._connect is None:
            raise RuntimeError("the proxy does not know where the container is: connect_to() or connect_in()")
        while True:
            poller = select.poll()
            poller.register(until_fd, select.POLLIN)
            owners: dict[int, tuple] = {}
            for fd in also.fds() if also is not None else ():
                poller.register(fd, select.POLLIN)
                owners[fd] = ("also", fd)
            resting = time.monotonic() < self._resting_until
            for i, sock in enumerate(self.listeners if not resting else ()):
                poller.register(sock, select.POLLIN)
                owners[sock.fileno()] = ("listen", i)
            for pair in self._pairs:
                for side in (0, 1):
                    events = self._events(pair, side)
                    if events:
                        poller.register(pair.socks[side], events)
                        owners[pair.socks[side].fileno()] = (pair, side)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            if resting:
                left = min(left if left is not None else 0.1, 0.1)
            if also is not None:
                patience = also.patience()
                left = patience if left is None else min(left, patience)
            ready = poller.poll(None if left is None else max(1, int(left * 1000)))
            for fd, revents in ready:
                if fd == until_fd:
                    return True
                owner, which = owners[fd]
                if owner == "also":
                    also.take(which)
                    continue
                if owner == "listen":
                    self._accept(which)
                    continue
                try:
                    self._step(owner, which, revents)
                except OSError:             # reset by either side: the connection is over
                    owner.passed = [True, True]
            for pair in [p for p in self._pairs if p.done()]:
                pair.close()
                self._pairs.remove(pair)

    def close(self) -> None:
        """Stop listening and drop every connection (idempotent)."""
        for pair in self._pairs:
            pair.close()
        self._pairs = []
        for sock in self.listeners:
            sock.close()
        self.listeners = []

    def __repr__(self) -> str:
        return f"Proxy({', '.join(map(repr, self.publish))})"

"""The port proxy (network.proxy) on loopback, no root needed: Docker's -p syntax checked, a
port in use refused, and bytes carried both ways, a close passed on, a refused upstream closed."""
from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

import pytest

from labhelper.container import config
from labhelper.errors import Refused
from labhelper.network import proxy


def test_dockers_p_syntax():
    assert proxy.parse("8080:80") == proxy.Publish("127.0.0.1", 8080, 80)
    assert proxy.parse("127.0.0.2:8080:80/tcp") == proxy.Publish("127.0.0.2", 8080, 80)
    assert repr(proxy.parse("1:2")) == "127.0.0.1:1->2/tcp"
    assert config.check("busybox", publish="9000:90").publish == (proxy.Publish("127.0.0.1", 9000, 90),)


@pytest.mark.parametrize("spec, message", [
    ("0.0.0.0:80:80", "loopback"),
    ("10.0.0.1:80:80", "loopback"),
    ("::1:80:80", r"\[127.0.0.1:\]HOSTPORT:PORT"),
    ("host:80:80", "not an IP address"),
    ("80", r"\[127.0.0.1:\]HOSTPORT:PORT"),
    ("0:80", "from 1 to 65535"),
    ("80:65536", "from 1 to 65535"),
    ("80:x", "from 1 to 65535"),
    ("80:\u00b2", "from 1 to 65535"),                # a digit to str.isdigit, not to int()
    ("80:80/udp", "TCP only"),
    (8080, "not 8080"),
])
def test_bad_ports_are_refused(spec, message):
    with pytest.raises(Refused, match=message):
        proxy.parse(spec)


def test_two_ports_on_one_host_port_are_refused():
    with pytest.raises(Refused, match="share a host port"):
        config.check("busybox", publish=["8080:80", "127.0.0.1:8080:81"])


def test_a_port_in_use_is_refused_and_nothing_is_left_listening():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port, first = taken.getsockname()[1], _free()
        with pytest.raises(Refused, match=f"127.0.0.1:{port} is in use here"):
            proxy.Proxy([f"{first}:1", f"{port}:80"])
    with socket.socket() as again:              # the first listener it made is closed: free again
        again.bind(("127.0.0.1", first))


@contextlib.contextmanager
def _serving(box, seconds: float = 30):
    """The proxy's loop in a thread until the block ends; its result in the list yielded."""
    stop_r, stop_w = os.pipe()
    done: list = []
    worker = threading.Thread(target=lambda: done.append(box.serve(stop_r, time.monotonic() + seconds)))
    worker.start()
    try:
        yield done
    finally:
        os.write(stop_w, b"x")
        worker.join(10)
        box.close()
        os.close(stop_r)
        os.close(stop_w)
    assert not worker.is_alive()


def _upstream(reply_of):
    """A server on loopback standing in for the container: one connection, answered by reply_of."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve():
        conn, _ = server.accept()
        with conn:
            data = b""
            while chunk := conn.recv(65536):        # until the client's close reaches it
                data += chunk
            conn.sendall(reply_of(data))
    threading.Thread(target=serve, daemon=True).start()
    return server


def test_bytes_both_ways_and_a_half_close_passed_on():
    server = _upstream(lambda data: data[::-1] * 2)
    box = proxy.Proxy([f"{_free()}:{server.getsockname()[1]}"])
    box.connect_to("127.0.0.1")
    with _serving(box) as done:
        payload = os.urandom(400000)                # more than the proxy holds per direction
        with socket.create_connection(("127.0.0.1", box.publish[0].host_port), timeout=10) as client:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)         # passed on: the server reads its EOF and answers
            got = b""
            while chunk := client.recv(65536):
                got += chunk
        assert got == payload[::-1] * 2
    server.close()
    assert done == [True] and not box.listeners


def test_a_slow_reader_after_its_half_close_gets_every_byte():
    # The client says all it has to say, the server answers much more and closes at once, and the
    # client reads slowly: what the proxy still holds for it must all arrive.
    answer = os.urandom(3 << 20)                    # more than the socket buffers on the way hold
    server = _upstream(lambda data: answer)
    box = proxy.Proxy([f"{_free()}:{server.getsockname()[1]}"])
    box.connect_to("127.0.0.1")
    with _serving(box, 60):
        with socket.create_connection(("127.0.0.1", box.publish[0].host_port), timeout=20) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            client.sendall(b"question")
            client.shutdown(socket.SHUT_WR)
            time.sleep(0.5)                         # the server has answered and closed by now
            got = b""
            while chunk := client.recv(1 << 16):
                got += chunk
                time.sleep(0.002)
        assert got == answer
    server.close()


def test_a_failed_connection_is_dropped_and_the_proxy_goes_on():
    from labhelper.errors import LabError
    server = _upstream(lambda data: b"second")
    calls = []

    def make_socket():
        calls.append(1)
        if len(calls) == 1:
            raise LabError("the network helper failed")      # as netns.socket_at may
        return socket.socket()
    box = proxy.Proxy([f"{_free()}:{server.getsockname()[1]}"])
    box.connect_in(make_socket)
    # connect_in dials 127.0.0.1:PORT from the socket it is given: here, the stand-in server's.
    with _serving(box):
        with socket.create_connection(("127.0.0.1", box.publish[0].host_port), timeout=10) as first:
            assert first.recv(10) == b""            # dropped: no socket could be made for it
        with socket.create_connection(("127.0.0.1", box.publish[0].host_port), timeout=10) as second:
            second.shutdown(socket.SHUT_WR)
            assert second.recv(10) == b"second"     # the proxy went on
    server.close()
    assert len(calls) == 2


def test_nothing_listening_in_the_container_closes_the_client():
    box = proxy.Proxy([f"{_free()}:{_free()}"])
    box.connect_to("127.0.0.1")
    with _serving(box):
        with socket.create_connection(("127.0.0.1", box.publish[0].host_port), timeout=10) as client:
            assert client.recv(10) == b""           # closed at once: nothing to carry it to


def test_serve_ends_at_its_deadline():
    box = proxy.Proxy([f"{_free()}:80"])
    box.connect_to("127.0.0.1")
    stop_r, stop_w = os.pipe()
    started = time.monotonic()
    assert box.serve(stop_r, started + 0.2) is False and time.monotonic() - started < 5
    box.close()
    box.close()                                     # idempotent
    with pytest.raises(RuntimeError, match="does not know where"):
        proxy.Proxy([]).serve(stop_r, started)
    os.close(stop_r)
    os.close(stop_w)


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

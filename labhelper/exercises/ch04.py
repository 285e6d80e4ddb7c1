"""Chapter 04 exercises: build networks between namespaces, and prove them by sending packets.

Each check reads the kernel's state (links, addresses, routes, nftables) or sends a packet: a
network is right when traffic flows where it should and nowhere else, not when its description
looks right.
"""
from __future__ import annotations

import ipaddress
import socket
import uuid

from .. import network
from . import Exercise, right, wrong

__all__ = ["q1", "q2", "q3", "q4", "Q2_ADDRESSES", "Q4_PORT"]


# --- q1: what a new namespace has ---------------------------------------------------------------------

def _check_new_namespace(answer) -> object:
    if not isinstance(answer, dict) or not all(isinstance(k, str) for k in answer):
        return wrong("give a dict {interface name: 'up' or 'down'}, e.g. {'eth0': 'up'}.")
    scratch = network.create(f"ch04-q1-{uuid.uuid4().hex[:6]}")
    try:
        seen = {link.name: ("up" if link.up else "down") for link in network.list_links(scratch)}
    finally:
        network.remove_ns(scratch)
    if set(answer) != set(seen):
        missing, extra = set(seen) - set(answer), set(answer) - set(seen)
        parts = []
        if extra:
            parts.append(f"a new namespace has no {', '.join(sorted(extra))}")
        if missing:
            parts.append(f"{len(missing)} interface(s) are missing from your answer")
        return wrong("; ".join(parts) + ". (The check just made a namespace and looked.)")
    off = [k for k in seen if str(answer[k]).lower() != seen[k]]
    if off:
        return wrong(f"the interfaces are right, but {', '.join(off)} is not {answer[off[0]]!r}: "
                     "is anything ever up before someone brings it up?")
    return right(f"a new namespace has {seen}: an empty stack. Not even 127.0.0.1 exists until lo is up.")


q1 = Exercise(
    "04.1",
    "Predict what a brand-new network namespace contains: `answer = {interface: 'up' or 'down'}`, "
    "then `ch04.q1.check(answer)`. The check makes a new namespace and reads its links.",
    _check_new_namespace,
    "Think of what every network stack needs even with no cable plugged in, and whether the kernel turns "
    "anything on by itself.",
    "`{'lo': 'down'}`: only the loopback interface, and it is down until `network.up(ns, 'lo')`.",
)


# --- q2: connect two namespaces -----------------------------------------------------------------------

Q2_ADDRESSES = ("10.77.0.1/24", "10.77.0.2/24")


def _echo_across(a: str, b: str, address: str, port: int = 7777) -> bytes | str:
    try:
        with network.socket_in(b) as srv, network.socket_in(a) as cli:
            # SO_REUSEADDR: the previous check's connection may still be in TIME_WAIT on this port.
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind((address, port))
            srv.listen()
            cli.settimeout(2)
            cli.connect((address, port))
            conn, _ = srv.accept()
            with conn:
                cli.sendall(b"ping from ch04.q2")
                conn.sendall(conn.recv(64))
                return cli.recv(64)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"


def _diagnose(ns: str, want: str) -> str | None:
    links = network.list_links(ns)
    cables = [x for x in links if x.kind == "veth"]
    if not cables:
        return f"{ns} has no veth interface: no cable is plugged in there."
    have = [x for x in cables if want in x.addresses]
    if not have:
        return f"no interface of {ns} has the address {want}."
    if not have[0].up:
        return f"{ns}'s {have[0].name} has the address but is down."
    return None


def _check_connected(names) -> object:
    try:
        a, b = (network.full_name(n) for n in names)
    except (TypeError, ValueError):
        return wrong("pass the two namespaces: `ch04.q2.check((a, b))`.")
    for ns in (a, b):
        if ns not in network.names():
            return wrong(f"there is no namespace {ns}: make it with network.create(...).")
    for ns, want in ((a, Q2_ADDRESSES[0]), (b, Q2_ADDRESSES[1])):
        why = _diagnose(ns, want)
        if why:
            return wrong(why)
    got = _echo_across(a, b, Q2_ADDRESSES[1].split("/")[0])
    if got != b"ping from ch04.q2":
        return wrong(f"the addresses are there and up, but a TCP connection from {a} to "
                     f"{Q2_ADDRESSES[1].split('/')[0]} failed ({got}). Is the cable between these two?")
    return right(f"a TCP echo went from {a} to {b} and back over your veth pair.")


q2 = Exercise(
    "04.2",
    f"Connect the namespaces a and b: a veth pair, {Q2_ADDRESSES[0]} on a's end, {Q2_ADDRESSES[1]} on b's, both "
    "up; then `ch04.q2.check((a, b))`. The check sends a TCP message from a to b.",
    _check_connected,
    "Three steps: `network.veth((a, 'eth0'), (b, 'eth0'))`, then in each namespace `network.add_address` and "
    "`network.up`. Nothing flows on an interface that is down.",
    f"`network.veth((a, 'eth0'), (b, 'eth0'))`; then for `(ns, ip)` in `((a, '{Q2_ADDRESSES[0]}'), (b, "
    f"'{Q2_ADDRESSES[1]}'))`: `network.add_address(ns, 'eth0', ip)` and `network.up(ns, 'eth0')`.",
)


# --- q3: a packet's way out -----------------------------------------------------------------------------

def _check_route(container, destination, answer) -> object:
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        return wrong("answer with a pair: (interface, gateway), the gateway None if there is none.")
    dev, via = answer
    if via is not None:
        try:
            via = str(ipaddress.ip_interface(str(via)).ip)   # "10.213.0.1", an IPv4Address, "10.213.0.1/24"
        except ValueError:
            return wrong(f"{via!r} is not an address: give the gateway's address, or None.")
    route = network.route_to(container, destination)
    if dev != route.device:
        return wrong(f"the packet does not leave through {dev!r}. Which interfaces does the container have? "
                     "(network.list_links)")
    if (via or None) != route.via:
        if route.via is None:
            return wrong("right interface, but that destination is on the link itself: no gateway is needed.")
        return wrong(f"right interface, but the next hop is not {via!r}. Which route matches a destination "
                     "outside every subnet the container has?")
    return right(f"the kernel agrees: {destination} leaves through {route.device}"
                 + (f", to the gateway {route.via}." if route.via else ", straight on the link."))


q3 = Exercise(
    "04.3",
    "From the container c1 on the bridge, a packet to 10.99.0.1 (an address no lab namespace has) leaves "
    "through which interface, and to which next hop? `answer = (interface, gateway)`; "
    "`ch04.q3.check(c1, '10.99.0.1', answer)`. The check asks the kernel (`ip route get`).",
    _check_route,
    "Read `network.routes(c1)`: the most specific route that contains the destination wins; `default` "
    "contains everything.",
    "`('eth0', gateway)` where gateway is the bridge's address (`network.gateway_of(bridge).ip`): the "
    "default route sends it to the host (which, here, forwards nothing from the lab).",
)


# --- q4: open one door on purpose -------------------------------------------------------------------------

Q4_PORT = 8765


def _connect_from(container: str, host: str, port: int) -> str:
    def attempt():
        s = socket.socket()
        s.settimeout(1)
        try:
            s.connect((host, port))
            return "connected"
        except OSError as exc:
            return exc.strerror or type(exc).__name__
        finally:
            s.close()
    return network.run_in(container, attempt)


def _check_door(container, bridge) -> object:
    try:
        br = network.host_name(bridge)
        gw = network.gateway_of(br)
    except Exception as exc:  # noqa: BLE001 - any wrong bridge gives a message
        return wrong(f"{bridge!r} is not a lab bridge: {exc}")
    if br not in network.firewall.tables():
        return wrong(f"{br} has no firewall table any more: every port of this host is open to the lab. "
                     "Open one port, do not remove the guard.")
    opened = network.firewall.opened(br)
    extra = sorted(opened["tcp"] - {Q4_PORT}) + sorted(opened["udp"])
    if extra:
        return wrong(f"more than port {Q4_PORT} is open: also {', '.join(map(str, extra))}. Open exactly one.")
    with socket.socket() as wanted, socket.socket() as other:
        wanted.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            wanted.bind(("0.0.0.0", Q4_PORT))
        except OSError:
            return wrong(f"port {Q4_PORT} is busy on this host: close what listens there, then check again.")
        other.bind(("0.0.0.0", 0))
        wanted.listen()
        other.listen()
        ip = str(gw.ip)
        if _connect_from(container, ip, Q4_PORT) != "connected":
            return wrong(f"the container still cannot reach port {Q4_PORT} on {ip}: the door is closed.")
        if _connect_from(container, ip, other.getsockname()[1]) == "connected":
            return wrong(f"port {Q4_PORT} is open, and so is another port: open exactly one.")
    return right(f"port {Q4_PORT} is reachable from {network.full_name(container)}, and the other ports are still not.")


q4 = Exercise(
    "04.4",
    f"The lab's firewall keeps containers away from this host's services. Let the containers on `bridge` "
    f"reach TCP port {Q4_PORT} of this host, and no other port; then `ch04.q4.check(c1, bridge)`. The check "
    f"reads the bridge's table, listens on {Q4_PORT} and on another port, and connects to both from c1.",
    _check_door,
    "Each host interface of the lab has an nftables table named after it (`network.firewall.show(bridge)`); "
    "its sets `open_tcp` and `open_udp` list the ports let through. (If the check still cannot connect, "
    "another firewall of this host may drop the port: an accept in one table does not override a drop in another.)",
    f"`network.open_port(bridge, {Q4_PORT})` (and `network.close_port(bridge, {Q4_PORT})` to shut it again).",
)

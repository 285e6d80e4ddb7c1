"""Chapter 04's exercise checks, each with a right and a wrong answer, on the real kernel."""
from __future__ import annotations

import pytest

from labhelper import network
from labhelper.exercises import ch04


def test_q1_a_new_namespace(network_owner):
    assert ch04.q1.check({"lo": "down"}).ok is True
    assert ch04.q1.check({"lo": "up"}).ok is False
    assert ch04.q1.check({"lo": "down", "eth0": "down"}).ok is False
    assert ch04.q1.check({}).ok is False
    assert ch04.q1.check("lo").ok is False
    assert ch04.q1.check(...).ok is False


@pytest.fixture
def pair(network_owner, uid):
    return network.create(f"qa{uid}"), network.create(f"qb{uid}")


def _connect(a, b, up=True, addresses=ch04.Q2_ADDRESSES):
    network.veth((a, "eth0"), (b, "eth0"))
    for ns, ip in zip((a, b), addresses):
        network.add_address(ns, "eth0", ip)
        if up:
            network.up(ns, "eth0")


def test_q2_right_when_a_packet_crosses(pair):
    a, b = pair
    assert ch04.q2.check(pair).ok is False                 # nothing yet: no cable
    _connect(a, b)
    result = ch04.q2.check(pair)
    assert result.ok is True, result.message
    assert ch04.q2.check(pair).ok is True                  # again at once: the port is free to reuse


def test_q2_wrong_when_down(pair):
    _connect(*pair, up=False)
    result = ch04.q2.check(pair)
    assert result.ok is False and "down" in result.message


def test_q2_wrong_with_other_addresses(pair):
    _connect(*pair, addresses=("10.78.0.1/24", "10.78.0.2/24"))
    result = ch04.q2.check(pair)
    assert result.ok is False and "10.77.0.1/24" in result.message


def test_q2_wrong_when_the_cable_goes_elsewhere(pair, uid):
    # Both have the right addresses, but each is cabled to a third namespace, not to the other.
    a, b = pair
    c = network.create(f"qc{uid}")
    network.veth((a, "eth0"), (c, "x0"))
    network.veth((b, "eth0"), (c, "x1"))
    for ns, ip in zip((a, b), ch04.Q2_ADDRESSES):
        network.add_address(ns, "eth0", ip)
        network.up(ns, "eth0")
    result = ch04.q2.check(pair)
    assert result.ok is False and "failed" in result.message


@pytest.fixture
def bridged(network_owner, uid):
    br = network.bridge(f"qbr{uid}")
    c1 = network.create(f"qc1{uid}")
    network.attach(c1, br)
    return br, c1


def test_q3_the_way_out(bridged):
    br, c1 = bridged
    gw = str(network.gateway_of(br).ip)
    assert ch04.q3.check(c1, "10.99.0.1", ("eth0", gw)).ok is True
    assert ch04.q3.check(c1, "10.99.0.1", ("eth0", network.gateway_of(br).ip)).ok is True   # an IPv4Address
    assert ch04.q3.check(c1, "10.99.0.1", ("eth0", str(network.gateway_of(br)))).ok is True  # with its /24
    assert ch04.q3.check(c1, "10.99.0.1", ("eth0", "gateway")).ok is False
    assert ch04.q3.check(c1, "10.99.0.1", ("lo", gw)).ok is False
    assert ch04.q3.check(c1, "10.99.0.1", ("eth0", None)).ok is False
    assert ch04.q3.check(c1, "10.99.0.1", "eth0").ok is False
    # on the container's own subnet there is no gateway
    assert ch04.q3.check(c1, gw, ("eth0", None)).ok is True
    assert ch04.q3.check(c1, gw, ("eth0", gw)).ok is False


def test_q4_one_door_opened(bridged):
    br, c1 = bridged
    assert ch04.q4.check(c1, br).ok is False                     # closed
    network.open_port(br, ch04.Q4_PORT)
    result = ch04.q4.check(c1, br)
    assert result.ok is True, result.message
    assert ch04.q4.check(c1, "eth0").ok is False                  # not a lab bridge
    network.open_port(br, 22)                                      # one door too many
    result = ch04.q4.check(c1, br)
    assert result.ok is False and "also 22" in result.message


def test_q4_wrong_when_the_guard_is_removed(bridged):
    br, c1 = bridged
    network.firewall.remove(br)
    result = ch04.q4.check(c1, br)
    assert result.ok is False and "no firewall table" in result.message

"""Chapter 04 on the real kernel: network namespaces, veth pairs, a bridge, the lab's firewall.

Every test names its objects with a random suffix, owns them under its own owner, and removes
them with `cleanup --owner` at the end; the census around each test (conftest.py) checks that
nothing is left. Traffic goes only to loopback and to addresses of namespaces made here.
"""
from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time

import census
import pytest
from systest import labhelper_cli, sh

from labhelper import cleanup, network, registry
from labhelper.errors import Refused

pytestmark = pytest.mark.usefixtures("network_owner")

SIOCGSKNS = 0x894C          # include/uapi/linux/sockios.h: the network namespace of a socket


def _echo(server_ns, client_ns, address: str, port: int = 7007, payload: bytes = b"hello") -> bytes:
    """A TCP echo across namespaces, with plain sockets made inside them (network.socket_in)."""
    with network.socket_in(server_ns) as srv, network.socket_in(client_ns) as cli:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((address, port))
        srv.listen()
        cli.settimeout(5)
        cli.connect((address, port))          # the kernel completes the handshake for the listener
        conn, _ = srv.accept()
        with conn:
            cli.sendall(payload)
            conn.sendall(conn.recv(100))
            return cli.recv(100)


def _connect(host: str, port: int, timeout: float = 0.5) -> str:
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return "connected"
    except socket.timeout:
        return "timeout"
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        s.close()


def _ifnames() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


# --- the basics ---------------------------------------------------------------------------------------

def test_a_new_namespace_has_only_a_loopback_and_it_is_down(uid):
    name = network.create(f"a{uid}")
    assert name == f"lh-a{uid}" and os.path.exists(f"/run/netns/{name}")
    found = network.list_links(name)
    assert [(x.name, x.kind, x.up) for x in found] == [("lo", "loopback", False)]
    assert network.run_in(name, _ifnames) == ["lo"]         # seen from inside too
    # The helper is back in the host's namespace: this process's own links are unchanged.
    assert "lo" in _ifnames() and len(_ifnames()) >= 2
    network.remove_ns(name)
    assert not os.path.exists(f"/run/netns/{name}")
    network.remove_ns(name)                                    # idempotent


def test_veth_ends_are_born_in_their_namespaces_and_carry_tcp(uid):
    a, b = network.create(f"a{uid}"), network.create(f"b{uid}")
    before = set(os.listdir("/sys/class/net"))
    network.veth((a, "eth0"), (b, "eth0"))
    assert set(os.listdir("/sys/class/net")) == before           # no end ever on the host
    for ns, ip in ((a, "10.9.0.1/24"), (b, "10.9.0.2/24")):
        network.up(ns, "lo")
        network.up(ns, "eth0")
        network.add_address(ns, "eth0", ip)
    assert network.run_in(a, _ifnames) == ["eth0", "lo"]        # R14: only the container's links
    assert _echo(b, a, "10.9.0.2") == b"hello"
    ok, out = network.ping(a, "10.9.0.2")
    assert ok and "1 received" in out
    # The topology, read back from the kernel: one cable between the two eth0.
    topo = network.topology([a, b])
    assert [(c.a, c.b) for c in topo.cables] in ([((a, "eth0"), (b, "eth0"))], [((b, "eth0"), (a, "eth0"))])
    assert "10.9.0.1/24" in topo.space(a).link("eth0").addresses
    route = network.route_to(a, "10.9.0.2")
    assert route.device == "eth0" and route.via is None


def test_the_topology_comes_from_the_kernel_not_from_labhelper(uid):
    # A cable made by `ip`, not by labhelper, is found all the same.
    a, b = network.create(f"a{uid}"), network.create(f"b{uid}")
    sh(f"ip link add x{uid} netns {a} type veth peer name y{uid} netns {b}")
    cables = network.topology([a, b]).cables
    assert {frozenset((c.a, c.b)) for c in cables} == {frozenset(((a, f"x{uid}"), (b, f"y{uid}")))}


def test_a_bridge_joins_three_containers_and_the_gateway(uid):
    br = network.bridge(f"br{uid}")
    gw = network.gateway_of(br)
    assert gw.network.subnet_of(network.LAB_POOL) and gw.ip == next(gw.network.hosts())
    names = [network.create(f"c{i}{uid}") for i in range(3)]
    addrs = [network.attach(n, br) for n in names]
    assert len(set(addrs)) == 3 and all(ipaddress.ip_interface(a).network == gw.network for a in addrs)
    ips = [a.split("/")[0] for a in addrs]
    assert _echo(names[0], names[2], ips[0], 7008) == b"hello"
    assert network.ping(names[1], ips[2])[0]
    assert network.ping(names[1], str(gw.ip))[0]                # the host's end of the bridge answers ping
    assert [str(r) for r in network.routes(names[0])][0] == f"default via {gw.ip} dev eth0 scope global"
    topo = network.topology(names)
    ports = {(space, bridge) for space, _, bridge in topo.ports()}
    assert ports == {("host", br)} and len(topo.ports()) == 3 and len(topo.cables) == 3
    # deleting the bridge takes its ports along (a freed port would sit on the host unguarded)
    network.delete_link(br)
    assert not [n for n in os.listdir("/sys/class/net") if n.startswith(br)]


# --- R16: the lab's networks and this host's services -----------------------------------------------

@pytest.fixture
def listener():
    """A server on every address of this host, like JupyterLab in the lab VM."""
    srv = socket.socket()
    srv.bind(("0.0.0.0", 0))
    srv.listen(8)
    yield srv.getsockname()[1]
    srv.close()


def _host_address() -> str | None:
    """An address of this host outside the lab (eth0's, say), if it has one."""
    for link in network.links.read_links(network.rtnl.Rtnl.here()):
        if not link.name.startswith("lh-") and link.kind != "loopback":
            for a in link.addresses:
                if ":" not in a:
                    return a.split("/")[0]
    return None


def test_r16_a_container_cannot_reach_the_hosts_listeners_unless_a_port_is_opened(uid, listener):
    br = network.bridge(f"br{uid}")
    c = network.create(f"c{uid}")
    mine = network.attach(c, br).split("/")[0]
    gw = str(network.gateway_of(br).ip)
    assert network.run_in(c, _connect, "127.0.0.1", listener) != "connected"   # its own loopback: no one
    assert network.run_in(c, _connect, gw, listener) == "timeout"              # dropped, not refused
    other = _host_address()
    if other:
        assert network.run_in(c, _connect, other, listener) == "timeout"
    network.open_port(br, listener)
    assert network.run_in(c, _connect, gw, listener) == "connected"            # opened on purpose
    network.close_port(br, listener)
    assert network.run_in(c, _connect, gw, listener) == "timeout"
    assert network.ping(c, gw)[0]                                               # ping stays allowed
    # The host may still connect to a server in the container (the replies come back in).
    with network.socket_in(c) as srv:
        srv.bind(("0.0.0.0", 7009))
        srv.listen()
        assert _connect(mine, 7009) == "connected"
    # The check can fail: without the table, the same connection goes through.
    sh(f"nft delete table inet {br}")
    assert network.run_in(c, _connect, gw, listener) == "connected"


def test_r16_one_learners_container_cannot_reach_anothers(uid, listener):
    # Two bridges, two owners' networks; with the host forwarding (as Docker sets it), a packet
    # from one network to the other would be routed: the tables drop it.
    forward = "/proc/sys/net/ipv4/ip_forward"
    with open(forward) as fh:
        was = fh.read().strip()
    a_br, b_br = network.bridge(f"ba{uid}"), network.bridge(f"bb{uid}")
    a, b = network.create(f"a{uid}"), network.create(f"b{uid}")
    network.attach(a, a_br)
    b_ip = network.attach(b, b_br).split("/")[0]
    try:
        with open(forward, "w") as fh:
            fh.write("1")
        with network.socket_in(b) as srv:
            srv.bind(("0.0.0.0", 7010))
            srv.listen()
            assert network.run_in(a, _connect, b_ip, 7010) == "timeout"
            sh(f"nft delete table inet {a_br} && nft delete table inet {b_br}")   # can it fail? yes:
            assert network.run_in(a, _connect, b_ip, 7010) == "connected"
    finally:
        with open(forward, "w") as fh:
            fh.write(was)


# --- bad input (R3, R18) -------------------------------------------------------------------------------

BAD_NAMES = ["", ".", "..", "/", "a/b", "nul\0x", "new\nline", "x" * 300, "$(reboot)", "a;b", "a b", "-rf"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_r18_bad_names_are_refused_before_any_kernel_call(bad):
    before = census.take()
    for call in (lambda: network.create(bad), lambda: network.bridge(bad),
                 lambda: network.veth((None, bad), (None, "ok"))):
        with pytest.raises(Refused):
            call()
    assert census.diff(before, census.take()) == ""


def test_r3_a_name_in_use_leaves_the_first_intact(uid):
    first = network.create(f"n{uid}")
    record = registry.ledger().find("netns", first)
    with pytest.raises(Refused, match="in use|exists"):
        network.create(f"n{uid}")
    assert os.path.exists(f"/run/netns/{first}") and registry.ledger().find("netns", first) == record
    assert network.list_links(first)[0].name == "lo"               # still a working namespace


def test_r3_a_foreign_namespace_of_that_name_is_left_alone(uid):
    sh(f"ip netns add lh-f{uid}")
    try:
        with pytest.raises(Refused, match="exists already"):
            network.create(f"f{uid}")
        assert os.path.exists(f"/run/netns/lh-f{uid}") and registry.ledger().find("netns", f"lh-f{uid}") is None
    finally:
        sh(f"ip netns del lh-f{uid}")


def test_r3_a_link_name_in_use_and_a_bridge_not_ours(uid):
    before = census.take()
    sh(f"ip link add lh-f{uid} type bridge")
    try:
        with pytest.raises(Refused, match="exists in host already"):
            network.bridge(f"f{uid}")
        c = network.create(f"c{uid}")
        with pytest.raises(Refused, match="not a bridge the lab made"):
            network.attach(c, f"f{uid}")
        network.remove_ns(c)
        assert os.path.exists(f"/sys/class/net/lh-f{uid}")                 # the foreign bridge is intact
        assert census.diff(before, census.take()).strip() == f"+ link lh-f{uid}"    # nothing of ours is left
    finally:
        sh(f"ip link del lh-f{uid}")
    assert census.diff(before, census.take()) == ""


def test_r3_addresses_in_use_or_outside_the_subnet_are_refused(uid):
    br = network.bridge(f"br{uid}")
    gw = network.gateway_of(br)
    a, b = network.create(f"a{uid}"), network.create(f"b{uid}")
    first = network.attach(a, br)
    state = census.take()
    with pytest.raises(Refused, match="in use"):
        network.attach(b, br, cidr=first)
    with pytest.raises(Refused, match="in use"):
        network.attach(b, br, cidr=f"{gw.ip}/{gw.network.prefixlen}")      # the gateway's
    with pytest.raises(Refused, match="not in the bridge's subnet"):
        network.attach(b, br, cidr="192.168.77.5/24")
    with pytest.raises(Refused, match="network address|broadcast"):
        network.attach(b, br, cidr=f"{gw.network.network_address}/{gw.network.prefixlen}")
    with pytest.raises(Refused, match="in use"):
        network.add_address(a, "lo", first)                               # on another interface
    assert census.take() == state
    assert network.list_links(b) == [network.list_links(b)[0]]             # b got nothing
    with pytest.raises(Refused, match="overlaps"):
        network.bridge(f"b2{uid}", subnet=str(gw.network))
    with pytest.raises(Refused, match="'lo' exists in"):
        network.veth((a, "lo"), (b, "x"))
    assert census.take() == state


def test_a_refusal_of_the_kernel_names_the_request_the_errno_and_the_fix(uid):
    a = network.create(f"a{uid}")
    with network.netns.rtnl_in(a) as r, pytest.raises(OSError) as info:
        r.request("RTM_GETLINK", network.rtnl.ifinfmsg, network.rtnl.RTM_GETLINK, network.rtnl.GET, {},
                  [("IFLA_IFNAME", "nothere")], {"ifname": "nothere"})
    text = str(info.value)
    assert info.value.errno == 19 and f"netlink RTM_GETLINK(in='{a}', ifname='nothere'): ENODEV" in text
    assert "hint: no such interface" in text


def _group_gone(pgid: int, timeout: float = 5.0) -> bool:
    # A helper killed with its parent is a zombie for a moment, until its new parent reaps it:
    # kill(2) still finds a zombie, so wait for it to go.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


# --- R1: a creator killed after each step leaves nothing that cleanup cannot remove --------------------

BUILD = """
from labhelper import network
br = network.bridge("k{uid}")
c = network.create("k{uid}")
network.attach(c, br)
print("the fault point was never reached")
"""


@pytest.mark.parametrize("step", ["firewall", "bridge", "netns", "veth", "address"])
@pytest.mark.parametrize("action", ["sigkill", "sigint"])
def test_r1_killed_after_each_step_cleanup_removes_everything(uid, step, action):
    before = census.take()
    env = dict(os.environ, LABHELPER_FAULT=f"{step}:{action}", LABHELPER_OWNER=f"r1-{uid}")
    p = subprocess.Popen([sys.executable, "-c", BUILD.format(uid=uid)], env=env, start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=60)
    try:
        assert "never reached" not in out
        if action == "sigkill":
            assert p.returncode == -signal.SIGKILL
        else:
            assert p.returncode != 0 and "KeyboardInterrupt" in err
        assert _group_gone(p.pid)                      # the helper went with its parent
        assert census.diff(before, census.take()) != ""   # it got as far as the step: something to remove
    finally:
        result = labhelper_cli("cleanup", "--owner", f"r1-{uid}")
    assert result.returncode == 0, result.stderr
    assert census.diff(before, census.take()) == ""


def test_r1_raised_after_each_step_leaves_nothing(uid, monkeypatch):
    # An exception (not a kill) at a step: the steps already done stay recorded, for cleanup.
    for step in ("firewall", "bridge", "netns", "veth", "address"):
        before = census.take()
        monkeypatch.setenv("LABHELPER_FAULT", f"{step}:raise")
        with pytest.raises(Exception, match=step):
            exec(BUILD.format(uid=uid), {})
        monkeypatch.delenv("LABHELPER_FAULT")
        assert cleanup.cleanup(owner=os.environ["LABHELPER_OWNER"]).ok
        assert census.diff(before, census.take()) == ""


# --- R27: four builders at once ---------------------------------------------------------------------------

FOUR = """
import json, sys
from labhelper import network
me = sys.argv[1]
br = network.bridge(me)
out = {"bridge": br, "subnet": str(network.gateway_of(br).network), "ns": [], "ips": []}
for i in range(2):
    c = network.create(f"{me}-{i}")
    out["ns"].append(c)
    out["ips"].append(network.attach(c, br))
print(json.dumps(out))
"""


def test_r27_four_builders_at_once_share_nothing_and_cleanup_by_owner(uid):
    before = census.take()
    procs = []
    for i in range(4):
        env = dict(os.environ, LABHELPER_OWNER=f"r27-{uid}-{i}")
        procs.append(subprocess.Popen([sys.executable, "-c", FOUR, f"q{i}{uid}"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for i in range(4):
            if results == [] or len(results) < 4:
                labhelper_cli("cleanup", "--owner", f"r27-{uid}-{i}")
    subnets = [r["subnet"] for r in results]
    ips = [ip for r in results for ip in r["ips"]]
    names = [n for r in results for n in r["ns"]] + [r["bridge"] for r in results]
    assert len(set(subnets)) == 4 and len(set(ips)) == 8 and len(set(names)) == 12
    nets = [ipaddress.ip_network(s) for s in subnets]
    assert not any(x.overlaps(y) for i, x in enumerate(nets) for y in nets[i + 1:])
    # cleanup --owner removes exactly that owner's objects
    made = census.take() - before
    first = f"r27-{uid}-0"
    c = cleanup.census()
    mine = {(o.kind, o.name) for o in c if o.owner == first} | {("ledger", r.key) for r in c.records if r.owner == first}
    assert {k for k, _ in mine} == {"link", "netns", "firewall", "ledger"} and mine <= made
    assert labhelper_cli("cleanup", "--owner", first).returncode == 0
    assert census.take() - before == made - mine
    assert labhelper_cli("cleanup").returncode == 0
    assert census.diff(before, census.take()) == ""


# --- the helper -----------------------------------------------------------------------------------------

def test_the_helper_ends_with_its_parent_and_survives_an_interrupt(uid):
    code = (f"import os, signal\nfrom labhelper import network\n"
            f"network.create('h{uid}')\n"
            f"print(network.netns._helper.child.pid, flush=True)\n"
            # an interrupt to the whole group (as a notebook's) does not kill the helper
            f"try:\n    os.killpg(os.getpgrp(), signal.SIGINT)\n    import time; time.sleep(1)\n"
            f"except KeyboardInterrupt:\n    pass\n"
            f"network.create('h2{uid}')\n"
            f"network.remove_ns('h{uid}'); network.remove_ns('h2{uid}')\nprint('ok')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       start_new_session=True)
    assert p.returncode == 0 and p.stdout.split()[1] == "ok", p.stderr
    helper = int(p.stdout.split()[0])
    for _ in range(50):
        if not os.path.exists(f"/proc/{helper}"):
            break
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{helper}")


def test_r16_a_host_end_of_a_veth_is_guarded_too(uid, listener):
    # Without a bridge: one end on the host (lh-...), with an address; the other in the container.
    c = network.create(f"c{uid}")
    host_end, _ = network.veth((None, f"h{uid}"), (c, "eth0"))
    assert host_end == f"lh-h{uid}" and host_end in network.firewall.tables()      # made with it
    network.add_address(None, host_end, "10.214.9.1/30")
    network.up(None, host_end)
    network.add_address(c, "eth0", "10.214.9.2/30")
    network.up(c, "eth0")
    assert network.ping(c, "10.214.9.1")[0]                                        # the container reaches its host end
    assert network.run_in(c, _connect, "10.214.9.1", listener) == "timeout"        # but not the host's services
    network.delete_link(host_end)                                                  # the table goes after the link
    assert host_end not in network.firewall.tables()
    assert [x.name for x in network.list_links(c)] == ["lo"]                       # the other end went too


@pytest.mark.parametrize("op", ["create", "socket"])
def test_an_interrupt_right_after_the_helper_answered_loses_nothing(uid, monkeypatch, op):
    # Ctrl-C landing just after recvmsg(2) returned the helper's answer: the answer is not lost
    # (its socket would keep a namespace alive), a namespace just made is removed again, and
    # then the interrupt is raised.
    from labhelper.network import netns
    if op == "socket":
        ns = network.create(f"i{uid}")
    before = census.take()
    real = socket.recv_fds

    def recv_then_interrupt(*args, **kwargs):
        got = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return got
    monkeypatch.setattr(netns.socket, "recv_fds", recv_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        if op == "create":
            network.create(f"j{uid}")
        else:
            network.socket_in(ns)
    monkeypatch.setattr(netns.socket, "recv_fds", real)
    assert census.diff(before, census.take()) == ""
    if op == "socket":
        assert _held_sockets(ns) == 0                     # the socket it carried was closed
    assert network.create(f"k{uid}") == f"lh-k{uid}"      # and the helper still answers in order


def _held_sockets(ns: str) -> int:
    """How many fds of this process are sockets in the namespace ``ns`` (0: none kept)."""
    ino = os.stat(f"/run/netns/{ns}").st_ino
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            nsfd = fcntl.ioctl(int(fd), SIOCGSKNS)     # a socket's network namespace, as an fd
        except OSError:
            continue
        try:
            count += os.fstat(nsfd).st_ino == ino
        finally:
            os.close(nsfd)
    return count


def _helper_in_a_fork(number: int) -> str:
    # The parent's helper connection had fd ``number``; spawn's close_fds closed it here. Another
    # file takes that number, then this child's own helper starts: the file must stay open.
    from labhelper.network import netns
    null = os.open("/dev/null", os.O_RDONLY)
    if null != number:
        os.dup2(null, number)
        os.close(null)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    netns.socket_at(own).close()
    os.close(own)
    return os.readlink(f"/proc/self/fd/{number}")


def test_a_forked_child_never_closes_what_took_the_number_of_the_parents_helper_socket():
    from labhelper import process
    from labhelper.network import netns
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        netns.socket_at(own).close()        # the helper of this process, started
    finally:
        os.close(own)
    number = netns._helper.conn.fileno()
    assert process.run_in_child(_helper_in_a_fork, number) == "/dev/null"
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        netns.socket_at(own).close()        # and ours still works
    finally:
        os.close(own)

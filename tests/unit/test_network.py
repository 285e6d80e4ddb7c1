"""labhelper.network without root: names, addresses, the firewall's rules, the census's view."""
from __future__ import annotations

from pathlib import Path

import pytest

from labhelper import marks, network
from labhelper.errors import Refused
from labhelper.network import firewall, links, netns

BAD = ["", ".", "..", "/", "a/b", "nul\0x", "new\nline", "x" * 300, "$(reboot)", "a;b", "a b", "-rf", ".hidden",
       None, 7, b"bytes"]


@pytest.mark.parametrize("bad", BAD)
def test_bad_names_are_refused_for_namespaces_and_interfaces(bad):
    for check in (netns.full_name, links.host_name, links.inner_name):
        with pytest.raises(Refused):
            check(bad)


def test_namespace_names_get_the_prefix_once():
    assert netns.full_name("red") == "lh-red" == netns.full_name("lh-red")
    assert netns.path_of("red") == "/run/netns/lh-red"


def test_long_host_interface_names_are_hashed_never_cut():
    short = links.host_name("br0")
    assert short == "lh-br0"
    a, b = links.host_name("a-long-bridge-name-1"), links.host_name("a-long-bridge-name-2")
    assert len(a.encode()) == len(b.encode()) == marks.IFNAME_MAX and a != b
    assert a.startswith("lh-") and links.host_name("a-long-bridge-name-1") == a     # stable
    assert links.host_name(a) == a                                                   # already ours


def test_inner_names_fit_the_kernels_limit():
    assert links.inner_name("eth0") == "eth0" and links.inner_name("lo") == "lo"
    assert links.inner_name("x" * 15) == "x" * 15
    with pytest.raises(Refused, match="1 to 15 bytes"):
        links.inner_name("x" * 16)                        # inside a namespace, no hashing: refused


@pytest.mark.parametrize("cidr,ok", [("10.0.0.1/24", True), ("10.0.0.0/24", False), ("10.0.0.255/24", False),
                                     ("10.0.0.1", False), ("300.0.0.1/24", False), ("fe80::1/64", False),
                                     ("10.0.0.1/31", True), ("nonsense", False), (None, False)])
def test_addresses_are_checked_before_any_kernel_call(cidr, ok):
    if ok:
        assert links._cidr(cidr) == cidr
    else:
        with pytest.raises(Refused):
            links._cidr(cidr)


def test_a_host_route_must_name_a_lab_interface(monkeypatch):
    monkeypatch.setenv("LABHELPER_DISPOSABLE", "1")
    with pytest.raises(Refused, match="must name a lab interface"):
        links.route(None, "10.1.0.0/24", via="10.213.0.1")
    with pytest.raises(Refused, match="gateway .* or an interface"):
        links.route("red", "default")
    with pytest.raises(Refused, match="not 'default' nor a subnet"):
        links.route("red", "somewhere", via="10.0.0.1")
    with pytest.raises(Refused, match="not an address"):
        links.route("red", "default", via="gateway")


def test_the_firewall_table_guards_one_interface_and_drops_by_default():
    text = firewall.ruleset("lh-br0")
    assert text.startswith("table inet lh-br0 {")
    rules = [line.strip() for line in text.splitlines()]
    # input: replies, ping and opened ports pass; everything else from the lab is dropped, last
    inputs = rules[rules.index("chain input {") + 2: rules.index("chain forward {") - 1]
    assert inputs[-1] == 'iifname "lh-br0" counter drop'
    assert 'iifname "lh-br0" ct state established,related accept' in inputs
    assert 'iifname "lh-br0" tcp dport @open_tcp accept' in inputs
    assert all('"lh-br0"' in r for r in inputs)             # no rule touches anyone else's traffic
    assert 'iifname "lh-br0" oifname != "lh-br0" counter drop' in rules   # nothing routed out ...
    assert 'oifname "lh-br0" iifname != "lh-br0" counter drop' in rules   # ... nor in
    with pytest.raises(Refused):
        firewall.ruleset('eth0" accept #')                   # a name cannot inject a rule


def test_nat_is_opt_in_and_never_reaches_another_lab_network(monkeypatch):
    monkeypatch.setenv("LABHELPER_DISPOSABLE", "1")
    monkeypatch.delenv(firewall.NAT_ENV, raising=False)
    with pytest.raises(Refused, match="LABHELPER_ALLOW_NAT=1"):
        firewall.nat("lh-br0", "10.213.0.0/24")
    rules = firewall.nat_rules("lh-br0", "10.213.0.7/24", "eth0")
    assert "insert rule inet lh-br0 forward" in rules        # before the drops
    assert 'ip saddr 10.213.0.0/24 oifname "eth0" masquerade' in rules
    # out through the uplink only: never to another interface (docker0, a VPN, another lab net)
    accepts = [line for line in rules.splitlines() if line.endswith("accept")]
    assert accepts and all('"eth0"' in line for line in accepts)
    with pytest.raises(Refused):
        firewall.nat_rules("lh-br0", "10.213.0.0/24", 'eth0" accept')


def test_a_bridge_table_drops_sources_outside_its_subnet_first():
    rules = [line.strip() for line in firewall.ruleset("lh-br0", "10.213.4.0/24").splitlines()]
    first = rules[rules.index("type filter hook input priority filter - 10; policy accept;") + 1]
    assert first == 'iifname "lh-br0" ip saddr != 10.213.4.0/24 counter drop'
    with pytest.raises(Refused):
        firewall.ruleset("lh-br0", "fe80::/64")


@pytest.mark.parametrize("port", [0, 65536, -1, "80", True, 1.5])
def test_ports_are_checked(port):
    with pytest.raises(Refused):
        firewall._port(port)


def test_a_census_of_a_fake_tree_never_asks_the_live_kernel_for_tables(monkeypatch, tmp_path):
    monkeypatch.setattr(firewall, "tables", lambda: pytest.fail("asked the live kernel"))
    scan = marks.Scan(tmp_path, tmp_path, tmp_path, tmp_path)
    assert not scan.live and network.find_firewalls(scan) == []
    live = marks.Scan(Path("/proc"), Path("/sys"), Path("/run/netns"), Path("/"))
    monkeypatch.setattr(firewall, "tables", lambda: ["lh-x"])
    assert live.live and network.find_firewalls(live) == [marks.Obj("firewall", "lh-x")]


def test_census_finds_links_and_namespaces_by_the_mark(tmp_path):
    (tmp_path / "class" / "net").mkdir(parents=True)
    for name in ("eth0", "lh-br0", "lh-a"):
        (tmp_path / "class" / "net" / name).mkdir()
    (tmp_path / "netns").mkdir()
    for name in ("theirs", "lh-red"):
        (tmp_path / "netns" / name).touch()
    scan = marks.Scan(tmp_path, tmp_path, tmp_path / "netns", tmp_path)
    assert [o.name for o in network.find_links(scan)] == ["lh-a", "lh-br0"]
    assert [o.name for o in network.find_netns(scan)] == ["lh-red"]


def test_removers_refuse_what_is_not_ours(monkeypatch):
    monkeypatch.setenv("LABHELPER_DISPOSABLE", "1")
    for remover, kind in ((network.remove_link, "link"), (network.remove_netns, "netns"),
                          (network.remove_firewall, "firewall")):
        with pytest.raises(Refused):
            remover(marks.Obj(kind, "eth0"), None)


def test_firewall_is_removed_after_the_links_it_guards():
    order = [k.name for k in marks.KINDS]
    assert order.index("link") < order.index("firewall") and order.index("netns") < order.index("firewall")


def test_an_interrupt_is_held_back_while_the_helper_answers_then_raised():
    import os
    import signal
    with netns._interrupts_deferred() as pending:
        os.kill(os.getpid(), signal.SIGINT)          # arrives now, and is only noted
        assert pending == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler    # restored

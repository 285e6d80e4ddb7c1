"""The lab's firewall: a lab network may not reach this host's own services (R16).

The notebook's kernel runs as root, and in the lab VM JupyterLab listens on every address of
the VM. A container on a bridge whose gateway is the host could otherwise connect to the Jupyter
server through the gateway's address and run code on the host: the very escape a container must
not have. So every interface of ours on the host side (a bridge, a veth end left on the host)
gets an nftables table of its own, named like the interface, made *before* the interface exists:

* input: what arrives from that interface for this host is dropped, except replies to
  connections the host opened, ping (ICMP echo), and the ports a chapter opens on purpose
  (:func:`open_port`);
* forward: nothing is routed from that interface to another, or to it from another (no path out
  of the lab, nor into another learner's network). A bridge's own ports still talk to each
  other: bridged frames are not routed. (Where br_netfilter is loaded, as on a host running
  Docker, bridged frames do pass the forward hook; these rules let them through, their in and
  out interface both being the bridge, but another table's drop policy, such as Docker's, may
  not.)
* a bridge with a subnet also drops what claims to come from outside that subnet: a container
  cannot pass itself off as a peer of a connection the host opened.

The lab's networks are IPv4: ICMPv6, and so IPv6 neighbour discovery, is dropped like the rest.
A drop in any table is final, but an accept is not: a port opened here can still be dropped by
another firewall of the host (ufw, firewalld) that drops by default.

A table is a lab object of kind "firewall": recorded in the ledger, listed by the census,
removed by cleanup after its interface. The rules are nftables' own language, applied by the
`nft` program in one transaction (all or nothing), and shown to the learner as they are.

Reaching the outside world (NAT) is never on by default: :func:`nat` adds it only when the
learner sets LABHELPER_ALLOW_NAT=1, and never in tests.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

from .. import marks
from ..errors import LabError, Refused, RequirementError
from ..registry import fault_point, guard, ledger

__all__ = ["NFT", "ruleset", "create", "remove", "tables", "show", "open_port", "close_port", "opened", "nat",
           "nat_rules", "uplink", "NAT_ENV"]

NFT = "nft"
NAT_ENV = "LABHELPER_ALLOW_NAT"
FAMILY = "inet"                 # one table for IPv4 and IPv6


def _nft_path() -> str:
    path = shutil.which(NFT) or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(p)), None)
    if path is None:
        raise RequirementError("the nft program is missing: a lab network on the host side needs nftables, "
                               "so that it cannot reach this host's services",
                               hint="apt-get install nftables (scripts/provision.sh installs it)")
    return path


def _nft(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run([_nft_path(), *args], input=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        shown = " ".join(args) if stdin is None else f"{' '.join(args)} <<'EOF'\n{stdin}EOF"
        raise LabError(f"nft {shown} failed: {result.stderr.strip()}",
                       hint="nftables needs root and a kernel with nf_tables (CONFIG_NF_TABLES)")
    return result.stdout


def ruleset(link: str, subnet: str | None = None) -> str:
    """The table that guards host interface ``link`` (nftables' language). With ``subnet`` (a
    bridge's), packets from ``link`` whose source is outside it are dropped first."""
    link = marks.link_name(link)
    spoof = ""
    if subnet is not None:
        net = _subnet(subnet)
        spoof = f'        iifname "{link}" ip saddr != {net} counter drop\n'
    return f"""table {FAMILY} {link} {{
    set open_tcp {{ type inet_service; }}
    set open_udp {{ type inet_service; }}
    chain input {{
        type filter hook input priority filter - 10; policy accept;
{spoof}        iifname "{link}" ct state established,related accept
        iifname "{link}" icmp type echo-request accept
        iifname "{link}" tcp dport @open_tcp accept
        iifname "{link}" udp dport @open_udp accept
        iifname "{link}" counter drop
    }}
    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        iifname "{link}" oifname != "{link}" counter drop
        oifname "{link}" iifname != "{link}" counter drop
    }}
}}
"""


def tables() -> list[str]:
    """The lab's tables that exist now (family inet, named lh-*)."""
    try:
        _nft_path()
    except RequirementError:
        return []                           # no nft: none of ours can have been made
    # nft failing (not root, no nf_tables) is an error, not "no table": a caller would forget a
    # table that exists, or tell a learner the guard is gone.
    out = _nft("-j", "list", "tables", FAMILY)
    found = []
    for item in json.loads(out or "{}").get("nftables", []):
        table = item.get("table")
        if table and table.get("family") == FAMILY and str(table.get("name", "")).startswith(marks.PREFIX):
            found.append(table["name"])
    return sorted(found)


def create(link: str, owner: str | None = None, subnet: str | None = None) -> None:
    """Guard host interface ``link``: its table, recorded first, made in one transaction."""
    link = marks.link_name(link)
    rules = ruleset(link, subnet)            # checks the subnet before anything is recorded
    guard(f"create the firewall table {link}")
    _nft_path()                              # refuse before recording anything if nft is missing
    with ledger().creating("firewall", link, owner):
        _nft("-f", "-", stdin=rules)
    fault_point("firewall")


def remove(link: str, the_ledger=None) -> None:
    """Remove the table of ``link`` (idempotent)."""
    link = marks.link_name(link)
    with (the_ledger or ledger()).removing("firewall", link):
        if link in tables():
            _nft("delete", "table", FAMILY, link)


def show(link: str) -> str:
    """The table as the kernel has it now, with its counters (what was dropped)."""
    return _nft("list", "table", FAMILY, marks.link_name(link))


def _port(port) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise Refused(f"a port is a number from 1 to 65535, not {port!r}")
    return port


def _proto(proto: str) -> str:
    if proto not in ("tcp", "udp"):
        raise Refused(f"protocol {proto!r}: tcp or udp")
    return proto


def open_port(link: str, port: int, proto: str = "tcp") -> None:
    """Let the network behind ``link`` reach this host on ``port``: on purpose, one port."""
    link, port, proto = marks.link_name(link), _port(port), _proto(proto)
    guard(f"open port {port}/{proto} to {link}")
    _require(link)
    _nft("add", "element", FAMILY, link, f"open_{proto}", f"{{ {port} }}")


def opened(link: str) -> dict[str, set[int]]:
    """The ports opened on purpose in the table of ``link``: {"tcp": {...}, "udp": {...}}."""
    link = marks.link_name(link)
    found: dict[str, set[int]] = {"tcp": set(), "udp": set()}
    for proto in found:
        out = _nft("-j", "list", "set", FAMILY, link, f"open_{proto}")
        for item in json.loads(out or "{}").get("nftables", []):
            for element in (item.get("set") or {}).get("elem", []):
                if isinstance(element, int):
                    found[proto].add(element)
    return found


def close_port(link: str, port: int, proto: str = "tcp") -> None:
    """Shut a port again: new connections are dropped (one already made goes on: its packets
    are replies to it, "established")."""
    link, port, proto = marks.link_name(link), _port(port), _proto(proto)
    guard(f"close port {port}/{proto} to {link}")
    _require(link)
    _nft("delete", "element", FAMILY, link, f"open_{proto}", f"{{ {port} }}")


def _require(link: str) -> None:
    if link not in tables():
        raise Refused(f"{link!r} has no lab firewall table: it is not a host interface the lab made")


def nat(link: str, subnet: str) -> None:
    """Opt-in only: let ``subnet`` behind ``link`` reach the outside world through this host
    (masquerade), as Docker's default bridge does. Refused unless LABHELPER_ALLOW_NAT=1 and the
    host already forwards IPv4 (a host setting the learner changes, not the lab)."""
    link = marks.link_name(link)
    guard(f"let {link} reach the outside world")
    if os.environ.get(NAT_ENV) != "1":
        raise Refused(f"reaching the outside world is off: set {NAT_ENV}=1 to opt in (never in tests)")
    with open("/proc/sys/net/ipv4/ip_forward") as fh:
        if fh.read().strip() != "1":
            raise Refused("this host does not forward IPv4 packets",
                          hint="sysctl -w net.ipv4.ip_forward=1 (a host setting: set it back when done)")
    _require(link)
    _nft("-f", "-", stdin=nat_rules(link, subnet, uplink()))


def uplink() -> str:
    """The interface of this host's default route: the only way out NAT opens."""
    with open("/proc/net/route") as fh:
        for line in fh.read().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 2 and fields[1] == "00000000":      # destination 0.0.0.0: the default
                return fields[0]
    raise Refused("this host has no default route: there is no outside world to reach")


def nat_rules(link: str, subnet: str, uplink: str) -> str:
    """What :func:`nat` adds to the table of ``link``: forwarding out through ``uplink`` only
    (never into another lab network, docker0 or a VPN) and the replies back, and masquerade of
    ``subnet`` behind this host's address on ``uplink``."""
    link, net = marks.link_name(link), _subnet(subnet)
    if not uplink or not all(c.isascii() and (c.isalnum() or c in "-_.@") for c in uplink):
        raise Refused(f"{uplink!r} is not an interface name")
    # insert: before the table's drop rules (nftables runs a chain's rules in order).
    return (f'insert rule {FAMILY} {link} forward oifname "{link}" iifname "{uplink}" ct state established,related accept\n'
            f'insert rule {FAMILY} {link} forward iifname "{link}" oifname "{uplink}" accept\n'
            f"add chain {FAMILY} {link} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n"
            f'add rule {FAMILY} {link} postrouting ip saddr {net} oifname "{uplink}" masquerade\n')


def _subnet(subnet) -> str:
    import ipaddress
    try:
        net = ipaddress.ip_network(subnet, strict=False)
    except (ValueError, TypeError):
        raise Refused(f"{subnet!r} is not a subnet such as '10.213.0.0/24'") from None
    if net.version != 4:
        raise Refused(f"{subnet!r}: the lab's networks are IPv4")
    return str(net)

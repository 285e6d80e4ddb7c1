"""Links, addresses and routes: cables between network namespaces, and what flows on them.

* A **veth pair** is a cable: two interfaces, and what goes in one comes out of the other. Its
  ends can be in two namespaces; here each end is created directly in its namespace (one
  RTM_NEWLINK naming both namespaces, as `ip link add A netns X type veth peer B netns Y`), never
  created on the host and moved afterwards: no moment where a container's end is on the host.
* A **bridge** is a switch inside the kernel: interfaces enslaved to it (their "master") are its
  ports, and frames go between ports. Docker's docker0 is one, with the host's address on it as
  every container's gateway.
* An **address** is given to an interface (10.0.0.1/24: the address, and the subnet reachable
  directly on that link); a **route** says where packets for a destination go: out of which
  interface, through which gateway. An interface is down until it is brought up, and a new
  namespace's loopback too.

Names: an interface on the host is ours by its name (``lh-...``, hashed to fit 15 bytes, never
cut); inside a lab namespace any valid name is fine (``eth0``, as in a container), since the
namespace is ours. Every host-side interface is recorded in the ledger, guarded by its firewall
table (firewall.py) made before it, and removed by cleanup. Everything is checked before any
kernel call: names, addresses, subnets, and whether a name or address is in use.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import socket
from dataclasses import dataclass, field

from .. import marks
from ..errors import Refused
from ..registry import fault_point, guard, ledger
from . import firewall, netns, rtnl
from .rtnl import ACK, DUMP, GET, NEW

__all__ = ["Link", "Address", "Route", "host_name", "inner_name", "veth", "bridge", "attach", "up", "down",
           "address", "route", "links", "addresses", "routes", "route_to", "delete", "LAB_POOL", "gateway_of",
           "free_subnet", "read_links", "read_routes"]

#: Where automatic subnets come from: a /24 each, never one that overlaps this host's addresses
#: or routes (so never a real network the host reaches).
LAB_POOL = ipaddress.ip_network("10.213.0.0/16")
_LOCK_DIR = "/run/labhelper"

_INVALID_IFNAMES = (".", "..")


# --- names ----------------------------------------------------------------------------------------

def host_name(name) -> str:
    """The name of a host-side interface of ours: ``lh-NAME``, hashed if longer than 15 bytes."""
    if isinstance(name, str) and name.startswith(marks.PREFIX):
        return marks.link_name(name)
    return marks.ifname(name)


def inner_name(name) -> str:
    """An interface name inside a lab namespace: 1 to 15 bytes of letters, digits, '-', '_', '.'
    (the kernel's dev_valid_name also refuses '/', ':' and spaces; '.' and '..' are folder names)."""
    if not isinstance(name, str) or name in _INVALID_IFNAMES or not 0 < len(name.encode()) <= marks.IFNAME_MAX \
            or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in name) or name[0] in "-.":
        raise Refused(f"{marks.printable(str(name))!r} is not an interface name: 1 to {marks.IFNAME_MAX} bytes "
                      "of letters, digits, '-', '_' and '.', not starting with '-' or '.'")
    return name


def _end(where, name) -> tuple[str | None, str]:
    """(namespace full name or None for the host, interface name), checked."""
    if where is None:
        return None, host_name(name)
    return netns.full_name(where), inner_name(name)


def _where(where) -> str | None:
    return None if where is None else netns.full_name(where)


def _shown(where) -> str:
    return where or "host"


# --- what the kernel says -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Address:
    interface: str
    cidr: str                 # "10.0.0.1/24"
    family: str               # "inet" or "inet6"

    @property
    def ip(self) -> str:
        return self.cidr.split("/")[0]


@dataclass(frozen=True)
class Link:
    """One interface as the kernel reports it (RTM_GETLINK)."""
    name: str
    index: int
    kind: str                 # "veth", "bridge", "loopback", "device", ...
    up: bool                  # administratively up (IFF_UP): `ip link set X up`
    state: str                # operational state: UP, DOWN, LOWERLAYERDOWN (the other end is down), UNKNOWN
    mac: str
    mtu: int
    master: int | None        # the bridge it is a port of (ifindex)
    peer: int | None          # a veth's other end: its ifindex ...
    peer_nsid: int | None     # ... in the namespace this one calls peer_nsid (None: the same namespace)
    addresses: tuple[str, ...] = field(default=())

    def __repr__(self) -> str:
        addrs = " ".join(self.addresses)
        return f"{self.index}: {self.name} ({self.kind}) {'up' if self.up else 'down'} {self.state} {addrs}".rstrip()


@dataclass(frozen=True)
class Route:
    destination: str          # "default" or "10.0.0.0/24"
    via: str | None           # the gateway, if any
    device: str | None
    scope: str                # the kernel's scope: "link" for a subnet reachable on that link, "host" for
                              # this machine's own addresses, "global" for the rest (a gateway's routes)

    def __repr__(self) -> str:
        via = f" via {self.via}" if self.via else ""
        dev = f" dev {self.device}" if self.device else ""
        return f"{self.destination}{via}{dev} scope {self.scope}"


def _kind(msg) -> str:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    if kind:
        return kind
    return "loopback" if msg["flags"] & 0x8 else "device"     # IFF_LOOPBACK


def read_links(r: rtnl.Rtnl) -> list[Link]:
    addrs: dict[int, list[str]] = {}
    for a in r.request("RTM_GETADDR", rtnl.ifaddrmsg, rtnl.RTM_GETADDR, DUMP):
        ip = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
        addrs.setdefault(a["index"], []).append(f"{ip}/{a['prefixlen']}")
    found = []
    for m in r.request("RTM_GETLINK", rtnl.ifinfmsg, rtnl.RTM_GETLINK, DUMP):
        peer = m.get_attr("IFLA_LINK")
        nsid = m.get_attr("IFLA_LINK_NETNSID")
        if peer == m["index"] and nsid is None:
            peer = None                       # some devices name themselves: no other end
        found.append(Link(m.get_attr("IFLA_IFNAME"), m["index"], _kind(m), bool(m["flags"] & rtnl.IFF_UP),
                          m.get_attr("IFLA_OPERSTATE") or "UNKNOWN", m.get_attr("IFLA_ADDRESS") or "",
                          m.get_attr("IFLA_MTU") or 0, m.get_attr("IFLA_MASTER"),
                          peer or None, nsid,
                          tuple(addrs.get(m["index"], ()))))
    return sorted(found, key=lambda link: link.index)


def links(where=None) -> list[Link]:
    """The interfaces of a lab namespace (None: of this host), read from the kernel."""
    with netns.rtnl_in(_where(where)) as r:
        return read_links(r)


def addresses(where=None) -> list[Address]:
    with netns.rtnl_in(_where(where)) as r:
        names = {link.index: link.name for link in read_links(r)}
        out = []
        for a in r.request("RTM_GETADDR", rtnl.ifaddrmsg, rtnl.RTM_GETADDR, DUMP):
            ip = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
            out.append(Address(names.get(a["index"], str(a["index"])), f"{ip}/{a['prefixlen']}",
                               "inet" if a["family"] == socket.AF_INET else "inet6"))
        return out


_SCOPES = {0: "global", 200: "site", 253: "link", 254: "host"}


def read_routes(r: rtnl.Rtnl, names: dict[int, str]) -> list[Route]:
    out = []
    for m in r.request("RTM_GETROUTE", rtnl.rtmsg, rtnl.RTM_GETROUTE, DUMP, {"family": socket.AF_INET}):
        if m.get_attr("RTA_TABLE") != 254 or m["type"] != 1:     # the main table's unicast routes, as `ip route`
            continue
        dst = m.get_attr("RTA_DST")
        out.append(Route(f"{dst}/{m['dst_len']}" if dst else "default", m.get_attr("RTA_GATEWAY"),
                         names.get(m.get_attr("RTA_OIF")), _SCOPES.get(m["scope"], str(m["scope"]))))
    return out


def routes(where=None) -> list[Route]:
    """The IPv4 routes of the main table (what `ip route` shows)."""
    with netns.rtnl_in(_where(where)) as r:
        return read_routes(r, {link.index: link.name for link in read_links(r)})


def route_to(where, destination: str) -> Route:
    """The route the kernel would take to ``destination`` now (`ip route get`): which interface,
    through which gateway. A packet's path, asked of the kernel itself."""
    ip = ipaddress.ip_address(destination)
    with netns.rtnl_in(_where(where)) as r:
        names = {link.index: link.name for link in read_links(r)}
        got = r.request("RTM_GETROUTE", rtnl.rtmsg, rtnl.RTM_GETROUTE, GET,
                        {"family": socket.AF_INET, "dst_len": 32}, [("RTA_DST", str(ip))],
                        {"to": str(ip)})
    m = got[0]
    via = m.get_attr("RTA_GATEWAY")
    # where the packet goes: to this host itself (a local address), straight on the link, or to a gateway
    scope = "host" if m["type"] == 2 else ("global" if via else "link")
    return Route(str(ip), via, names.get(m.get_attr("RTA_OIF")), scope)


def _index(r: rtnl.Rtnl, name: str) -> int:
    got = r.request("RTM_GETLINK", rtnl.ifinfmsg, rtnl.RTM_GETLINK, GET, {}, [("IFLA_IFNAME", name)],
                    {"ifname": name})
    return got[0]["index"]


def _exists(r: rtnl.Rtnl, name: str) -> bool:
    try:
        _index(r, name)
        return True
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            return False
        raise


def _require_free(where: str | None, name: str) -> None:
    with netns.rtnl_in(where) as r:
        if _exists(r, name):
            raise Refused(f"an interface named {name!r} exists in {_shown(where)} already",
                          hint="choose another name, or remove the old one")


# --- making ------------------------------------------------------------------------------------------

def veth(a: tuple, b: tuple, owner: str | None = None) -> tuple[str, str]:
    """A veth pair from end ``a`` to end ``b``, each ``(namespace, name)`` with namespace None
    for this host. Each end is created in its own namespace directly. A host end is named
    ``lh-NAME`` and guarded by a firewall table of its own. Returns the two names."""
    (wa, na), (wb, nb) = _end(*a), _end(*b)
    if (wa, na) == (wb, nb):
        raise Refused(f"both ends are {na!r} in {_shown(wa)}: a pair needs two names")
    guard(f"create a veth pair {na} ({_shown(wa)}) - {nb} ({_shown(wb)})")
    for where, name in ((wa, na), (wb, nb)):
        if where is not None:
            netns.require(where)
        _require_free(where, name)
    _make_veth((wa, na), (wb, nb), owner)
    return na, nb


def _ns_attr(where: str | None, opened: list[int]) -> list:
    if where is None:
        return []
    fd = netns.open_ns(where)
    opened.append(fd)
    return [("IFLA_NET_NS_FD", fd)]


def _make_veth(a, b, owner, master: int | None = None) -> None:
    """Create the pair. Host ends: firewall table first, then the record, then the link."""
    host_ends = [name for where, name in (a, b) if where is None]
    guarded = host_ends if master is None else []     # a bridge's port is guarded by the bridge's table
    made: list[str] = []
    with contextlib.ExitStack() as stack:
        try:
            for name in guarded:
                firewall.create(name, owner)
                made.append(name)
            for name in host_ends:
                stack.enter_context(ledger().creating("link", name, owner, data={
                    "veth": [f"{_shown(a[0])}:{a[1]}", f"{_shown(b[0])}:{b[1]}"]}))
            opened: list[int] = []
            try:
                peer = [("IFLA_IFNAME", b[1])] + _ns_attr(b[0], opened)
                attrs = [("IFLA_IFNAME", a[1])] + _ns_attr(a[0], opened)
                if master is not None:
                    attrs.append(("IFLA_MASTER", master))
                attrs.append(("IFLA_LINKINFO", {"attrs": [
                    ("IFLA_INFO_KIND", "veth"),
                    ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": peer})]})]}))
                with rtnl.Rtnl.here() as r:
                    r.request("RTM_NEWLINK", rtnl.ifinfmsg, rtnl.RTM_NEWLINK, NEW, {}, attrs,
                              {"ifname": a[1], "netns": _shown(a[0]), "kind": "veth", "peer": b[1],
                               "peer_netns": _shown(b[0])})
            finally:
                for fd in opened:
                    os.close(fd)
        except BaseException:
            for name in made:
                firewall.remove(name)
            raise
    fault_point("veth")


def up(where, name: str) -> None:
    """Bring an interface up (`ip link set NAME up`): from now on it sends and receives."""
    _set_flags(where, name, rtnl.IFF_UP)


def down(where, name: str) -> None:
    _set_flags(where, name, 0)


def _set_flags(where, name: str, flags: int) -> None:
    where, name = _end(where, name)
    guard(f"set {name} in {_shown(where)} {'up' if flags else 'down'}")
    with netns.rtnl_in(where) as r:
        idx = _index(r, name)
        r.request("RTM_NEWLINK", rtnl.ifinfmsg, rtnl.RTM_NEWLINK, ACK,
                  {"index": idx, "flags": flags, "change": rtnl.IFF_UP}, [],
                  {"ifname": name, "up": bool(flags)})


def address(where, name: str, cidr: str) -> None:
    """Give interface ``name`` the address ``cidr`` (`ip addr add 10.0.0.1/24 dev NAME`).
    Refused if that address is in use anywhere in the namespace already."""
    iface = ipaddress.ip_interface(_cidr(cidr))
    where, name = _end(where, name)
    guard(f"add address {iface} to {name} in {_shown(where)}")
    with netns.rtnl_in(where) as r:
        idx = _index(r, name)
        for link in read_links(r):
            if any(ipaddress.ip_interface(a).ip == iface.ip for a in link.addresses):
                raise Refused(f"{iface.ip} is in use in {_shown(where)} already (on {link.name})",
                              hint="each address once per namespace: choose another")
        r.request("RTM_NEWADDR", rtnl.ifaddrmsg, rtnl.RTM_NEWADDR, NEW,
                  {"family": socket.AF_INET, "prefixlen": iface.network.prefixlen, "index": idx},
                  [("IFA_LOCAL", str(iface.ip)), ("IFA_ADDRESS", str(iface.ip))],
                  {"address": str(iface), "ifname": name})
    fault_point("address")


def _cidr(cidr) -> str:
    try:
        iface = ipaddress.ip_interface(cidr)
    except (ValueError, TypeError):
        raise Refused(f"{cidr!r} is not an address with its prefix length, such as '10.0.0.1/24'") from None
    if iface.version != 4 or "/" not in str(cidr):
        raise Refused(f"{cidr!r}: give an IPv4 address with its prefix length, such as '10.0.0.1/24'")
    if iface.ip in (iface.network.network_address, iface.network.broadcast_address) and iface.network.prefixlen < 31:
        raise Refused(f"{cidr!r} is the subnet's own {'network' if iface.ip == iface.network.network_address else 'broadcast'} "
                      "address, not one an interface can have")
    return str(iface)


def route(where, destination: str = "default", via: str | None = None, dev: str | None = None) -> None:
    """Add a route (`ip route add DESTINATION [via GATEWAY] [dev NAME]`)."""
    where = _where(where)
    if destination == "default":
        dst = None
        length = 0
    else:
        try:
            net = ipaddress.ip_network(destination)
        except ValueError:
            raise Refused(f"{destination!r} is not 'default' nor a subnet such as '10.1.0.0/24'") from None
        dst, length = str(net.network_address), net.prefixlen
    if via is None and dev is None:
        raise Refused("a route needs a gateway (via=) or an interface (dev=)")
    if where is None and dev is None:
        raise Refused("a route on this host must name a lab interface (dev='...'): it then goes when that "
                      "interface goes, and no host route is left behind")
    if via is not None:
        try:
            via = str(ipaddress.ip_address(via))
        except ValueError:
            raise Refused(f"{via!r} is not an address") from None
    dev = None if dev is None else (host_name(dev) if where is None else inner_name(dev))
    guard(f"add route {destination} in {_shown(where)}")
    attrs = [("RTA_DST", dst)] if dst else []
    with netns.rtnl_in(where) as r:
        if via is not None:
            attrs.append(("RTA_GATEWAY", via))
        if dev is not None:
            attrs.append(("RTA_OIF", _index(r, dev)))
        r.request("RTM_NEWROUTE", rtnl.rtmsg, rtnl.RTM_NEWROUTE, NEW,
                  {"family": socket.AF_INET, "dst_len": length, "table": 254, "proto": 4,   # RTPROT_STATIC
                   "scope": 0 if via else 253, "type": 1}, attrs,
                  {"to": destination, "via": via, "dev": dev})


# --- a bridge, and containers on it -------------------------------------------------------------------

@contextlib.contextmanager
def _allocating():
    """Choosing a subnet or an address and taking it must be one step for every process of the
    lab at once (R27): an exclusive lock (flock) on the lab's own folder serializes them, with no
    lock file to leave behind."""
    fd = marks.open_lab_dir(_LOCK_DIR, create=True)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _host_networks() -> list:
    nets = []
    with rtnl.Rtnl.here() as r:
        for link in read_links(r):
            nets += [ipaddress.ip_interface(a).network for a in link.addresses if ":" not in a]
        nets += [ipaddress.ip_network(x.destination) for x in read_routes(r, {}) if x.destination != "default"]
    return nets


def free_subnet() -> str:
    """A /24 of LAB_POOL that overlaps nothing this host has (call it under _allocating)."""
    taken = _host_networks()
    for net in LAB_POOL.subnets(new_prefix=24):
        if not any(net.overlaps(t) for t in taken):
            return str(net)
    raise Refused(f"every /24 of {LAB_POOL} is in use on this host: remove some lab networks (`labhelper cleanup`)")


def bridge(name, subnet: str | None = "auto", owner: str | None = None) -> str:
    """A bridge on this host, ``lh-NAME``, up, with the subnet's first address as the gateway of
    the containers attached to it (as docker0 is 172.17.0.1/16). ``subnet="auto"`` picks a free
    /24 of LAB_POOL; None gives it no address. Guarded by its firewall table. Returns its name."""
    link = host_name(name)
    guard(f"create the bridge {link}")
    _require_free(None, link)
    with _allocating():
        if subnet == "auto":
            subnet = free_subnet()
        gateway = None
        if subnet is not None:
            try:
                net = ipaddress.ip_network(subnet)
            except ValueError:
                raise Refused(f"{subnet!r} is not a subnet such as '10.213.5.0/24'") from None
            if net.version != 4 or net.prefixlen > 30:
                raise Refused(f"{subnet!r}: an IPv4 subnet with room for containers (/30 or larger)")
            clash = [t for t in _host_networks() if t.overlaps(net)]
            if clash:
                raise Refused(f"{subnet} overlaps {clash[0]}, which this host uses already",
                              hint='pass subnet="auto" for a free one')
            gateway = f"{next(net.hosts())}/{net.prefixlen}"
        firewall.create(link, owner, subnet=subnet)
        try:
            with ledger().creating("link", link, owner, data={"bridge": True, "subnet": subnet}):
                with rtnl.Rtnl.here() as r:
                    r.request("RTM_NEWLINK", rtnl.ifinfmsg, rtnl.RTM_NEWLINK, NEW, {},
                              [("IFLA_IFNAME", link), ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge")]})],
                              {"ifname": link, "kind": "bridge"})
        except BaseException:
            firewall.remove(link)
            raise
        fault_point("bridge")
        up(None, link)
        if gateway is not None:
            address(None, link, gateway)
    return link


def gateway_of(bridge_name) -> ipaddress.IPv4Interface | None:
    """The bridge's own address (the gateway), with its subnet, read from the kernel. Only a
    bridge the lab made (its record says so) is one containers may be attached to."""
    link = host_name(bridge_name)
    record = ledger().find("link", link)
    if record is None or not record.data.get("bridge"):
        raise Refused(f"{link!r} is not a bridge the lab made (the ledger has no record of it)",
                      hint="make one with network.bridge(...)")
    with rtnl.Rtnl.here() as r:
        for item in read_links(r):
            if item.name == link:
                v4 = [a for a in item.addresses if ":" not in a]
                return ipaddress.ip_interface(v4[0]) if v4 else None
    raise Refused(f"there is no bridge {link!r} on this host")


def port_name(container, bridge_name) -> str:
    """The host end of the veth that :func:`attach` makes between ``container`` and the bridge."""
    ns, link = netns.full_name(container), host_name(bridge_name)
    return marks.ifname(f"{link[len(marks.PREFIX):]}-{ns[len(marks.PREFIX):]}")


def attach(container, bridge_name, name: str = "eth0", cidr: str | None = "auto",
           owner: str | None = None) -> str:
    """Connect the namespace ``container`` to the bridge, as `docker run --network` does: a veth
    pair whose host end is a port of the bridge (enslaved as it is created) and whose other end
    is ``name`` inside; both up, the container's loopback up, an address from the bridge's subnet
    (the next free one for "auto"), and a default route through the bridge's address. Returns the
    container's address."""
    ns = netns.full_name(container)
    inner = inner_name(name)
    link = host_name(bridge_name)
    port = port_name(container, bridge_name)
    guard(f"attach {ns} to {link}")
    gw = gateway_of(link)
    netns.require(ns)
    _require_free(ns, inner)
    _require_free(None, port)
    with _allocating():
        if gw is None:
            mine = None
        else:
            used = {gw.ip} | _used_in_lab(gw.network)
            if cidr == "auto":
                free = next((h for h in gw.network.hosts() if h not in used), None)
                if free is None:
                    raise Refused(f"no free address is left in {gw.network}")
                mine = ipaddress.ip_interface(f"{free}/{gw.network.prefixlen}")
            else:
                mine = ipaddress.ip_interface(_cidr(cidr))
                if mine.network != gw.network:
                    raise Refused(f"{cidr} is not in the bridge's subnet {gw.network}",
                                  hint=f"choose an address in {gw.network}, or cidr='auto'")
                if mine.ip in used:
                    raise Refused(f"{mine.ip} is in use on this bridge's network already",
                                  hint="choose another address, or cidr='auto'")
        with rtnl.Rtnl.here() as r:
            master = _index(r, link)
        _make_veth((None, port), (ns, inner), owner, master=master)
        up(None, port)
        up(ns, "lo")
        up(ns, inner)
        if mine is not None:
            address(ns, inner, str(mine))
            route(ns, "default", via=str(gw.ip))
    return None if mine is None else str(mine)


def _used_in_lab(subnet) -> set:
    used = set()
    for name in netns.names():
        try:
            for link in links(name):
                used |= {ipaddress.ip_interface(a).ip for a in link.addresses
                         if ":" not in a and ipaddress.ip_interface(a).ip in subnet}
        except (OSError, ValueError):
            continue                          # removed meanwhile (Refused is a ValueError)
    return used


# --- removing -------------------------------------------------------------------------------------------

def delete(name, the_ledger=None) -> None:
    """Delete a host interface of ours, then its firewall table (idempotent). A veth's other end
    goes too, wherever it is. A bridge's ports of ours are deleted first: the kernel would only
    unplug them, and an unplugged port would sit on the host without a table of its own."""
    link = host_name(name)
    with (the_ledger or ledger()).removing("link", link):
        with rtnl.Rtnl.here() as r:
            # A bridge's ports first: freed by the bridge's deletion, a port would stay on the host
            # unguarded (its table is the bridge's). Ours carry the mark; no other is touched.
            found = {item.name: item for item in read_links(r)}
            if link in found and found[link].kind == "bridge":
                for item in found.values():
                    if item.master == found[link].index and item.name.startswith(marks.PREFIX):
                        delete(item.name, the_ledger)
            try:
                r.request("RTM_DELLINK", rtnl.ifinfmsg, rtnl.RTM_DELLINK, ACK, {}, [("IFLA_IFNAME", link)],
                          {"ifname": link})
            except OSError as exc:
                if exc.errno != errno.ENODEV:    # gone already (the other end of a pair went first)
                    raise
    if link in firewall.tables():
        firewall.remove(link, the_ledger)

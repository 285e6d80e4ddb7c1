"""Network namespaces (chapter 04): each has its own interfaces, addresses, routes, firewall and
ports; veth pairs are cables between them, a bridge is a switch, and the lab's firewall keeps
the lab's networks away from this host's own services.

The parts, from the floor up (each file says more):

* ``rtnl``      rtnetlink requests on a plain socket, pyroute2 encoding the messages; errors
                translated at this one boundary;
* ``netns``     named namespaces as `ip netns` makes them (by a forked helper: the notebook never
                enters a namespace), and sockets made inside one;
* ``firewall``  an nftables table per host interface of ours (R16);
* ``links``     veth pairs (each end born in its namespace), bridges, addresses, routes;
* ``readback``  all of it read back from the kernel (``topology()``), for the diagram.

Lab objects (marks.KINDS): "link" (host interfaces lh-*), "netns" (/run/netns/lh-*) and
"firewall" (nftables tables inet lh-*), with their census finders and removers here. Links go
before namespaces (deleting one end of a veth pair deletes the other, wherever it is), and a
link's firewall table after the link, so that no lab interface is ever unguarded.

Everything runs on the host's stack except what is asked of a namespace, through a socket made
inside it; code that must *run* inside one (ping, a server) runs in a forked child (:func:`run_in`).
"""
from __future__ import annotations

import importlib
import os
import subprocess

from .. import marks, syscalls
from ..errors import LabError, Refused
from ..flags import CloneFlags
from ..process import run_in_child

# pyroute2 takes 0.1 s to import, and `labhelper census` and `cleanup` must start fast: the parts
# that use it (rtnl, links, topology) are imported on first use of one of their names (PEP 562).
_LAZY = {
    "firewall": None, "proxy": None, "links": None, "netns": None, "rtnl": None, "readback": None, "topology": "readback",
    "open_port": "firewall", "close_port": "firewall", "nat": "firewall",
    "create": "netns", "names": "netns", "full_name": "netns", "require": "netns", "socket_in": "netns",
    "remove_ns": ("netns", "remove"),
    "LAB_POOL": "links", "Address": "links", "Link": "links", "Route": "links", "addresses": "links",
    "attach": "links", "bridge": "links", "down": "links", "free_subnet": "links", "host_name": "links",
    "route": "links", "route_to": "links", "gateway_of": "links", "routes": "links", "up": "links", "veth": "links",
    "add_address": ("links", "address"), "delete_link": ("links", "delete"), "list_links": ("links", "links"),
    "port_name": ("links", "port_name"),
    "Cable": "readback", "Space": "readback", "Topology": "readback",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'labhelper.network' has no attribute {name!r}")
    where = _LAZY[name]
    if where is None:
        return importlib.import_module(f"{__name__}.{name}")
    module, attr = (where, name) if isinstance(where, str) else where
    return getattr(importlib.import_module(f"{__name__}.{module}"), attr)


__all__ = [
    # namespaces
    "create", "remove_ns", "names", "full_name", "require", "socket_in", "run_in", "ping",
    # links, addresses, routes
    "veth", "bridge", "attach", "port_name", "gateway_of", "up", "down", "add_address", "route", "delete_link", "host_name",
    "list_links", "addresses", "routes", "route_to", "free_subnet", "LAB_POOL", "Link", "Address", "Route",
    # the firewall
    "open_port", "close_port", "nat",
    # the whole picture
    "topology", "Topology", "Space", "Cable",
    # census and cleanup
    "find_links", "remove_link", "find_netns", "remove_netns", "find_firewalls", "remove_firewall",
    "firewall", "links", "netns", "rtnl", "readback",
]


# --- running code inside a namespace ---------------------------------------------------------------

def _enter_and_run(fd: int, fn, args, kwargs):
    syscalls.setns(fd, CloneFlags.CLONE_NEWNET)
    os.close(fd)
    return fn(*args, **kwargs)


def run_in(name, fn, *args, timeout: float | None = 30.0, **kwargs):
    """Run ``fn(*args, **kwargs)`` inside the namespace ``name``, in a forked child (it joins with
    setns; this process stays where it is). Returns fn's value (it must pickle)."""
    from . import netns
    fd = netns.open_ns(name)
    try:
        return run_in_child(_enter_and_run, fd, fn, args, kwargs, keep_fds=(fd,), timeout=timeout)
    finally:
        os.close(fd)


def _ping(address: str, count: int, wait: float) -> tuple[bool, str]:
    result = subprocess.run(["ping", "-n", "-c", str(count), "-W", str(wait), address],
                            capture_output=True, text=True)
    return result.returncode == 0, result.stdout + result.stderr


def ping(name, address: str, count: int = 1, wait: float = 1.0) -> tuple[bool, str]:
    """`ping -c COUNT ADDRESS` from inside the namespace ``name`` (None: from this host).
    Returns (answered, ping's output). Only to addresses of namespaces the lab made."""
    import ipaddress
    try:
        address = str(ipaddress.ip_address(address))
    except ValueError:
        raise Refused(f"{address!r} is not an IP address") from None
    if name is None:
        return _ping(address, count, wait)
    return run_in(name, _ping, address, count, wait, timeout=count * wait + 10)


# --- census and cleanup (marks.KINDS) --------------------------------------------------------------

def find_links(scan: marks.Scan) -> list[marks.Obj]:
    """Network interfaces of this host named lh-*."""
    try:
        found = sorted(os.listdir(scan.sys / "class" / "net"))
    except OSError:
        return []
    return [marks.Obj("link", n) for n in found if n.startswith(marks.PREFIX)]


def remove_link(obj: marks.Obj, ledger) -> None:
    """Delete one host interface of ours (idempotent: gone already is fine)."""
    _require_mark(obj.name)
    from . import links
    links.delete(obj.name, ledger)


def find_netns(scan: marks.Scan) -> list[marks.Obj]:
    """Named network namespaces lh-* (files under /run/netns)."""
    try:
        found = sorted(os.listdir(scan.netns_dir))
    except OSError:
        return []
    return [marks.Obj("netns", n) for n in found if n.startswith(marks.PREFIX)]


def remove_netns(obj: marks.Obj, ledger) -> None:
    """Remove one named network namespace of ours: unmount its nsfs bind mount, then the file.
    The namespace itself is freed by the kernel once no process, socket or mount holds it."""
    _require_mark(obj.name)
    from . import netns
    netns.remove(obj.name, ledger)


def find_firewalls(scan: marks.Scan) -> list[marks.Obj]:
    """The lab's nftables tables (inet lh-*). The kernel keeps them in no file, so only a census
    of this machine itself lists them (not one of a fake tree)."""
    if not scan.live:
        return []
    from . import firewall
    try:
        found = firewall.tables()
    except LabError as exc:                  # not root, say: the census goes on, and says so
        scan.problems.append(f"the lab's nftables tables cannot be listed: {str(exc).splitlines()[-1]}")
        return []
    return [marks.Obj("firewall", t, "nftables table inet") for t in found]


def remove_firewall(obj: marks.Obj, ledger) -> None:
    _require_mark(obj.name)
    from . import firewall
    firewall.remove(obj.name, ledger)


def _require_mark(name: str) -> None:
    if not name.startswith(marks.PREFIX) or "/" in name:
        raise Refused(f"refusing to remove {name!r}: labhelper removes only its own ({marks.PREFIX}*)")



"""Network namespaces and links: each network namespace has its own interfaces, addresses,
routes and firewall; a veth pair is a cable between two of them.

Ours carry the ``lh-`` prefix (marks.PREFIX): named network namespaces (bind mounts of nsfs files
under /run/netns, as `ip netns` and pyroute2 make them) and links on this host. (Chapter 04 adds
making them with pyroute2: namespaces, veth pairs, a bridge, addresses and routes.)

Here: their census and removal, as lab objects of kinds "link" and "netns" (marks.KINDS).
Links go before namespaces: deleting one end of a veth pair deletes the other end too, wherever
it is, and a namespace disappears only when nothing holds it any more.
"""
from __future__ import annotations

import errno
import os

from . import marks
from .errors import Refused
from .mounts import detach

__all__ = ["find_links", "remove_link", "find_netns", "remove_netns"]


def find_links(scan: marks.Scan) -> list[marks.Obj]:
    """Network interfaces of this host named lh-*."""
    try:
        names = sorted(os.listdir(scan.sys / "class" / "net"))
    except OSError:
        return []
    return [marks.Obj("link", n) for n in names if n.startswith(marks.PREFIX)]


def remove_link(obj: marks.Obj, ledger) -> None:
    """Delete one link of ours (idempotent: a link already gone is fine)."""
    _require_mark(obj.name)
    with ledger.removing("link", obj.name):
        from pyroute2 import IPRoute  # imported here: pyroute2 is heavy, and only this needs it
        from pyroute2.netlink.exceptions import NetlinkError
        with IPRoute() as ipr:
            try:
                idx = ipr.link_lookup(ifname=obj.name)
                if idx:
                    ipr.link("del", index=idx[0])
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:  # deleting one end of a veth pair removes the other too
                    raise


def find_netns(scan: marks.Scan) -> list[marks.Obj]:
    """Named network namespaces lh-* (files under /run/netns)."""
    try:
        names = sorted(os.listdir(scan.netns_dir))
    except OSError:
        return []
    return [marks.Obj("netns", n) for n in names if n.startswith(marks.PREFIX)]


def remove_netns(obj: marks.Obj, ledger) -> None:
    """Remove one named network namespace of ours: unmount its nsfs bind mount, then the file.
    The namespace itself is freed by the kernel once no process and no mount holds it."""
    _require_mark(obj.name)
    path = os.path.join(marks.NETNS_DIR, obj.name)
    with ledger.removing("netns", obj.name):
        detach(path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _require_mark(name: str) -> None:
    if not name.startswith(marks.PREFIX) or "/" in name:
        raise Refused(f"refusing to remove {name!r}: labhelper removes only its own ({marks.PREFIX}*)")

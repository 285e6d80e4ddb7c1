"""The lab's network as the kernel has it now: namespaces, their interfaces, the cables between
them and the bridges, read back from the kernel (never from what labhelper meant to build).

A veth end knows its other end only as (ifindex, nsid): the other end's interface number, in a
namespace that *this* namespace calls by a number of its own (IFLA_LINK_NETNSID). nsids are
local: namespace A may call B "0" while C calls B "1". So to join the ends, each namespace is
asked (RTM_GETNSID) what number it gives each other namespace it can see.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .. import marks
from . import netns, rtnl
from .links import Link, Route, read_links, read_routes
from .rtnl import ACK

__all__ = ["Space", "Cable", "Topology", "topology", "HOST"]

HOST = "host"


@dataclass(frozen=True)
class Space:
    """A network namespace: "host" (this machine's), or a lab one by its full name."""
    name: str
    links: tuple[Link, ...]
    routes: tuple[Route, ...]

    def link(self, name: str) -> Link | None:
        return next((x for x in self.links if x.name == name), None)


@dataclass(frozen=True)
class Cable:
    """A veth pair: one end in one space, the other in another (or the same)."""
    a: tuple[str, str]        # (space, interface)
    b: tuple[str, str]


@dataclass
class Topology:
    spaces: list[Space]
    cables: list[Cable] = field(default_factory=list)

    def space(self, name: str) -> Space:
        for s in self.spaces:
            if s.name in (name, marks.PREFIX + name):
                return s
        raise KeyError(name)

    def ports(self) -> list[tuple[str, str, str]]:
        """(space, port, bridge): each interface enslaved to a bridge."""
        out = []
        for s in self.spaces:
            by_index = {x.index: x.name for x in s.links}
            out += [(s.name, x.name, by_index.get(x.master, "?")) for x in s.links if x.master]
        return out

    def __repr__(self) -> str:
        lines = []
        for s in self.spaces:
            lines.append(f"{s.name}:")
            lines += [f"  {x!r}" for x in s.links]
        for c in self.cables:
            lines.append(f"cable {c.a[0]}:{c.a[1]} <-> {c.b[0]}:{c.b[1]}")
        return "\n".join(lines)


def _nsid(r: rtnl.Rtnl, fd: int) -> int | None:
    got = r.request("RTM_GETNSID", rtnl.nsidmsg, rtnl.RTM_GETNSID, ACK, {}, [("NETNSA_FD", fd)])
    nsid = got[0].get_attr("NETNSA_NSID") if got else None
    return None if nsid is None or nsid >= 2 ** 31 else nsid     # -1 (as u32): none assigned


def topology(names=None) -> Topology:
    """Read the lab's network: every lab namespace (or those of ``names``) and, on the host, the
    lab's own interfaces (lh-*) only: the host's other interfaces are not the lab's business."""
    chosen = netns.names() if names is None else [netns.full_name(n) for n in names]
    fds = {HOST: os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)}
    conns = {HOST: rtnl.Rtnl.here()}
    try:
        for name in chosen:
            try:
                fds[name] = netns.open_ns(name)
                conns[name] = netns.rtnl_in(name)
            except (OSError, ValueError):     # removed meanwhile (Refused is a ValueError)
                fd = fds.pop(name, None)
                if fd is not None:
                    os.close(fd)              # an open fd would keep it alive
        all_links = {s: read_links(r) for s, r in conns.items()}
        spaces = []
        for s, r in conns.items():
            found = all_links[s]
            if s == HOST:
                found = [x for x in found if x.name.startswith(marks.PREFIX)]
            spaces.append(Space(s, tuple(found), tuple(read_routes(r, {x.index: x.name for x in all_links[s]}))))
        # nsid tables: in space s, which number names space t
        nsids = {s: {} for s in conns}
        for s, r in conns.items():
            for t, fd in fds.items():
                if t != s:
                    try:
                        n = _nsid(r, fd)
                    except OSError:
                        n = None
                    if n is not None:
                        nsids[s][n] = t
        cables, seen = [], set()
        for s in spaces:
            for x in s.links:
                if x.kind != "veth" or x.peer is None:
                    continue
                other = s.name if x.peer_nsid is None else nsids[s.name].get(x.peer_nsid)
                if other is None:
                    continue                  # the other end is in a namespace outside the lab
                peer = next((y for y in all_links[other] if y.index == x.peer), None)
                if peer is None:
                    continue
                key = frozenset({(s.name, x.name), (other, peer.name)})
                if key not in seen:
                    seen.add(key)
                    cables.append(Cable((s.name, x.name), (other, peer.name)))
        return Topology(spaces, cables)
    finally:
        for r in conns.values():
            r.close()
        for fd in fds.values():
            os.close(fd)

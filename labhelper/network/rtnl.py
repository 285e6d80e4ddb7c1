"""rtnetlink: how a program asks the kernel for links, addresses and routes.

`ip link`, `ip addr` and `ip route` do not read files: they send messages on a netlink socket
(socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE)) and read the kernel's answers. Each message is a
header (type such as RTM_NEWLINK, flags, a sequence number) and attributes (IFLA_IFNAME = "eth0",
...). pyroute2 knows the layout of every message; this module uses it for exactly that, encoding
and decoding, and sends and receives on a plain socket itself, one request at a time. (pyroute2's
own IPRoute starts an asyncio loop per socket: 0.8 ms to open one, too slow to open a socket per
namespace per step.)

A netlink socket belongs to the network namespace it was *created* in, for its whole life: a
socket made inside a namespace keeps talking to that namespace's stack whichever process uses it
afterwards. labhelper.network relies on this: its helper process makes sockets inside lab
namespaces and hands them to the notebook, which never enters a namespace itself.

Every failed request is translated here, at one boundary, into a SyscallError that names the
request, what it asked for, the errno and the fix (errors.py keeps the fixes, by request and errno).
"""
from __future__ import annotations

import socket
import threading

from pyroute2.netlink import (NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_DONE,
                              NLMSG_ERROR)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (RTM_DELLINK, RTM_GETADDR, RTM_GETLINK, RTM_GETNSID, RTM_GETROUTE,
                                   RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.nsidmsg import nsidmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from .. import syscalls

__all__ = ["Rtnl", "NetlinkError", "NEW", "GET", "DUMP", "ACK", "RTM_NEWLINK", "RTM_DELLINK", "RTM_GETLINK",
           "RTM_NEWADDR", "RTM_GETADDR", "RTM_NEWROUTE", "RTM_GETROUTE", "RTM_GETNSID", "ifinfmsg", "ifaddrmsg",
           "rtmsg", "nsidmsg", "IFF_UP", "NETLINK_ROUTE"]

NETLINK_ROUTE = 0
IFF_UP = 0x1                              # include/uapi/linux/if.h

ACK = NLM_F_REQUEST | NLM_F_ACK           # do it, and answer with an error code (0: done)
NEW = ACK | NLM_F_CREATE | NLM_F_EXCL     # create; EEXIST if it exists (never change an existing one)
GET = ACK                                 # one object, by its key
DUMP = NLM_F_REQUEST | NLM_F_DUMP         # all of them, in parts, then NLMSG_DONE


class Rtnl:
    """One rtnetlink socket, in the network namespace where it was made; ``where`` names that
    namespace in error messages. Requests are serialized (a lock): one socket, one conversation."""

    def __init__(self, sock: socket.socket, where: str):
        self.sock = sock
        self.where = where
        self._seq = 0
        self._lock = threading.Lock()
        self._marshal = MarshalRtnl()

    @classmethod
    def here(cls, where: str = "host") -> "Rtnl":
        """A socket in the caller's own network namespace."""
        return cls(new_socket(), where)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, what: str, msg_class, msg_type: int, flags: int, fields: dict | None = None,
                attrs: list | None = None, shown: dict | None = None) -> list:
        """Send one request; return the kernel's answers (decoded messages; empty for an ack).

        ``what`` is the request's name for errors ("RTM_NEWLINK"); ``shown`` what it asked for,
        as the learner named it."""
        msg = msg_class()
        for key, value in (fields or {}).items():
            msg[key] = value
        msg["attrs"] = list(attrs or [])
        with self._lock:
            self._seq += 1
            seq = self._seq
            msg["header"]["type"] = msg_type
            msg["header"]["flags"] = flags
            msg["header"]["sequence_number"] = seq
            msg.encode()
            try:
                self.sock.send(msg.data)
                return self._answers(seq)
            except NetlinkError as exc:
                # The hint, by (request, errno), is in errors.py with every other one.
                raise syscalls.error(f"netlink {what}", {"in": self.where, **(shown or {})}, exc.code) from None

    def _answers(self, seq: int) -> list:
        found = []
        while True:
            data = self.sock.recv(1 << 16)
            for answer in self._marshal.parse(data):
                header = answer["header"]
                if header["sequence_number"] != seq:
                    continue          # a late answer to an earlier request (one cut short): not ours
                if header["type"] == NLMSG_ERROR:
                    if header.get("error") is not None:
                        raise header["error"]
                    return found      # error 0: the acknowledgement, the end of the answer
                if header["type"] == NLMSG_DONE:
                    return found      # the end of a dump
                found.append(answer)


def new_socket() -> socket.socket:
    """An rtnetlink socket in the calling process's network namespace."""
    return prepare(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE))


def prepare(sock: socket.socket) -> socket.socket:
    """Bind a new rtnetlink socket (port 0: the kernel picks one), with room for large dumps."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, 0))
    return sock

"""The two rtnetlink dumps the agent needs, encoded and parsed with struct.

Links (name, kind, the VXLAN/Geneve port, byte counters) for node_agent/tunnels.py and
node_agent/datapath.py; interface addresses for node_agent/localaddrs.py. pyroute2's
`iproute` did this before, but importing it costs ~5.5 MiB of RSS (asyncio, multiprocessing,
unittest.mock, ...) in a process whose limit is 128 MiB, for two requests a minute.

In the agent's own namespace this is a plain socket; `netns` (tests, tools) gets the socket
from pyroute2.netns, as the conntrack collector does.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import struct
from dataclasses import dataclass

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_GETLINK, RTM_NEWADDR, RTM_GETADDR = 16, 18, 20, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFLA_IFNAME, IFLA_STATS, IFLA_LINKINFO, IFLA_STATS64 = 3, 7, 18, 23
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN_PORT, IFLA_GENEVE_PORT = 15, 5      # both __be16
IFA_ADDRESS, IFA_LOCAL = 1, 2
_HDR = struct.Struct("=IHHII")                 # nlmsghdr
_IFINFO = struct.Struct("=BxHiII")             # ifinfomsg
_IFADDR = struct.Struct("=BBBBI")              # ifaddrmsg
_PORT_ATTR = {"vxlan": IFLA_VXLAN_PORT, "geneve": IFLA_GENEVE_PORT}


class RtnlError(OSError):
    """The kernel refused a dump or did not answer."""


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None          # IFLA_INFO_KIND: "veth", "vxlan", "geneve", "ipip", ... (None: none)
    port: int | None          # VXLAN / Geneve UDP port (host order), if the device says
    rx_bytes: int
    tx_bytes: int


def attrs(buf: bytes, off: int, end: int):
    """(type, payload) of the netlink attributes in buf[off:end]; stops at a malformed one."""
    while off + 4 <= end:
        ln, typ = struct.unpack_from("=HH", buf, off)
        if ln < 4 or off + ln > end:
            return
        yield typ & 0x3FFF, buf[off + 4: off + ln]     # without NLA_F_NESTED / NET_BYTEORDER
        off += (ln + 3) & ~3


def _socket(netns: str | None) -> socket.socket:
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    from pyroute2.netns import create_socket

    return create_socket(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)


def dump(msg_type: int, body: bytes, netns: str | None = None, timeout: float = 5.0):
    """Yield (message type, buffer, payload offset, message end) of every reply to one dump."""
    sock = _socket(netns)
    try:
        sock.bind((0, 0))
        seq = 1
        sock.send(_HDR.pack(_HDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        while True:
            if not select.select([sock], [], [], timeout)[0]:
                raise RtnlError(f"rtnetlink dump {msg_type} timed out")
            buf = sock.recv(1 << 18)
            off = 0
            while off + _HDR.size <= len(buf):
                ln, typ, _flags, rseq, _pid = _HDR.unpack_from(buf, off)
                if ln < _HDR.size or off + ln > len(buf):
                    raise RtnlError("truncated rtnetlink message")
                if rseq == seq:
                    if typ == NLMSG_DONE:
                        return
                    if typ == NLMSG_ERROR:
                        err = struct.unpack_from("=i", buf, off + _HDR.size)[0]
                        if err:
                            raise RtnlError(-err, f"rtnetlink dump {msg_type}: {os.strerror(-err)} ({errno.errorcode.get(-err, -err)})")
                        return
                    yield typ, buf, off + _HDR.size, off + ln
                off += (ln + 3) & ~3
    finally:
        sock.close()


def links(netns: str | None = None) -> list[Link]:
    """Every network device of this host (or `netns`)."""
    out = []
    for typ, buf, off, end in dump(RTM_GETLINK, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0), netns):
        if typ != RTM_NEWLINK or off + _IFINFO.size > end:
            continue
        index = _IFINFO.unpack_from(buf, off)[2]
        name, kind, port, stats64, stats = "", None, None, None, (0, 0)
        for a, val in attrs(buf, off + _IFINFO.size, end):
            if a == IFLA_IFNAME:
                name = val.split(b"\0", 1)[0].decode(errors="replace")
            elif a == IFLA_STATS64 and len(val) >= 32:
                stats64 = struct.unpack_from("=QQ", val, 16)    # rx_packets, tx_packets, rx_bytes, tx_bytes
            elif a == IFLA_STATS and len(val) >= 16:
                stats = struct.unpack_from("=II", val, 8)
            elif a == IFLA_LINKINFO:
                data = None
                for b, v in attrs(val, 0, len(val)):
                    if b == IFLA_INFO_KIND:
                        kind = v.split(b"\0", 1)[0].decode(errors="replace")
                    elif b == IFLA_INFO_DATA:
                        data = v
                if data is not None and kind in _PORT_ATTR:
                    for b, v in attrs(data, 0, len(data)):
                        if b == _PORT_ATTR[kind] and len(v) >= 2:
                            port = struct.unpack_from("!H", v)[0]
        rx, tx = stats64 or stats
        out.append(Link(index, name, kind, port, rx, tx))
    return out


def addresses(netns: str | None = None) -> set[str]:
    """Every IPv4/IPv6 address on this host's (or `netns`'s) interfaces, canonical strings.
    IFA_LOCAL wins over IFA_ADDRESS: on point-to-point links IFA_ADDRESS is the peer."""
    out = set()
    for typ, buf, off, end in dump(RTM_GETADDR, _IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, 0), netns):
        if typ != RTM_NEWADDR or off + _IFADDR.size > end:
            continue
        family = buf[off]
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        found = {}
        for a, val in attrs(buf, off + _IFADDR.size, end):
            if a in (IFA_ADDRESS, IFA_LOCAL):
                found[a] = val
        raw = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
        if raw and len(raw) == (4 if family == socket.AF_INET else 16):
            out.add(socket.inet_ntop(family, raw))
    return out

"""The node's own overlay and tunnel devices, read over rtnetlink (not a hard-coded port list).

`detect(netns)` lists the links and keeps the encapsulating ones:

| kind | what is excluded (node_agent/ctfilter.py) |
| --- | --- |
| `vxlan` | UDP to/from its `IFLA_VXLAN_PORT` (Flannel 8472, Calico/Cilium/IANA 4789, ...) |
| `geneve` | UDP to/from its `IFLA_GENEVE_PORT` (6081: OVN-Kubernetes, Antrea, Cilium) |
| `wireguard` | UDP to/from its listen port (generic netlink; 51820 if it cannot be read) |
| `ipip`, `sit`, `gre`, `gretap`, `ip6tnl`, `ip6gre`, `ip6gretap`, `erspan` | IP protocol 4 / 41 / 47 |

A device's traffic counts as encapsulation only with a host address on one side (see
ctfilter.TunnelFilter): a pod that speaks UDP 4789 or GRE itself keeps its flows.
`TunnelWatch` re-reads the devices at most every `ttl` seconds (CNIs create them late).
"""
from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field

ENCAP_PROTOS = {"ipip": 4, "sit": 41, "ip6tnl": 41, "gre": 47, "gretap": 47, "ip6gre": 47,
                "ip6gretap": 47, "erspan": 47, "ip6erspan": 47}
DEFAULT_PORTS = {"vxlan": 8472, "geneve": 6081, "wireguard": 51820}   # the kernels' defaults


@dataclass(frozen=True)
class Tunnels:
    udp_ports: frozenset[int] = frozenset()
    encap_protos: frozenset[int] = frozenset()
    devices: tuple[tuple[str, str, int], ...] = field(default=())   # (name, kind, port or proto)

    def __bool__(self) -> bool:
        return bool(self.udp_ports or self.encap_protos)


def _genl(sock, family: int, cmd: int, attrs: bytes, flags: int = 0) -> list[bytes]:
    """One generic-netlink request; the attribute payloads (after genlmsghdr) of the replies."""
    msg = struct.pack("=BBH", cmd, 1, 0) + attrs
    sock.send(struct.pack("=IHHII", 16 + len(msg), family, 1 | flags, 1, 0) + msg)   # NLM_F_REQUEST
    out = []
    while True:
        data = sock.recv(1 << 16)
        off = 0
        while off + 16 <= len(data):
            ln, typ = struct.unpack_from("=IH", data, off)
            if ln < 16:
                return out
            if typ == 3:                                  # NLMSG_DONE
                return out
            if typ == 2:                                  # NLMSG_ERROR (0 = ack)
                if struct.unpack_from("=i", data, off + 16)[0]:
                    raise OSError("generic netlink error")
                return out
            out.append(data[off + 20: off + ln])
            off += (ln + 3) & ~3
        if not flags:
            return out


def _nla(payload: bytes):
    from node_agent.netlink.rtnl import attrs

    return attrs(payload, 0, len(payload))


def _wireguard_port(sock, family: int, ifname: str) -> int | None:
    attr = ifname.encode() + b"\0"
    req = struct.pack("=HH", 4 + len(attr), 2) + attr + b"\0" * (-len(attr) % 4)   # WGDEVICE_A_IFNAME
    for payload in _genl(sock, family, 0, req, 0x300):      # WG_CMD_GET_DEVICE, NLM_F_DUMP
        for typ, val in _nla(payload):
            if typ == 6 and len(val) >= 2:                  # WGDEVICE_A_LISTEN_PORT (u16)
                return struct.unpack_from("=H", val)[0]
    return None


def _wireguard_ports(names: list[str]) -> dict[str, int]:
    """Listen port per WireGuard device over generic netlink (a raw request: pyroute2's
    WireGuard client pulls asyncio into the agent). {} when it cannot be read."""
    import socket

    out: dict[str, int] = {}
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)   # NETLINK_GENERIC
    except OSError:
        return out
    try:
        sock.settimeout(2.0)
        sock.bind((0, 0))
        name = b"wireguard\0"
        req = struct.pack("=HH", 4 + len(name), 2) + name + b"\0" * (-len(name) % 4)   # CTRL_ATTR_FAMILY_NAME
        family = None
        for payload in _genl(sock, 0x10, 3, req):           # GENL_ID_CTRL, CTRL_CMD_GETFAMILY
            for typ, val in _nla(payload):
                if typ == 1 and len(val) >= 2:               # CTRL_ATTR_FAMILY_ID
                    family = struct.unpack_from("=H", val)[0]
        if family is None:
            return out
        for n in names:
            port = _wireguard_port(sock, family, n)
            if port:
                out[n] = port
    except OSError:
        pass
    finally:
        sock.close()
    return out


def detect(netns: str | None = None) -> Tunnels:
    from node_agent.netlink.rtnl import links

    ports: set[int] = set()
    protos: set[int] = set()
    devices = []
    wireguard: list[str] = []
    for link in links(netns):
        kind, name = link.kind, link.name
        if kind in ("vxlan", "geneve"):
            port = link.port or DEFAULT_PORTS[kind]
        elif kind == "wireguard":
            wireguard.append(name)
            continue
        elif kind in ENCAP_PROTOS:
            protos.add(ENCAP_PROTOS[kind])
            devices.append((name, kind, ENCAP_PROTOS[kind]))
            continue
        else:
            continue
        ports.add(int(port))
        devices.append((name, kind, int(port)))
    if wireguard:   # the listen port is not in rtnetlink: ask WireGuard's generic netlink family
        from node_agent.kernel import run_in_netns

        got = run_in_netns(netns, lambda: json.dumps(_wireguard_ports(wireguard)))
        known = json.loads(got) if isinstance(got, str) else got
        for n in wireguard:
            port = int(known.get(n) or DEFAULT_PORTS["wireguard"])
            ports.add(port)
            devices.append((n, "wireguard", port))
    return Tunnels(frozenset(ports), frozenset(protos), tuple(sorted(devices)))


class TunnelWatch:
    """detect() at most every `ttl` seconds; a failed read keeps the last answer."""

    def __init__(self, netns: str | None = None, ttl: float = 60.0):
        self.netns = netns
        self.ttl = ttl
        self._t = Tunnels()
        self._at = float("-inf")
        self.errors = 0

    def __call__(self) -> Tunnels:
        if time.monotonic() - self._at > self.ttl:
            self._at = time.monotonic()
            try:
                self._t = detect(self.netns)
            except OSError:
                self.errors += 1
        return self._t

"""Test topologies for the datapath tests (zones, overlays, bypassed conntrack), built from
network namespaces of our own: a "node" namespace routing between "pod" and "server"
namespaces, the way a CNI wires pods. Addresses exist only inside these namespaces."""
from __future__ import annotations

import socket
import threading
import uuid

from tests.netns import Netns, nft_counters, sh


def new_ns(prefix: str) -> Netns:
    ns = Netns(f"{prefix}-{uuid.uuid4().hex[:6]}")
    sh("ip", "netns", "add", ns.name)
    ns.run("ip", "link", "set", "lo", "up")
    return ns


def link(a: Netns, a_dev: str, a_addr: str | None, b: Netns, b_dev: str, b_addr: str | None) -> None:
    """A veth pair a_dev (in a) <-> b_dev (in b), with optional CIDR addresses, up."""
    sh("ip", "link", "add", a_dev, "netns", a.name, "type", "veth", "peer", "name", b_dev, "netns", b.name)
    for ns, dev, addr in ((a, a_dev, a_addr), (b, b_dev, b_addr)):
        if addr:
            ns.run("ip", "addr", "add", addr, "dev", dev)
        ns.run("ip", "link", "set", dev, "up")


def router(ns: Netns) -> None:
    for k in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
        ns.run("sysctl", "-qw", k)


def mac(ns: Netns, dev: str) -> str:
    return ns.run("cat", f"/sys/class/net/{dev}/address").stdout.strip()


def nft_counter(ns: Netns, table: str, name: str) -> tuple[int, int]:
    """(packets, bytes) of a named nft counter (tests/netns.py counting_table)."""
    got = nft_counters(ns, table)
    if name not in got:
        raise AssertionError(f"no counter {name} in table {table}")
    return got[name]


class Sink:
    """A TCP server in `ns` that reads everything and answers one byte per 10 received (so both
    directions carry data)."""

    def __init__(self, ns: Netns, addr: str, port: int):
        from pyroute2.netns import create_socket

        self.sock = create_socket(ns.name, socket.AF_INET, socket.SOCK_STREAM, 0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, port))
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _serve(c):
        got = sent = 0
        with c:
            while True:
                try:
                    data = c.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                got += len(data)
                n = got // 10 - sent     # one reply byte per 10 received, whatever the segmentation
                if n:
                    c.sendall(b"r" * n)
                    sent += n

    def close(self):
        self.sock.close()


def tcp_transfer(ns: Netns, addr: str, port: int, nbytes: int, chunk: int = 10000) -> None:
    """Connect from `ns`, send nbytes in chunks, read the replies, close."""
    from pyroute2.netns import create_socket

    s = create_socket(ns.name, socket.AF_INET, socket.SOCK_STREAM, 0)
    s.settimeout(10)
    s.connect((addr, port))
    sent = 0
    while sent < nbytes:
        n = min(chunk, nbytes - sent)
        s.sendall(b"x" * n)
        want = (sent + n) // 10 - sent // 10
        got = 0
        while got < want:
            d = s.recv(want - got)
            assert d
            got += len(d)
        sent += n
    s.close()

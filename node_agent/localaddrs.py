"""This host's own interface addresses (standalone mode's notion of "local").

In a cluster the run loop adds the node's pod IPs (PodIndex.local_ips()); without
Kubernetes, local means the addresses configured on this host's interfaces. Read over
rtnetlink (node_agent/netlink/rtnl.py), optionally inside another network namespace (tests).
"""
from __future__ import annotations

import time


def host_addresses(netns: str | None = None) -> set[str]:
    """Every IPv4/IPv6 address on this host's (or `netns`'s) interfaces, canonical strings."""
    from node_agent.netlink.rtnl import addresses

    return addresses(netns)


class LocalAddrs:
    """`is_local` for Accounter.cut: host addresses (refreshed at most every `ttl` seconds)
    plus any extra addresses (e.g. pod IPs) supplied by the caller."""

    def __init__(self, netns: str | None = None, ttl: float = 60.0, extra: set[str] | None = None):
        self.netns = netns
        self.ttl = ttl
        self.extra = set(extra or ())
        self._addrs: set[str] = set()
        self._at = float("-inf")
        self._packed: set[bytes] = set()
        self._packed_at = None

    def _refresh(self) -> None:
        if time.monotonic() - self._at > self.ttl:
            self._addrs = host_addresses(self.netns)
            self._at = time.monotonic()

    def packed(self) -> set[bytes]:
        """The host addresses as packed bytes (ConnSample's form), same refresh."""
        if time.monotonic() - self._at > self.ttl or self._packed_at != self._at:
            import socket

            self._refresh()
            self._packed = {socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a)
                            for a in self._addrs}
            self._packed_at = self._at
        return self._packed

    def addresses(self) -> set[str]:
        self._refresh()
        return self._addrs | self.extra

    def __call__(self, ip: str) -> bool:
        if ip in self.extra:
            return True
        self._refresh()
        return ip in self._addrs

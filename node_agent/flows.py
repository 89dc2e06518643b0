"""What a collector hands the accounter: one connection's cumulative kernel counters.

A `ConnSample` is deliberately a plain NamedTuple of ints and packed-bytes addresses: the
dump loop builds one per connection and nothing else (no per-attribute objects), and the
accounter turns cumulative counters into per-window deltas (node_agent/accounter.py).
"""
from __future__ import annotations

from typing import NamedTuple


class ConnSample(NamedTuple):
    ct_id: int           # kernel connection id (conntrack CTA_ID; eBPF: a socket cookie)
    family: int          # 4 or 6
    proto: int           # IANA protocol number (6 tcp, 17 udp, 1 icmp, 58 icmpv6, ...)
    src: bytes           # originator address, packed (4 or 16 bytes)
    dst: bytes           # what the originator dialed (pre-NAT, e.g. a ClusterIP)
    sport: int           # originator port (ICMP: echo id)
    dport: int           # dialed port (pre-NAT; 0 for protocols without ports)
    reply_src: bytes     # the real peer after NAT (source of the reply tuple)
    reply_sport: int     # the real peer's port after NAT
    orig_bytes: int      # cumulative, originator -> peer
    orig_packets: int
    reply_bytes: int     # cumulative, peer -> originator
    reply_packets: int
    ended: bool          # True: the connection is gone and these are its final counters
    # Additive fields (defaults keep older call sites valid):
    zone: int = 0        # conntrack zone (CTA_ZONE; 0 = default zone, also when the kernel omits it)
    counters: bool = True  # False: the entry carries no CTA_COUNTERS (accounting was off when it was created)

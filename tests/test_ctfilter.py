"""The conntrack entry filter on hand-made samples: zone duplicates stay counted once over the
entries' lifetimes, tunnel encapsulation (UDP ports, IPIP/GRE) is left out with its bytes
counted, counter-less entries are held back."""
from __future__ import annotations

import socket

from node_agent.ctfilter import EntryFilter
from node_agent.flows import ConnSample
from node_agent.tunnels import Tunnels


def ip(s: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in s else socket.AF_INET, s)


def conn(ct_id, zone=0, src="10.0.1.2", dst="10.0.2.2", proto=6, sport=40000, dport=80, rsrc=None,
         ob=100, rb=50, ended=False, counters=True):
    return ConnSample(ct_id, 4, proto, ip(src), ip(dst), sport, dport, ip(rsrc or dst), dport, ob, 1, rb, 1,
                      ended, zone, counters)


def dump(f: EntryFilter, samples) -> list:
    f.begin_dump()
    out = f.batch(list(samples), special=any(s.zone or not s.counters for s in samples))
    return out + f.end_dump()


def ids(samples) -> list[int]:
    return sorted(s.ct_id for s in samples)


def test_zoned_siblings_counted_once_for_their_whole_life():
    f = EntryFilter()
    # one connection in zones 5 and 9, the zone-5 entry carries the pre-NAT (ClusterIP) view
    a = conn(1, zone=5, dst="10.96.0.10", rsrc="10.0.2.2")
    b = conn(2, zone=9, dst="10.0.2.2")
    assert ids(dump(f, [a, b])) == [1]
    assert f.stats()["zone_duplicates"] == 1
    assert ids(dump(f, [b, a])) == [1]                    # sticky, whatever the dump order
    # the chosen entry ends first: its DESTROY passes, the sibling never takes over
    assert ids(f.ended([a._replace(ended=True)], special=True)) == [1]
    assert dump(f, [b]) == []
    assert f.ended([b._replace(ended=True)], special=True) == []
    assert f.stats()["zone_duplicates_ended"] == 1


def test_zone0_entry_wins_over_zoned_ones():
    f = EntryFilter()
    host = conn(1)
    zoned = conn(2, zone=3)
    dump(f, [host])                                        # zones not seen yet
    assert ids(dump(f, [host, zoned])) == [1]
    assert ids(f.ended([host._replace(ended=True), zoned._replace(ended=True)], special=True)) == [1]


def test_short_connection_seen_only_in_destroy_events_counts_once():
    f = EntryFilter()
    a, b = conn(7, zone=1, ended=True), conn(8, zone=2, ended=True)
    assert ids(f.ended([a], special=True) + f.ended([b], special=True)) == [7]


def test_other_connections_with_zones_are_not_merged():
    f = EntryFilter()
    a, b = conn(1, zone=1, sport=40000), conn(2, zone=1, sport=40001)
    assert ids(dump(f, [a, b])) == [1, 2]


def test_counterless_entries_are_held_back_and_counted():
    f = EntryFilter()
    assert ids(dump(f, [conn(1, counters=False), conn(2)])) == [2]
    assert f.stats()["entries_without_counters"] == 1
    assert f.ended([conn(1, counters=False, ended=True)], special=True) == []
    assert f.stats()["ended_without_counters"] == 1


def test_tunnel_entries_excluded_with_their_byte_deltas():
    node = {ip("192.168.0.1")}
    t = Tunnels(frozenset({4789}), frozenset({47}))
    f = EntryFilter(lambda: t, lambda: node)
    outer = conn(10, src="192.168.0.1", dst="192.168.0.2", proto=17, sport=51000, dport=4789, ob=1000, rb=0)
    gre = conn(11, src="192.168.0.2", dst="192.168.0.1", proto=47, sport=0, dport=0, ob=300, rb=200)
    pod_gre = conn(12, src="10.0.1.2", dst="203.0.113.9", proto=47, sport=0, dport=0)   # a pod's own GRE
    pod = conn(13)
    assert ids(dump(f, [outer, gre, pod_gre, pod])) == [12, 13]     # baseline: nothing counted yet
    assert f.stats()["tunnel_excluded_bytes"] == 0 and f.stats()["tunnel_entries"] == 2
    assert ids(dump(f, [outer._replace(orig_bytes=5000), gre, pod_gre, pod])) == [12, 13]
    assert f.stats()["tunnel_excluded_bytes"] == 4000
    fresh = conn(14, src="192.168.0.2", dst="192.168.0.1", proto=17, sport=52000, dport=4789, ob=700, rb=0)
    assert f.ended([fresh._replace(ended=True), outer._replace(orig_bytes=5500, ended=True)], special=False) == []
    assert f.stats()["tunnel_excluded_bytes"] == 4000 + 700 + 500
    assert ids(dump(f, [gre, pod])) == [13]
    assert f.stats()["tunnel_entries"] == 1


def test_no_tunnels_means_no_scan():
    f = EntryFilter(lambda: Tunnels(), set)
    s = [conn(1, proto=17, dport=4789)]
    assert dump(f, s) == s

"""Conntrack zones and counter-less entries in the ctnetlink parser (hand-built messages in the
kernel's layout), the fast paths included; the privileged half builds real zoned entries."""
from __future__ import annotations

import socket
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node_agent.netlink.ctparse import CT_DELETE, CT_NEW, CtParser, ParseError, parse_entry
from tests.test_ctparse import counters, done, nla, tuple_attr

CTA_ZONE = 18


def kernel_message(*, ct_id=1, src="10.0.0.1", dst="10.0.0.2", proto=6, sport=1000, dport=80,
                   ob=100, op=2, rb=300, rp=3, zone=None, with_counters=True, mtype=CT_NEW,
                   family=socket.AF_INET) -> bytes:
    """Attributes in ctnetlink_fill_info's order: tuples, status, [zone], counters, ..., id."""
    attrs = (tuple_attr(1, src, dst, proto, sport, dport) + tuple_attr(2, dst, src, proto, dport, sport)
             + nla(3, struct.pack(">I", 0x18e)))
    if zone is not None:
        attrs += nla(CTA_ZONE, struct.pack(">H", zone))
    if with_counters:
        attrs += counters(9, op, ob) + counters(10, rp, rb)
    attrs += nla(7, struct.pack(">I", 120)) + nla(12, struct.pack(">I", ct_id)) + nla(11, struct.pack(">I", 1))
    body = struct.pack("=BBH", family, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), mtype, 0x2, 7, 0) + body


def feed(data: bytes, parser: CtParser | None = None) -> list:
    out: list = []
    (parser or CtParser()).feed(data, out)
    return out


def test_default_zone_is_zero_and_counters_present():
    (s,) = feed(kernel_message() + done())
    assert s.zone == 0 and s.counters and (s.orig_bytes, s.reply_bytes) == (100, 300)


def test_zone_attribute_is_read_in_every_path():
    msgs = [kernel_message(ct_id=i, sport=2000 + i, zone=7, ob=i) for i in range(6)]
    p = CtParser()
    first = feed(b"".join(msgs[:3]), p)          # generic walk, then learned layout
    again = feed(b"".join(msgs[3:]) + done(), p)  # learned one-struct layout only
    assert [s.zone for s in first + again] == [7] * 6
    assert [s.orig_bytes for s in first + again] == list(range(6))
    assert first + again == [parse_entry(m, 20, len(m), False) for m in msgs]
    assert any(lay[6] for lays in p.layouts.values() for lay in lays)  # a zoned layout was learned


def test_zoned_and_default_zone_entries_mixed_in_one_run():
    msgs = []
    for i in range(8):
        msgs.append(kernel_message(ct_id=i, sport=3000 + i, zone=(i % 3) or None,
                                   mtype=CT_DELETE if i == 7 else CT_NEW))
    out = feed(b"".join(msgs + msgs) + done())
    assert [s.zone for s in out] == [(i % 3) for i in range(8)] * 2
    assert [s.ended for s in out][-1] and not any(s.ended for s in out[:7])


def test_entry_without_counters_is_flagged_not_a_zero_byte_flow():
    msgs = [kernel_message(ct_id=i, with_counters=False) for i in range(3)]
    msgs.append(kernel_message(ct_id=9, ob=5))
    out = feed(b"".join(msgs) + done())
    assert [s.counters for s in out] == [False, False, False, True]
    assert out[3].orig_bytes == 5


def test_ipv6_zone():
    (s,) = feed(kernel_message(src="fd00::1", dst="fd00::2", family=socket.AF_INET6, zone=65535) + done())
    assert s.family == 6 and s.zone == 65535


ZONED_VALID = [kernel_message(zone=3), kernel_message(with_counters=False, zone=2),
               b"".join(kernel_message(ct_id=i, zone=1) for i in range(3)) + done()]
TRAINED = CtParser()
for _m in ZONED_VALID:
    TRAINED.feed(_m, [])


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ZONED_VALID), st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=6),
       st.integers(0, 620))
def test_fuzz_mutated_zoned_messages(msg, flips, cut):
    data = bytearray(msg)
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    for parser in (CtParser(), TRAINED):
        for chunk in (bytes(data[:cut]), bytes(data)):
            out: list = []
            try:
                parser.feed(chunk, out)
            except (ParseError, OSError):
                pass
            for s in out:
                assert 0 <= s.zone <= 0xFFFF and isinstance(s.counters, bool) and len(s) == 16


# ----------------------------------------------------------------- real zones (privileged)
import datetime as dt  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from node_agent.accounter import Accounter  # noqa: E402
from node_agent.collectors.conntrack import ConntrackCollector  # noqa: E402
from tests.netns import counting_table  # noqa: E402
from tests.topo import Sink, link, mac, new_ns, nft_counter, router, tcp_transfer  # noqa: E402

POD, SRV = "10.88.1.2", "10.88.2.2"
T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def zoned_node(zone_b: int):
    """pod P -> node N -> server S, where N sends every packet through a veth pair looped back
    into itself (lA -> lB), so each packet passes conntrack twice, in zone 1 on the pod side
    and in `zone_b` on the server side: two entries of one connection, as an OVS datapath
    keeps one per zone. Counters in N's forward chain count each direction once."""
    p, n, s = new_ns("dpz-p"), new_ns("dpz-n"), new_ns("dpz-s")
    try:
        link(p, "eth0", f"{POD}/24", n, "vp", "10.88.1.1/24")
        link(s, "eth0", f"{SRV}/24", n, "vs", "10.88.2.1/24")
        link(n, "la", None, n, "lb", None)
        p.run("ip", "route", "add", "default", "via", "10.88.1.1")
        s.run("ip", "route", "add", "default", "via", "10.88.2.1")
        router(n)
        for dev in ("vp", "vs", "la", "lb"):
            n.run("sysctl", "-qw", f"net.ipv4.conf.{dev}.rp_filter=0")
        # pod -> server: first out la (arrives on lb), reply: first out lb (arrives on la)
        n.run("ip", "rule", "add", "iif", "vp", "lookup", "100")
        n.run("ip", "route", "add", "10.88.2.0/24", "dev", "la", "table", "100")
        n.run("ip", "neigh", "replace", SRV, "lladdr", mac(n, "lb"), "dev", "la", "nud", "permanent")
        n.run("ip", "rule", "add", "iif", "vs", "lookup", "101")
        n.run("ip", "route", "add", "10.88.1.0/24", "dev", "lb", "table", "101")
        n.run("ip", "neigh", "replace", POD, "lladdr", mac(n, "la"), "dev", "lb", "nud", "permanent")
        zone_b_rule = f'iifname {{ "lb", "vs" }} ct zone set {zone_b}' if zone_b else ""
        n.nft(counting_table("dpz", {"forward": [
            (f'iifname "vp" ip saddr {POD} ip daddr {SRV}', "c_orig"),
            (f'oifname "vp" ip saddr {SRV} ip daddr {POD}', "c_reply")]}, extra=f"""
  chain raw {{ type filter hook prerouting priority -300;
    iifname {{ "vp", "la" }} ct zone set 1
    {zone_b_rule}
  }}"""))
        return p, n, s
    except Exception:
        for ns in (p, n, s):
            ns.delete()
        raise


def ct_entries(n) -> list[str]:
    return [ln for ln in n.run("conntrack", "-L", "-p", "tcp", "--dport", "8080", check=False).stdout.splitlines()
            if SRV in ln]


@pytest.mark.privileged
@pytest.mark.parametrize("zone_b", [2, 0], ids=["zones-1-and-2", "zones-1-and-0"])
def test_one_connection_in_two_zones_is_counted_once(zone_b):
    p, n, s = zoned_node(zone_b)
    sink = Sink(s, SRV, 8080)
    coll = ConntrackCollector(netns=n.name)
    try:
        coll.open()
        acc = Accounter()
        acc.poll(coll)                                  # baseline
        from pyroute2.netns import create_socket
        import socket as _s

        live = create_socket(p.name, _s.AF_INET, _s.SOCK_STREAM, 0)   # lives across polls
        live.settimeout(10)
        live.connect((SRV, 8080))
        live.sendall(b"x" * 5000)
        live.recv(500)
        time.sleep(0.2)
        entries = ct_entries(n)
        assert len(entries) == 2 and any("zone=1" in e for e in entries), entries   # really two entries
        acc.poll(coll)
        tcp_transfer(p, SRV, 8080, 200_000)            # a second connection, closed within the window
        live.sendall(b"x" * 7000)
        live.recv(700)
        time.sleep(0.3)
        acc.poll(coll)
        table = acc.cut(T0, T0 + dt.timedelta(seconds=60), "node-a", {POD}.__contains__)
        rows = table.to_pylist()
        _op, ob = nft_counter(n, "dpz", "c_orig")
        _rp, rb = nft_counter(n, "dpz", "c_reply")
        assert len(rows) == 1, rows
        (r,) = rows
        assert (r["src_ip"], r["dst_ip"], r["dst_port"]) == (POD, SRV, 8080)
        assert r["tx_bytes"] == ob and r["rx_bytes"] == rb, (r, ob, rb)   # once, not twice
        assert r["connections"] == 2
        st = coll.stats()
        assert st["zone_duplicates"] == 2, st   # one held-back entry per connection (both still in the table)
        live.close()
    finally:
        coll.close()
        sink.close()
        for ns in (p, n, s):
            ns.delete()

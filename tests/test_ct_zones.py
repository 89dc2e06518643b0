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

"""DNS over TCP reassembly: segments -> whole messages, gaps and cuts counted, fuzzed."""
from __future__ import annotations

import struct

from dnslib import QTYPE, RR, A, DNSRecord
from hypothesis import HealthCheck, given, settings, strategies as st

from node_agent.dns.parser import parse_answers
from node_agent.dns.tcpstream import TcpReassembler

KEY = (4, b"\x0a" * 16, b"\x0b" * 16, 40000)


def message(n: int) -> bytes:
    r = DNSRecord.question("big.example", "A").reply()
    for i in range(n):
        r.add_answer(RR("big.example", QTYPE.A, rdata=A(f"192.0.2.{i % 250 + 1}"), ttl=60))
    return r.pack()


def framed(*msgs: bytes) -> bytes:
    return b"".join(struct.pack(">H", len(m)) + m for m in msgs)


def test_one_segment_with_two_messages():
    a, b = message(3), message(5)
    t = TcpReassembler()
    assert t.feed(KEY, 1000, framed(a, b), len(framed(a, b))) == [a, b]
    assert t.stats["dns_tcp_messages"] == 2 and len(t) == 0


def test_message_spanning_segments_in_order():
    m = message(150)
    data = framed(m)
    t = TcpReassembler()
    out = []
    seq = 5000
    for i in range(0, len(data), 1000):
        seg = data[i:i + 1000]
        out += t.feed(KEY, seq, seg, len(seg))
        seq += len(seg)
    assert out == [m] and t.stats["dns_tcp_reassembled"] == 1
    assert len(parse_answers(out[0])) == 150


def test_next_message_starts_in_the_segment_that_ends_the_last():
    a, b = message(80), message(2)
    data = framed(a, b)
    t = TcpReassembler()
    assert t.feed(KEY, 1, data[:700], 700) == []
    assert t.feed(KEY, 701, data[700:], len(data) - 700) == [a, b]


def test_gap_drops_the_partial_message_and_counts_it():
    m = message(150)
    data = framed(m)
    t = TcpReassembler()
    assert t.feed(KEY, 1, data[:1000], 1000) == []
    assert t.feed(KEY, 3001, data[2000:3000], 1000) == []      # 1001..2000 missing
    assert t.stats["dns_tcp_gaps"] == 1


def test_copy_cut_in_the_kernel_parses_the_complete_part():
    m = message(300)                      # ~4.8 kB, more than the 4096 bytes the program copies
    data = framed(m)
    t = TcpReassembler()
    (part,) = t.feed(KEY, 1, data[:4096], len(data))
    assert t.stats["dns_tcp_truncated"] == 1
    assert 200 < len(parse_answers(part)) < 300


def test_streams_are_bounded():
    t = TcpReassembler(max_streams=4)
    data = framed(message(150))
    for port in range(10):
        t.feed((4, b"", b"", port), 1, data[:100], 100)
    assert len(t) == 4 and t.stats["dns_tcp_evicted"] == 6


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**32 - 1), st.binary(max_size=300),
                          st.integers(0, 70000)), max_size=12))
def test_fuzz_segments_never_raise(segs):
    t = TcpReassembler(max_streams=3)
    for k, seq, data, wire in segs:
        for m in t.feed((4, b"", b"", k), seq, data, max(wire, len(data))):
            assert isinstance(m, bytes) and len(m) <= 65535
            parse_answers(m)

"""DNS response parser: hand-built responses (dnslib) and fuzzing with hypothesis."""
from __future__ import annotations

import struct

from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, A, DNSRecord
from hypothesis import HealthCheck, given, settings, strategies as st

from node_agent.dns.parser import ParseStats, parse_answers, parse_response, read_name, DnsParseError

import pytest


def response(qname: str, qtype: str, *rrs: RR, rcode: int = RCODE.NOERROR) -> bytes:
    q = DNSRecord.question(qname, qtype)
    r = q.reply()
    r.header.rcode = rcode
    for rr in rrs:
        r.add_answer(rr)
    return r.pack()


def test_a_record():
    pkt = response("example.com", "A", RR("example.com", QTYPE.A, rdata=A("192.0.2.1"), ttl=300))
    assert parse_response(pkt) == [("example.com", "192.0.2.1", 300)]


def test_aaaa_record():
    pkt = response("v6.example.com", "AAAA", RR("v6.example.com", QTYPE.AAAA, rdata=AAAA("2001:db8::7"), ttl=60))
    assert parse_response(pkt) == [("v6.example.com", "2001:db8::7", 60)]


def test_cname_chain_maps_back_to_asked_name():
    pkt = response(
        "WWW.Shop.example", "A",
        RR("www.shop.example", QTYPE.CNAME, rdata=CNAME("shop.cdn.example"), ttl=30),
        RR("shop.cdn.example", QTYPE.CNAME, rdata=CNAME("edge7.cdn.example"), ttl=20),
        RR("edge7.cdn.example", QTYPE.A, rdata=A("198.51.100.7"), ttl=10),
        RR("edge7.cdn.example", QTYPE.A, rdata=A("198.51.100.8"), ttl=11),
    )
    assert parse_response(pkt) == [
        ("www.shop.example", "198.51.100.7", 10),
        ("www.shop.example", "198.51.100.8", 11),
    ]


def test_cname_chain_keeps_the_names_in_order():
    pkt = response(
        "www.shop.example", "A",
        RR("www.shop.example", QTYPE.CNAME, rdata=CNAME("shop.cdn.example"), ttl=30),
        RR("shop.cdn.example", QTYPE.CNAME, rdata=CNAME("edge7.cdn.example"), ttl=20),
        RR("edge7.cdn.example", QTYPE.A, rdata=A("198.51.100.7"), ttl=10),
        RR("edge7.cdn.example", QTYPE.AAAA, rdata=AAAA("2001:db8::7"), ttl=10),
    )
    chain = ("shop.cdn.example", "edge7.cdn.example")
    assert parse_answers(pkt) == [("www.shop.example", "198.51.100.7", 10, chain),
                                  ("www.shop.example", "2001:db8::7", 10, chain)]
    direct = response("a.example", "A", RR("a.example", QTYPE.A, rdata=A("192.0.2.1"), ttl=5))
    assert parse_answers(direct) == [("a.example", "192.0.2.1", 5, ())]


def test_cname_chain_in_any_record_order():
    pkt = response(
        "a.example", "A",
        RR("c.example", QTYPE.A, rdata=A("192.0.2.9"), ttl=3),
        RR("b.example", QTYPE.CNAME, rdata=CNAME("c.example"), ttl=3),
        RR("a.example", QTYPE.CNAME, rdata=CNAME("b.example"), ttl=3),
    )
    assert parse_answers(pkt) == [("a.example", "192.0.2.9", 3, ("b.example", "c.example"))]


def test_several_answers_mixed_families():
    pkt = response(
        "api.example", "ANY",
        RR("api.example", QTYPE.A, rdata=A("192.0.2.10"), ttl=5),
        RR("api.example", QTYPE.AAAA, rdata=AAAA("2001:db8::10"), ttl=6),
        RR("api.example", QTYPE.A, rdata=A("192.0.2.11"), ttl=7),
    )
    assert parse_response(pkt) == [
        ("api.example", "192.0.2.10", 5), ("api.example", "2001:db8::10", 6), ("api.example", "192.0.2.11", 7)]


def test_compression_pointers_are_followed():
    pkt = response("a.example", "A", RR("a.example", QTYPE.A, rdata=A("192.0.2.1"), ttl=1))
    # dnslib compresses the answer's owner name to a pointer at the question (offset 12)
    assert b"\xc0\x0c" in pkt
    assert parse_response(pkt) == [("a.example", "192.0.2.1", 1)]


def test_nxdomain_and_queries_give_nothing():
    stats = ParseStats()
    assert parse_response(response("nope.example", "A", rcode=RCODE.NXDOMAIN), stats) == []
    assert parse_response(DNSRecord.question("q.example").pack(), stats) == []
    assert stats.errors == 0 and stats.responses == 1


def test_pointer_loop_and_forward_pointer_rejected():
    hdr = struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0)
    loop = hdr + b"\xc0\x0c" + b"\x00\x01\x00\x01"          # question name points to itself
    stats = ParseStats()
    assert parse_response(loop, stats) == [] and stats.errors == 1
    with pytest.raises(DnsParseError):
        read_name(b"\x00" * 12 + b"\xc0\x20" + b"\x00" * 40, 12)   # forward pointer


def test_truncated_response_keeps_answers_before_the_cut():
    pkt = response(
        "t.example", "A",
        RR("t.example", QTYPE.A, rdata=A("192.0.2.1"), ttl=9),
        RR("t.example", QTYPE.A, rdata=A("192.0.2.2"), ttl=9),
    )
    stats = ParseStats()
    assert parse_response(pkt[:-2], stats) == [("t.example", "192.0.2.1", 9)]
    assert stats.errors == 1


def test_ttl_with_top_bit_is_zero():
    pkt = bytearray(response("x.example", "A", RR("x.example", QTYPE.A, rdata=A("192.0.2.3"), ttl=5)))
    pkt[-10:-6] = b"\x80\x00\x00\x01"   # TTL field of the only answer
    assert parse_response(bytes(pkt)) == [("x.example", "192.0.2.3", 0)]


# ------------------------------------------------------------------------------ fuzzing

FUZZ_CASES = {"random": 0, "mutated": 0}
SEEDS = [
    response("www.shop.example", "A",
             RR("www.shop.example", QTYPE.CNAME, rdata=CNAME("edge.cdn.example"), ttl=30),
             RR("edge.cdn.example", QTYPE.A, rdata=A("198.51.100.7"), ttl=10),
             RR("edge.cdn.example", QTYPE.AAAA, rdata=AAAA("2001:db8::1"), ttl=10)),
    response("a.example", "AAAA", RR("a.example", QTYPE.AAAA, rdata=AAAA("2001:db8::2"), ttl=3)),
]


def _check(data: bytes) -> None:
    stats = ParseStats()
    out = parse_answers(data, stats)
    assert isinstance(out, list)
    for domain, ip, ttl, chain in out:
        assert isinstance(domain, str) and isinstance(ip, str) and 0 <= ttl < 2**31
        assert isinstance(chain, tuple) and len(chain) <= 16 and all(isinstance(n, str) for n in chain)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_never_raise(data):
    FUZZ_CASES["random"] += 1
    _check(data)
    _check(b"\x00\x01\x81\x80" + data)   # a response header, so the body parser runs


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=8),
       st.integers(0, 600))
def test_fuzz_mutated_valid_packets_never_raise(seed, flips, cut):
    FUZZ_CASES["mutated"] += 1
    pkt = bytearray(seed)
    for pos, val in flips:
        if pos < len(pkt):
            pkt[pos] = val
    _check(bytes(pkt[:cut]))
    _check(bytes(pkt))


def test_fuzz_case_count_report():
    # Runs after the fuzz tests in file order; prints how many cases ran (pytest -s shows it).
    # When they ran (not deselected), each must have generated thousands of cases.
    print(f"\nDNS parser fuzz cases: {FUZZ_CASES}")
    for kind, n in FUZZ_CASES.items():
        assert n == 0 or n >= 1000, (kind, n)

"""The ctnetlink parser on hand-built messages, malformed input and fuzzed bytes."""
from __future__ import annotations

import errno
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node_agent.flows import ConnSample
from node_agent.netlink.ctparse import (
    CT_DELETE, CT_NEW, NLMSG_DONE, NLMSG_ERROR, CtParser, NetlinkError, ParseError, parse_datagram,
    parse_entry,
)

NESTED = 0x8000
NLM_F_MULTI = 0x2


def nla(t: int, payload: bytes, nested: bool = False) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), t | (NESTED if nested else 0)) + payload
    return raw + b"\0" * (-len(raw) % 4)


def ip(s: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in s else socket.AF_INET, s)


def tuple_attr(t, src, dst, proto, sport=0, dport=0, *, icmp_id=None, nested=True, zone=None):
    v6 = ":" in src
    ipn = nla(3 if v6 else 1, ip(src)) + nla(4 if v6 else 2, ip(dst))
    if icmp_id is not None:
        pn = (nla(1, bytes([proto])) + nla(7 if v6 else 4, struct.pack(">H", icmp_id))
              + nla(8 if v6 else 5, bytes([8])) + nla(9 if v6 else 6, bytes([0])))
    else:
        pn = nla(1, bytes([proto])) + nla(2, struct.pack(">H", sport)) + nla(3, struct.pack(">H", dport))
    body = nla(1, ipn, nested) + nla(2, pn, nested)
    if zone is not None:
        body += nla(3, struct.pack(">H", zone))
    return nla(t, body, nested)


def counters(t, packets, nbytes, bits=64):
    if bits == 64:
        return nla(t, nla(1, struct.pack(">Q", packets)) + nla(2, struct.pack(">Q", nbytes)), True)
    return nla(t, nla(3, struct.pack(">I", packets)) + nla(4, struct.pack(">I", nbytes)), True)


def ct_message(*, ct_id=1, src="10.0.0.1", dst="10.0.0.2", proto=6, sport=1000, dport=80,
               rsrc=None, rsport=None, ob=100, op=2, rb=300, rp=3, mtype=CT_NEW, family=socket.AF_INET,
               icmp_id=None, extra=b"", nested=True, bits=64, zone=None, seq=7) -> bytes:
    rsrc = rsrc or dst
    rsport = dport if rsport is None else rsport
    attrs = (
        tuple_attr(1, src, dst, proto, sport, dport, icmp_id=icmp_id, nested=nested, zone=zone)
        + tuple_attr(2, rsrc, src, proto, rsport, sport, icmp_id=icmp_id, nested=nested, zone=zone)
        + nla(3, struct.pack(">I", 0x18e))                                    # CTA_STATUS
        + nla(7, struct.pack(">I", 431999))                                   # CTA_TIMEOUT
        + counters(9, op, ob, bits) + counters(10, rp, rb, bits)
        + nla(4, nla(1, nla(1, bytes([3])) + nla(2, bytes([7]))), True)        # CTA_PROTOINFO
        + nla(8, struct.pack(">I", 0))                                        # CTA_MARK
        + nla(12, struct.pack(">I", ct_id))                                   # CTA_ID
        + nla(11, struct.pack(">I", 1))                                       # CTA_USE
        + extra
    )
    body = struct.pack("=BBH", family, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), mtype, NLM_F_MULTI, seq, 0) + body


def done() -> bytes:
    return struct.pack("=IHHIIi", 20, NLMSG_DONE, NLM_F_MULTI, 7, 0, 0)


def error(code: int) -> bytes:
    return struct.pack("=IHHIIi", 36, NLMSG_ERROR, 0, 7, 0, code) + struct.pack("=IHHII", 20, 0x101, 0x301, 7, 0)


def test_ipv4_tcp_entry():
    (s,) = parse_datagram(ct_message(ct_id=0xDEADBEEF, src="10.77.0.1", dst="10.96.0.10", sport=40000,
                                     dport=80, rsrc="10.77.0.2", rsport=8080, ob=2**40 + 5, op=7,
                                     rb=123456, rp=9))
    assert s == ConnSample(0xDEADBEEF, 4, 6, ip("10.77.0.1"), ip("10.96.0.10"), 40000, 80,
                           ip("10.77.0.2"), 8080, 2**40 + 5, 7, 123456, 9, False)


def test_ipv6_udp_destroy_event():
    (s,) = parse_datagram(ct_message(src="fd77::1", dst="fd77::2", proto=17, sport=5353, dport=53,
                                     ob=2**63 + 1, op=1, rb=0, rp=0, mtype=CT_DELETE,
                                     family=socket.AF_INET6))
    assert (s.family, s.proto, s.src, s.dst, s.sport, s.dport, s.reply_src, s.reply_sport) == (
        6, 17, ip("fd77::1"), ip("fd77::2"), 5353, 53, ip("fd77::2"), 53)
    assert (s.orig_bytes, s.orig_packets, s.reply_bytes, s.reply_packets, s.ended) == (2**63 + 1, 1, 0, 0, True)


@pytest.mark.parametrize("src,dst,proto", [("10.0.0.1", "10.0.0.2", 1), ("fd00::1", "fd00::2", 58)])
def test_icmp_id_is_the_source_port_and_ports_are_zero(src, dst, proto):
    (s,) = parse_datagram(ct_message(src=src, dst=dst, proto=proto, icmp_id=4242))
    assert (s.proto, s.sport, s.dport, s.reply_sport) == (proto, 4242, 0, 0)


def test_generic_path_without_nested_flag_with_zone_and_32bit_counters():
    (s,) = parse_datagram(ct_message(nested=False, zone=5, bits=32, ob=1000, op=10, rb=2000, rp=20,
                                     src="fd00::1", dst="fd00::2"))
    assert (s.family, s.src, s.sport, s.dport, s.orig_bytes, s.orig_packets, s.reply_bytes, s.reply_packets) == (
        6, ip("fd00::1"), 1000, 80, 1000, 10, 2000, 20)


def test_multipart_dump_until_done():
    p = CtParser()
    out: list = []
    first = b"".join(ct_message(ct_id=i, sport=1000 + i) for i in range(3))
    assert p.feed(first, out) is False  # more parts follow
    assert p.feed(ct_message(ct_id=3, sport=1003) + done(), out) is True
    assert [s.ct_id for s in out] == [0, 1, 2, 3] and [s.sport for s in out] == [1000, 1001, 1002, 1003]
    assert p.malformed == 0 and p.messages == 4


def test_nlmsg_error_raises_with_errno_and_ack_is_ignored():
    with pytest.raises(NetlinkError) as exc:
        CtParser().feed(error(-errno.EPERM), [])
    assert exc.value.errno == errno.EPERM and "Operation not permitted" in str(exc.value)
    out: list = []
    assert CtParser().feed(error(0) + ct_message() + done(), out) is True and len(out) == 1


def test_truncated_datagram_raises_parse_error():
    msg = ct_message()
    with pytest.raises(ParseError, match="netlink message length"):
        CtParser().feed(msg[:-10], [])
    with pytest.raises(ParseError, match="netlink message length"):
        CtParser().feed(struct.pack("=IHHII", 8, CT_NEW, 0, 0, 0), [])


def test_broken_attributes_are_skipped_and_counted():
    good = ct_message(ct_id=1)
    # an attribute claiming more bytes than its message holds
    bad = bytearray(ct_message(ct_id=2))
    struct.pack_into("=H", bad, 20, 0xFFF0)
    # a message without a reply tuple
    body = struct.pack("=BBH", 2, 0, 0) + tuple_attr(1, "10.0.0.1", "10.0.0.2", 6, 1, 2)
    no_reply = struct.pack("=IHHII", 16 + len(body), CT_NEW, 0, 0, 0) + body
    p = CtParser()
    out: list = []
    p.feed(bytes(bad) + no_reply + good, out)
    assert [s.ct_id for s in out] == [1] and p.malformed == 2


def test_learned_layout_reads_the_same_as_the_generic_walk():
    msgs = [ct_message(ct_id=i, sport=2000 + i, ob=10 * i, rb=20 * i, op=i, rp=i + 1) for i in range(5)]
    msgs += [ct_message(ct_id=9, src="fd00::1", dst="fd00::2", family=socket.AF_INET6, mtype=CT_DELETE)] * 2
    p = CtParser()
    out: list = []
    p.feed(b"".join(msgs), out)
    assert sum(map(len, p.layouts.values())) == 2  # one per shape, learned from the first of each
    generic = [parse_entry(m, 20, len(m), m == msgs[-1]) for m in msgs]
    assert out == generic
    # a message of the same length but another shape does not fit the layout: generic walk
    other = ct_message(ct_id=77, nested=False)
    assert len(other) == len(msgs[0])
    p.feed(other, out)
    assert out[-1] == parse_entry(other, 20, len(other), False)
    # a run read in one pass stops at a message of another shape and resumes after it
    mixed = [msgs[0], msgs[1], other, msgs[2], msgs[3], ct_message(ct_id=5, mtype=CT_DELETE)]
    out = []
    p.feed(b"".join(mixed) + done(), out)
    assert out == [parse_entry(m, 20, len(m), m is mixed[-1]) for m in mixed]


# ------------------------------------------------------------------------------ fuzzing
FUZZ_RUNS = {"random": 0, "mutated": 0}
VALID = [
    ct_message(),
    ct_message(src="fd77::1", dst="fd77::2", proto=17, family=socket.AF_INET6, mtype=CT_DELETE),
    ct_message(proto=1, icmp_id=9, nested=False, bits=32, zone=1) + done(),
    error(-1),
    b"".join(ct_message(ct_id=i, sport=3000 + i) for i in range(3)) + done(),  # a run: one-pass reader
]


TRAINED = CtParser()  # has learned one-struct layouts from the valid messages
for _m in VALID:
    try:
        TRAINED.feed(_m, [])
    except NetlinkError:
        pass


def _check_never_crashes(data: bytes) -> None:
    for parser in (CtParser(), TRAINED):
        out: list = []
        try:
            parser.feed(data, out)
        except (ParseError, NetlinkError):
            pass
        _check_samples(out)


def _check_samples(out: list) -> None:
    for s in out:  # whatever parsed is well-typed
        assert isinstance(s, ConnSample) and s.family in (4, 6) and len(s.src) == len(s.dst) == len(s.reply_src)
        assert all(isinstance(v, int) and v >= 0 for v in (s.orig_bytes, s.orig_packets, s.sport, s.dport))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data):
    FUZZ_RUNS["random"] += 1
    _check_never_crashes(data)


@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.lists(st.tuples(st.integers(0, 800), st.integers(0, 255)), max_size=8),
       st.integers(0, 850))
def test_fuzz_mutated_valid_messages(msg, flips, cut):
    FUZZ_RUNS["mutated"] += 1
    data = bytearray(msg)
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    _check_never_crashes(bytes(data[:cut]))
    _check_never_crashes(bytes(data))


def test_fuzz_case_counts():
    """Runs after the fuzz tests (file order): report how many cases ran."""
    print(f"\nfuzz cases run: random={FUZZ_RUNS['random']} mutated={FUZZ_RUNS['mutated']}")
    if FUZZ_RUNS["random"] or FUZZ_RUNS["mutated"]:  # skipped when the fuzz tests are deselected
        assert FUZZ_RUNS["random"] >= 100 and FUZZ_RUNS["mutated"] >= 100


def test_dump_request_matches_pyroute2s_encoding():
    """The collector encodes its 20-byte dump request itself (pyroute2's nfctsocket costs ~3 MiB)."""
    import socket

    from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
    from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_CTNETLINK
    from pyroute2.netlink.nfnetlink.nfctsocket import IPCTNL_MSG_CT_GET, nfct_msg

    from node_agent.collectors.conntrack import dump_request

    msg = nfct_msg()
    msg["header"]["type"] = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
    msg["header"]["sequence_number"] = 4242
    msg["nfgen_family"] = socket.AF_UNSPEC
    msg.encode()
    assert dump_request(4242) == bytes(msg.data)

"""DNS response wire format (RFC 1035) -> the addresses a client learned, per asked name.

`parse_answers(payload)` returns `[(domain asked, ip, ttl, chain), ...]`: every A and AAAA
answer, with CNAME chains followed back to the name in the question (e.g. asked
`www.example.com`, answered `www.example.com CNAME edge.cdn.net`, `edge.cdn.net A 192.0.2.7`
gives `("www.example.com", "192.0.2.7", ttl, ("edge.cdn.net",))`): `chain` holds the CNAME
targets from the asked name to the record's owner, in order (empty for a direct answer).
`parse_response` is the same without the chain. The payload comes from the wire via eBPF, so
it may be truncated (we copy at most 4096 bytes per packet), malformed or hostile: the parser never raises on
input; it returns what it could read before the damage, and `ParseStats` counts the errors.
Compression pointers must point backwards (strictly before the name being read) and a name
is at most 255 bytes, which makes pointer loops impossible.
"""
from __future__ import annotations

import socket
import struct

TYPE_A, TYPE_CNAME, TYPE_AAAA = 1, 5, 28
CLASS_IN = 1
MAX_NAME = 255
MAX_CHAIN = 16          # CNAME hops followed back to the question


class DnsParseError(ValueError):
    """Internal: the packet is damaged at this point (never escapes parse_response)."""


class ParseStats:
    """Counters for /metrics."""

    __slots__ = ("responses", "answers", "errors", "truncated")

    def __init__(self):
        self.responses = self.answers = self.errors = self.truncated = 0

    def as_dict(self) -> dict[str, int]:
        return {"dns_responses": self.responses, "dns_answers": self.answers,
                "dns_parse_errors": self.errors, "dns_truncated": self.truncated}


def read_name(buf: bytes, off: int) -> tuple[str, int]:
    """Read a (possibly compressed) name at `off`; returns (lowercase name, offset after it)."""
    labels: list[str] = []
    total = 0
    end = -1             # where the name ends in the original position (after the first pointer)
    limit = off          # pointers must go strictly backwards: no loops
    n = len(buf)
    while True:
        if off >= n:
            raise DnsParseError("name runs past the end")
        ln = buf[off]
        if ln == 0:
            off += 1
            break
        kind = ln & 0xC0
        if kind == 0xC0:
            if off + 1 >= n:
                raise DnsParseError("truncated pointer")
            ptr = ((ln & 0x3F) << 8) | buf[off + 1]
            if ptr >= limit:
                raise DnsParseError("compression pointer does not point backwards")
            if end < 0:
                end = off + 2
            off = limit = ptr
            continue
        if kind:
            raise DnsParseError("reserved label type")
        if off + 1 + ln > n:
            raise DnsParseError("label runs past the end")
        total += ln + 1
        if total > MAX_NAME:
            raise DnsParseError("name longer than 255 bytes")
        labels.append(buf[off + 1: off + 1 + ln].decode("ascii", "backslashreplace").lower())
        off += 1 + ln
    return ".".join(labels), (end if end >= 0 else off)


def _records(buf: bytes, off: int, count: int, out: list) -> int:
    """Append (name, type, class, ttl, rdata offset, rdata length) for `count` records."""
    n = len(buf)
    for _ in range(count):
        name, off = read_name(buf, off)
        if off + 10 > n:
            raise DnsParseError("record header truncated")
        rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", buf, off)
        off += 10
        if off + rdlen > n:
            raise DnsParseError("rdata truncated")
        out.append((name, rtype, rclass, ttl, off, rdlen))
        off += rdlen
    return off


def parse_response(payload: bytes, stats: ParseStats | None = None) -> list[tuple[str, str, int]]:
    """A DNS response's (domain asked, ip, ttl) triples; [] for queries, errors, no answers."""
    return [a[:3] for a in parse_answers(payload, stats)]


def parse_answers(payload: bytes, stats: ParseStats | None = None) -> list[tuple[str, str, int, tuple[str, ...]]]:
    """A DNS response's (domain asked, ip, ttl, CNAME chain) tuples; [] for queries, errors,
    no answers.

    Never raises on any input. Answers read before a damaged part are kept (a response cut
    at 512 bytes still yields its first records); the damage is counted in `stats`."""
    stats = stats if stats is not None else ParseStats()
    try:
        buf = bytes(payload)
    except Exception:
        stats.errors += 1
        return []
    if len(buf) < 12:
        stats.errors += 1
        return []
    _id, flags, qd, an, _ns, _ar = struct.unpack_from("!HHHHHH", buf, 0)
    if not flags & 0x8000:        # a query, not a response
        return []
    stats.responses += 1
    if flags & 0x0200:
        stats.truncated += 1
    if flags & 0x000F:            # NXDOMAIN, SERVFAIL, ...: nothing learned
        return []
    records: list = []
    asked: list[str] = []
    try:
        off = 12
        for _ in range(qd):
            name, off = read_name(buf, off)
            if off + 4 > len(buf):
                raise DnsParseError("question truncated")
            off += 4
            asked.append(name)
        _records(buf, off, an, records)
    except DnsParseError:
        stats.errors += 1
    except Exception:             # belt and braces: hostile input must never escape
        stats.errors += 1
    return _answers(buf, asked, records, stats)


def _answers(buf: bytes, asked: list[str], records: list, stats: ParseStats) -> list[tuple[str, str, int, tuple[str, ...]]]:
    # CNAME: alias -> canonical target; the answers' owner names are mapped back to the alias
    # the client asked for. Without a question (or an unrelated owner) the owner name is kept.
    parent: dict[str, str] = {}
    addrs: list[tuple[str, str, int]] = []
    for name, rtype, rclass, ttl, roff, rdlen in records:
        if rclass != CLASS_IN:
            continue
        try:
            if rtype == TYPE_CNAME:
                target, _ = read_name(buf[: roff + rdlen], roff)
                if target != name:
                    parent.setdefault(target, name)
            elif rtype == TYPE_A and rdlen == 4:
                addrs.append((name, socket.inet_ntop(socket.AF_INET, buf[roff: roff + 4]), ttl))
            elif rtype == TYPE_AAAA and rdlen == 16:
                addrs.append((name, socket.inet_ntop(socket.AF_INET6, buf[roff: roff + 16]), ttl))
        except (DnsParseError, ValueError, OSError):
            stats.errors += 1
    asked_set = set(asked)
    out = []
    chains: dict[str, tuple[str, tuple[str, ...]]] = {}
    for owner, ip, ttl in addrs:
        hit = chains.get(owner)
        if hit is None:
            name = owner
            targets: list[str] = []
            for _ in range(MAX_CHAIN):
                if name in asked_set or name not in parent:
                    break
                targets.append(name)
                name = parent[name]
            hit = chains[owner] = (name, tuple(reversed(targets)))
        out.append((hit[0], ip, ttl if ttl < 0x80000000 else 0, hit[1]))   # RFC 2181 s8: top bit set means 0
    stats.answers += len(out)
    return out

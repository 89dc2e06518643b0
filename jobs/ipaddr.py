"""Vectorized IP address helpers: parse unique address strings, longest-prefix tables.

The job resolves *unique* addresses, never rows: callers dictionary-encode IP columns and pass
the dictionary here. IPv4 is parsed with Arrow kernels into integers; IPv6 (rarer) goes
through socket.inet_pton one unique address at a time.
"""
from __future__ import annotations

import bisect
import ipaddress
import socket
from typing import NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_V4_RE = r"^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$"


class ParsedIPs(NamedTuple):
    family: np.ndarray  # int8: 4, 6, or 0 when the string is not an address (or null)
    v4: np.ndarray      # int64 value of IPv4 addresses (0 otherwise)
    v6: np.ndarray      # object array: python int of IPv6 addresses (None otherwise)


def parse_ips(values: pa.Array | Sequence[str | None]) -> ParsedIPs:
    """Parse address strings (normally a dictionary of unique addresses)."""
    arr = values if isinstance(values, pa.Array) else pa.array(list(values), pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.string())
    n = len(arr)
    family = np.zeros(n, np.int8)
    v4 = np.zeros(n, np.int64)
    v6 = np.full(n, None, dtype=object)
    if n == 0:
        return ParsedIPs(family, v4, v6)
    is4 = pc.fill_null(pc.match_substring_regex(arr, _V4_RE), False).to_numpy(zero_copy_only=False)
    idx4 = np.flatnonzero(is4)
    if len(idx4):
        octets = pc.split_pattern(arr.take(pa.array(idx4)), ".").flatten().cast(pa.int64())
        octets = octets.to_numpy().reshape(-1, 4)
        ok = (octets <= 255).all(axis=1)
        val = (octets[:, 0] << 24) | (octets[:, 1] << 16) | (octets[:, 2] << 8) | octets[:, 3]
        family[idx4[ok]] = 4
        v4[idx4[ok]] = val[ok]
    is6 = pc.fill_null(pc.match_substring(arr, ":"), False).to_numpy(zero_copy_only=False)
    idx6 = np.flatnonzero(is6)
    strs = dict(zip(idx6.tolist(), arr.take(pa.array(idx6, pa.int64())).to_pylist())) if len(idx6) else {}
    for i in idx6.tolist():  # unique IPv6 addresses only
        try:
            v6[i] = int.from_bytes(socket.inet_pton(socket.AF_INET6, strs[i].split("%", 1)[0]), "big")
            family[i] = 6
        except (OSError, ValueError):
            pass
    return ParsedIPs(family, v4, v6)


def parse_cidrs(cidrs: Sequence[str]) -> tuple[ParsedIPs, np.ndarray]:
    """Network start addresses and prefix lengths of CIDR strings ("a/len"; a bare address
    is a host route). Invalid entries get family 0. Host bits are cleared."""
    arr = pa.array(list(cidrs), pa.string())
    parts = pc.extract_regex(arr, r"^(?P<addr>[^/]+)(?:/(?P<len>\d{1,3}))?$")
    addr = pc.struct_field(parts, "addr")
    ln = pc.struct_field(parts, "len")
    ips = parse_ips(addr)
    full = np.where(ips.family == 6, 128, 32)
    ln = pc.if_else(pc.equal(ln, ""), None, ln).cast(pa.int64()).to_numpy(zero_copy_only=False)
    ln = np.where(np.isnan(ln.astype(float)), full, ln).astype(np.int64) if len(ln) else np.zeros(0, np.int64)
    bad = ln > full
    family = np.where(bad, 0, ips.family).astype(np.int8)
    host4 = (np.int64(1) << np.clip(32 - ln, 0, 32)) - 1
    v4 = np.where(family == 4, ips.v4 & ~host4, 0)
    v6 = ips.v6.copy()
    for i in np.flatnonzero(family == 6):
        v6[i] = v6[i] & ~((1 << (128 - int(ln[i]))) - 1)
    return ParsedIPs(family, v4, v6), ln


class PrefixTable:
    """Best-ranked covering prefix per address, vectorized for IPv4.

    Prefixes are either nested or disjoint. They are "painted" in ascending rank onto the
    elementary intervals between all prefix boundaries, so each interval ends up owned by the
    highest-ranked prefix covering it; lookup is one searchsorted. Rank defaults to the prefix
    length (plain longest-prefix match); ties keep the later entry. Invalid CIDRs never match.
    """

    def __init__(self, cidrs: Sequence[str], ranks: Sequence[tuple] | None = None,
                 parsed: tuple[ParsedIPs, np.ndarray] | None = None):
        nets, plen = parsed or parse_cidrs(cidrs)
        if ranks is None:
            ranks = [(int(x),) for x in plen]
        order = sorted(range(len(plen)), key=lambda i: (ranks[i], i))
        self.size = len(plen)
        fam = nets.family
        v4 = np.array([i for i in order if fam[i] == 4], np.int64)
        v6 = [i for i in order if fam[i] == 6]
        # IPv4: int64 boundaries, numpy painting
        s4 = nets.v4[v4]
        e4 = s4 + (np.int64(1) << (32 - plen[v4]))
        self._b4 = np.unique(np.concatenate([s4, e4]))
        self._w4 = np.full(len(self._b4), -1, np.int32)
        lo = np.searchsorted(self._b4, s4)
        hi = np.searchsorted(self._b4, e4)
        for k, i in enumerate(v4.tolist()):  # once per prefix at load time
            self._w4[lo[k]:hi[k]] = i
        # IPv6: python ints (128-bit), bisect
        s6 = [nets.v6[i] for i in v6]
        e6 = [nets.v6[i] + (1 << (128 - int(plen[i]))) for i in v6]
        self._b6 = sorted(set(s6) | set(e6))
        self._w6 = [-1] * len(self._b6)
        for k, i in enumerate(v6):
            a, b = bisect.bisect_left(self._b6, s6[k]), bisect.bisect_left(self._b6, e6[k])
            self._w6[a:b] = [i] * (b - a)

    def lookup(self, ips: ParsedIPs) -> np.ndarray:
        """Index of the winning prefix for each address, -1 where none covers it."""
        out = np.full(len(ips.family), -1, np.int32)
        m4 = ips.family == 4
        if m4.any() and len(self._b4):
            k = np.searchsorted(self._b4, ips.v4[m4], side="right") - 1
            out[m4] = np.where(k >= 0, self._w4[np.maximum(k, 0)], -1)
        if self._b6:
            for i in np.flatnonzero(ips.family == 6):  # unique IPv6 addresses only
                k = bisect.bisect_right(self._b6, ips.v6[i]) - 1
                out[i] = self._w6[k] if k >= 0 else -1
        return out


PRIVATE_CIDRS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                 "169.254.0.0/16", "fc00::/7", "fe80::/10")
_PRIVATE = PrefixTable(PRIVATE_CIDRS)
_IMDS_V4 = int(ipaddress.IPv4Address("169.254.169.254"))
_IMDS_V6 = int(ipaddress.IPv6Address("fd00:ec2::254"))


def is_private(ips: ParsedIPs) -> np.ndarray:
    return _PRIVATE.lookup(ips) >= 0


def is_imds(ips: ParsedIPs) -> np.ndarray:
    v6 = np.array([v == _IMDS_V6 for v in ips.v6], bool) if len(ips.v6) else np.zeros(0, bool)
    return ((ips.family == 4) & (ips.v4 == _IMDS_V4)) | ((ips.family == 6) & v6)


#: Azure's platform address (DNS, DHCP, health probes, VM agent): the platform, not the internet
_AZURE_PLATFORM_V4 = (168 << 24) | (63 << 16) | (129 << 8) | 16


def is_platform(ips: ParsedIPs) -> np.ndarray:
    """Metadata and platform addresses that are never billed: IMDS and 168.63.129.16."""
    return is_imds(ips) | ((ips.family == 4) & (ips.v4 == _AZURE_PLATFORM_V4))

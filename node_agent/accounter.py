"""Accounter: cumulative per-connection counters -> exact per-window deltas -> RAW_FLOWS.

Input: `ConnSample`s from a collector (node_agent/collectors/base.py): full dumps of the
live table and the connections that ended since the last poll (final counters).
Output: `cut(window_start, window_end, node, is_local)` -> a pyarrow Table in
`lake.schema.RAW_FLOWS`, one row per `lake.schema.FLOW_KEY` with non-zero traffic, pod
columns null (node_agent/enrich.py fills them).

Rules (docs/agent-accounting.md explains each and why it never double counts):
- the first poll is a baseline: traffic before the agent started is not counted;
- a connection is keyed by (conntrack id, original tuple): a reused 5-tuple with a new id
  is a new connection, counted from zero;
- a counter going backwards is a reset: the delta is the current value;
- an ended connection gives its final delta once, then is forgotten; one never seen in a
  dump (born and gone between two polls) counts in full;
- a connection missing from a dump is kept one more poll as a tombstone, so a DESTROY that
  arrives after the dump still finds its last counters; without one it is forgotten
  (`forgotten` stat);
- deltas belong to the window in which they are observed.

Per-connection state is two Python ints (key, packed counters) so a 50k-entry table costs a
few MiB; samples are consumed as a stream (`Collector.iter_dump`).
"""
from __future__ import annotations

import datetime as dt
import socket
from array import array
from itertools import accumulate
from typing import Callable, Iterable

import pyarrow as pa

from lake.schema import RAW_FLOWS, TS, as_utc
from node_agent.flows import ConnSample

_M64 = (1 << 64) - 1
_M32 = (1 << 32) - 1
# State values are the packed counters shifted left by two; the low bits are flags.
_COUNTED = 1  # the connection already counts in this window's `connections`
_SEEN = 2     # parity of the last dump that showed the connection
_FLAGS = _COUNTED | _SEEN


def conn_key(s: ConnSample) -> int:
    """(conntrack id, original tuple) as one int: the 64-bit hash of (ct_id, family, proto,
    src, dst, sport, dport). Two live connections collide with probability ~n^2/2^65
    (~1e-10 for 50k entries); the state stays a dict of small ints."""
    return hash(s[:7])


def pack(s: ConnSample) -> int:
    """The four cumulative counters as one int (64 bits each), shifted left by two: the
    low bits hold the state's flags (_COUNTED, _SEEN), kept low so the int does not grow.
    """
    ob, op, rb, rp = s[9:13]
    return (ob | op << 64 | rb << 128 | rp << 192) << 2


def ip_str(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


LocalTest = Callable[[str], bool]

# Arrays are built from buffers, not with pa.array(list): for Python lists pyarrow imports
# pandas to look for pandas types, which costs ~55 MiB of RSS in a 128 MiB agent.


def _ints(values: array, typ: pa.DataType) -> pa.Array:
    return pa.Array.from_buffers(typ, len(values), [None, pa.py_buffer(values)])


def _strings(uniques: list[bytes], idx) -> pa.Array:
    """A string array of uniques[i] for i in idx, built from offsets and data buffers."""
    data = [uniques[i] for i in idx]
    offsets = array("i", [0])
    offsets.extend(accumulate(map(len, data)))
    return pa.Array.from_buffers(pa.string(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])


def _repeat_string(value: bytes, n: int) -> pa.Array:
    step = len(value)
    offsets = array("i", range(0, (n + 1) * step, step)) if step else array("i", [0]) * (n + 1)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(value * n)])


def _null_strings(n: int) -> pa.Array:
    """n nulls of type string, from buffers (pa.nulls would allocate from Arrow's pool)."""
    zeros = pa.py_buffer(bytes((n + 7) // 8))
    return pa.Array.from_buffers(pa.string(), n, [zeros, pa.py_buffer(array("i", [0]) * (n + 1)), pa.py_buffer(b"")], null_count=n)


def _repeat_ts(when: dt.datetime, n: int) -> pa.Array:
    us = (when - _EPOCH) // dt.timedelta(microseconds=1)
    return pa.Array.from_buffers(TS, n, [None, pa.py_buffer(array("q", [us]) * n)])


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class _Window:
    """One window's flows: identity -> row index, counters in flat int64 columns (8 bytes
    per value, handed to Arrow without a copy)."""

    __slots__ = ("idx", "ip_ids", "txb", "txp", "rxb", "rxp", "conns")

    def __init__(self) -> None:
        self.idx: dict[int, int] = {}      # flow identity -> row
        self.ip_ids: dict[bytes, int] = {}  # packed IP -> id within this window
        self.txb, self.txp, self.rxb, self.rxp, self.conns = (array("q") for _ in range(5))


class Accounter:
    """Exact per-window deltas from cumulative samples. Not thread-safe: one poll loop owns it."""

    def __init__(self) -> None:
        self._state: dict[int, int] = {}     # live connections: key -> packed counters
        self._missing: dict[int, int] = {}   # missing from the last dump, awaiting a DESTROY
        self._limbo: dict[int, int] = {}     # tombstones past their drain, kept one more poll
        self._ended: dict[int, int] = {}     # ended since the last dump (a dying entry may still be dumped)
        self._window = _Window()
        self._baselined = False
        self._seen = 0
        self._count_unseen = False           # ended-but-never-dumped connections count in full
        self._stats = dict.fromkeys((
            "polls", "entries", "baseline_entries", "new", "ended", "ended_unseen",
            "ended_before_start", "ended_duplicate", "forgotten", "resets", "dying_skipped",
            "transit_flows", "transit_bytes", "loopback_flows", "loopback_bytes", "flows_cut", "tx_bytes",
            "rx_bytes"), 0)

    # ----------------------------------------------------------------- polling
    def poll(self, collector) -> None:
        """One poll: ended connections first, then the dump (see docs/agent-accounting.md)."""
        if not self._baselined:
            self.observe_ended(collector.drain_ended())   # ended before start: not ours
            self.observe_dump(collector.iter_dump())      # baseline
            self.observe_ended(collector.drain_ended())   # ended during the baseline dump
        else:
            self.observe_ended(collector.drain_ended())
            self.observe_dump(collector.iter_dump())
        self._stats["polls"] += 1

    def observe_dump(self, samples: Iterable[ConnSample]) -> None:
        """A full dump of live connections (cumulative counters).

        The state is updated in place: each dump flips the _SEEN parity bit it writes, and
        entries left with the old parity afterwards are the ones the dump did not show."""
        st = self._stats
        if self._missing:  # observe_ended was not called since the last dump
            self._expire_tombstones()
        state = self._state
        limbo = self._limbo
        ended = self._ended
        add = self._add
        seen = self._seen = self._seen ^ _SEEN
        baseline = not self._baselined
        n = 0
        for s in samples:
            n += 1
            k = conn_key(s)
            cur = pack(s)
            last = state.get(k)
            if last is not None:
                if last | _FLAGS == cur | _FLAGS:  # idle since the last poll (the common case)
                    if last & _SEEN != seen:
                        state[k] = last ^ _SEEN
                    continue
                # (seen twice in one dump, when the table changes under it: same rule)
                state[k] = add(s, cur, last) | seen
                continue
            if limbo:
                last = limbo.pop(k, None)  # skipped by one dump, back in the next: not new
            if last is None:
                if baseline:
                    state[k] = cur | seen
                    continue
                fin = ended.get(k)
                if fin is not None and fin == cur:  # dying entry dumped after its DESTROY
                    st["dying_skipped"] += 1
                    continue
                st["new"] += 1
                last = 0
            state[k] = add(s, cur, last) | seen
        if baseline:
            st["baseline_entries"] = n
            self._baselined = True
        st["entries"] = n
        # what the dump did not show waits one drain for its DESTROY
        if len(state) > n or any(v & _SEEN != seen for v in state.values()):
            missing = {k: v for k, v in state.items() if v & _SEEN != seen}
            for k in missing:
                del state[k]
            self._missing = missing
        ended.clear()

    def observe_ended(self, samples: Iterable[ConnSample]) -> None:
        """Connections that ended, with their final counters."""
        st = self._stats
        for s in samples:
            k = conn_key(s)
            cur = pack(s)
            last = self._state.pop(k, None)
            if last is None:
                last = self._missing.pop(k, None)
            if last is None and self._limbo:
                last = self._limbo.pop(k, None)
            if last is None:
                if k in self._ended:  # the same DESTROY twice
                    st["ended_duplicate"] += 1
                    continue
                if not self._count_unseen:  # ended before (or while) the baseline was taken
                    st["ended_before_start"] += 1
                    continue
                st["ended_unseen"] += 1
                last = 0
            st["ended"] += 1
            self._ended[k] = cur
            if last | _FLAGS != cur | _FLAGS:
                self._add(s, cur, last)
        # tombstones had their drain: anything still missing ended without a DESTROY we saw
        self._expire_tombstones()
        # from the first drain after the baseline on, a connection never dumped was born
        # after the baseline and counts in full
        self._count_unseen = self._baselined

    def _expire_tombstones(self) -> None:
        """Tombstones past their drain move to limbo for one more poll (an entry a dump
        skipped and the next one shows again continues from its last counters); what
        leaves limbo is forgotten."""
        self._stats["forgotten"] += len(self._limbo)
        self._limbo, self._missing = self._missing, {}

    def _add(self, s: ConnSample, cur: int, last: int) -> int:
        """Add the delta cur - last to the window; returns the state value to keep (cur,
        with _COUNTED set once the connection carried traffic in this window)."""
        c, p = cur >> 2, last >> 2
        ob, op, rb, rp = c & _M64, (c >> 64) & _M64, (c >> 128) & _M64, c >> 192
        lob, lop, lrb, lrp = p & _M64, (p >> 64) & _M64, (p >> 128) & _M64, p >> 192
        if ob < lob or op < lop:  # counters went backwards: reset (zeroed) or reused entry
            lob = lop = 0
            self._stats["resets"] += 1
        if rb < lrb or rp < lrp:
            lrb = lrp = 0
            self._stats["resets"] += 1
        dob, dop, drb, drp = ob - lob, op - lop, rb - lrb, rp - lrp
        if not (dob or dop or drb or drp):
            return cur | (last & _COUNTED)  # the caller sets _SEEN
        # the flow identity as one int: proto, ports and window-local ids of the three IPs
        w = self._window
        ids = w.ip_ids
        a, b, c = s.src, s.dst, s.reply_src
        ia = ids.get(a)
        if ia is None:
            ia = ids[a] = len(ids)
        ib = ids.get(b)
        if ib is None:
            ib = ids[b] = len(ids)
        ic = ids.get(c)
        if ic is None:
            ic = ids[c] = len(ids)
        ident = s.proto | s.dport << 8 | s.reply_sport << 24 | ia << 40 | ib << 72 | ic << 104
        i = w.idx.get(ident)
        if i is None:
            w.idx[ident] = len(w.idx)
            w.txb.append(dob)
            w.txp.append(dop)
            w.rxb.append(drb)
            w.rxp.append(drp)
            w.conns.append(0 if last & _COUNTED else 1)
        else:
            w.txb[i] += dob
            w.txp[i] += dop
            w.rxb[i] += drb
            w.rxp[i] += drp
            if not last & _COUNTED:  # connections that carried traffic in the window
                w.conns[i] += 1
        return cur | _COUNTED

    # ----------------------------------------------------------------- output
    def cut(self, window_start: dt.datetime, window_end: dt.datetime, node: str,
            is_local: LocalTest | Iterable[str]) -> pa.Table:
        """The window's deltas as RAW_FLOWS rows (one per FLOW_KEY), then a fresh window.

        `is_local(ip: str) -> bool` (or a set of canonical IP strings): whether an address
        belongs to this node (its own addresses and its pods'). direction = outbound if the
        originator is local, inbound if the real peer (reply_src) or the dialed address is
        local; neither = transit: dropped, counted in stats. Connections whose real peer is a
        loopback address never leave the node (health probes, a local proxy): dropped, counted.
        """
        window_start, window_end = as_utc(window_start), as_utc(window_end)
        test = is_local if callable(is_local) else frozenset(is_local).__contains__
        w, self._window = self._window, _Window()
        for d in (self._state, self._missing, self._limbo):  # a new window: nobody counted yet
            for k, v in d.items():
                if v & _COUNTED:
                    d[k] = v ^ _COUNTED
        ips = list(w.ip_ids)  # id -> packed address
        names = [ip_str(ip) for ip in ips]
        local = [bool(test(name)) for name in names]
        loop = [_is_loopback(ip) for ip in ips]
        encoded = [name.encode() for name in names]
        st = self._stats
        direction = array("b")   # 0 outbound, 1 inbound
        src, dst, odst = array("i"), array("i"), array("i")
        oport, dport, proto = array("i"), array("i"), array("h")
        keep: list[int] | None = None  # row indexes to keep, once a transit row was dropped
        for i, ident in enumerate(w.idx):  # insertion order = row index of the counters
            ia, ib, ic = (ident >> 40) & _M32, (ident >> 72) & _M32, ident >> 104
            if loop[ic]:
                st["loopback_flows"] += 1
                st["loopback_bytes"] += w.txb[i] + w.rxb[i]
                if keep is None:
                    keep = list(range(i))
                continue
            if local[ia]:
                direction.append(0)
            elif local[ic] or local[ib]:
                direction.append(1)
            else:
                st["transit_flows"] += 1
                st["transit_bytes"] += w.txb[i] + w.rxb[i]
                if keep is None:
                    keep = list(range(i))
                continue
            if keep is not None:
                keep.append(i)
            src.append(ia)
            dst.append(ic)
            odst.append(ib)
            proto.append(ident & 0xFF)
            oport.append((ident >> 8) & 0xFFFF)
            dport.append((ident >> 24) & 0xFFFF)
        w.idx = {}
        txb, txp, rxb, rxp, conns = w.txb, w.txp, w.rxb, w.rxp, w.conns
        if keep is not None:
            txb, txp, rxb, rxp, conns = (array("q", [col[i] for i in keep]) for col in (txb, txp, rxb, rxp, conns))
        n = len(src)
        st["flows_cut"] += n
        st["tx_bytes"] += sum(txb)
        st["rx_bytes"] += sum(rxb)
        dir_names = [b"outbound", b"inbound"]
        cols = {
            "window_start": _repeat_ts(window_start, n),
            "window_end": _repeat_ts(window_end, n),
            "node": _repeat_string(node.encode(), n),
            "direction": _strings(dir_names, direction),
            "src_ip": _strings(encoded, src),
            "dst_ip": _strings(encoded, dst),
            "orig_dst_ip": _strings(encoded, odst),
            "orig_dst_port": _ints(oport, pa.int32()),
            "dst_port": _ints(dport, pa.int32()),
            "proto": _ints(proto, pa.int16()),
            "tx_bytes": _ints(txb, pa.int64()),
            "tx_packets": _ints(txp, pa.int64()),
            "rx_bytes": _ints(rxb, pa.int64()),
            "rx_packets": _ints(rxp, pa.int64()),
            "connections": _ints(conns, pa.int64()),
        }
        nulls = _null_strings(n)  # the four pod columns share one all-null array
        arrays = [cols[f.name] if f.name in cols else nulls for f in RAW_FLOWS]
        return pa.Table.from_arrays(arrays, schema=RAW_FLOWS)

    def pending(self) -> int:
        """Flow rows accumulated in the current window (before the transit filter)."""
        return len(self._window.idx)

    def stats(self) -> dict[str, int]:
        return dict(self._stats)


_LOOPBACK6 = bytes(15) + b"\x01"


def _is_loopback(packed: bytes) -> bool:
    """127.0.0.0/8 or ::1: traffic that never leaves the node."""
    return packed[0] == 127 if len(packed) == 4 else packed == _LOOPBACK6

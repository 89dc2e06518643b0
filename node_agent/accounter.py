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


def conn_key(s: ConnSample) -> int:
    """(conntrack id, original tuple) as one int: id in the low 32 bits, a 64-bit hash of
    the tuple above (a collision needs the same id and hash: ~n^2/2^96, negligible)."""
    return ((hash((s.proto, s.src, s.dst, s.sport, s.dport)) & _M64) << 32) | (s.ct_id & 0xFFFFFFFF)


def pack(s: ConnSample) -> int:
    return s.orig_bytes | s.orig_packets << 64 | s.reply_bytes << 128 | s.reply_packets << 192


def ip_str(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


LocalTest = Callable[[str], bool]

# Arrays are built from buffers, not with pa.array(list): for Python lists pyarrow imports
# pandas to look for pandas types, which costs ~55 MiB of RSS in a 128 MiB agent.
_INT_CODES = {pa.int16(): "h", pa.int32(): "i", pa.int64(): "q"}


def _ints(values: list[int], typ: pa.DataType) -> pa.Array:
    return pa.Array.from_buffers(typ, len(values), [None, pa.py_buffer(array(_INT_CODES[typ], values))])


def _strings(values: list[str]) -> pa.Array:
    data = [v.encode() for v in values]
    offsets = array("i", [0])
    offsets.extend(accumulate(map(len, data)))
    return pa.Array.from_buffers(pa.string(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])


def _repeat_ts(when: dt.datetime, n: int) -> pa.Array:
    us = (when - _EPOCH) // dt.timedelta(microseconds=1)
    return pa.Array.from_buffers(TS, n, [None, pa.py_buffer(array("q", [us]) * n)])


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class Accounter:
    """Exact per-window deltas from cumulative samples. Not thread-safe: one poll loop owns it."""

    def __init__(self) -> None:
        self._state: dict[int, int] = {}     # live connections: key -> packed counters
        self._missing: dict[int, int] = {}   # missing from the last dump, awaiting a DESTROY
        self._ended: dict[int, int] = {}     # ended since the last dump (a dying entry may still be dumped)
        self._window: dict[tuple, list[int]] = {}  # flow ident -> [tx_b, tx_p, rx_b, rx_p, conns]
        self._window_conns: set[int] = set()
        self._baselined = False
        self._count_unseen = False           # ended-but-never-dumped connections count in full
        self._stats = dict.fromkeys((
            "polls", "entries", "baseline_entries", "new", "ended", "ended_unseen",
            "ended_before_start", "ended_duplicate", "forgotten", "resets", "dying_skipped",
            "transit_flows", "transit_bytes", "flows_cut", "tx_bytes", "rx_bytes"), 0)

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
        """A full dump of live connections (cumulative counters)."""
        st = self._stats
        self._stats["forgotten"] += len(self._missing)  # tombstones whose DESTROY never came
        old = self._state
        ended = self._ended
        new: dict[int, int] = {}
        add = self._add
        baseline = not self._baselined
        n = 0
        for s in samples:
            n += 1
            k = conn_key(s)
            cur = pack(s)
            last = old.pop(k, None)
            if last is None:
                last = new.get(k)  # the same entry twice in one dump (table resized meanwhile)
            if last is None:
                if baseline:
                    new[k] = cur
                    continue
                fin = ended.get(k)
                if fin is not None and fin == cur:  # dying entry dumped after its DESTROY
                    st["dying_skipped"] += 1
                    continue
                st["new"] += 1
                last = 0
            new[k] = cur
            if cur != last:
                add(s, k, cur, last)
        if baseline:
            st["baseline_entries"] = n
            self._baselined = True
        st["entries"] = n
        self._missing = old     # what the dump did not show: wait one drain for its DESTROY
        self._state = new
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
            if cur != last:
                self._add(s, k, cur, last)
        # tombstones had their drain: anything still missing ended without a DESTROY we saw
        if self._missing:
            st["forgotten"] += len(self._missing)
            self._missing = {}
        # from the first drain after the baseline on, a connection never dumped was born
        # after the baseline and counts in full
        self._count_unseen = self._baselined

    def _add(self, s: ConnSample, k: int, cur: int, last: int) -> None:
        ob, op, rb, rp = cur & _M64, (cur >> 64) & _M64, (cur >> 128) & _M64, cur >> 192
        lob, lop, lrb, lrp = last & _M64, (last >> 64) & _M64, (last >> 128) & _M64, last >> 192
        if ob < lob or op < lop:  # counters went backwards: reset (zeroed) or reused entry
            lob = lop = 0
            self._stats["resets"] += 1
        if rb < lrb or rp < lrp:
            lrb = lrp = 0
            self._stats["resets"] += 1
        dob, dop, drb, drp = ob - lob, op - lop, rb - lrb, rp - lrp
        if not (dob or dop or drb or drp):
            return
        ident = (s.proto, s.src, s.dst, s.dport, s.reply_src, s.reply_sport)
        acc = self._window.get(ident)
        if acc is None:
            acc = self._window[ident] = [0, 0, 0, 0, 0]
        acc[0] += dob
        acc[1] += dop
        acc[2] += drb
        acc[3] += drp
        if k not in self._window_conns:
            self._window_conns.add(k)
            acc[4] += 1

    # ----------------------------------------------------------------- output
    def cut(self, window_start: dt.datetime, window_end: dt.datetime, node: str,
            is_local: LocalTest | Iterable[str]) -> pa.Table:
        """The window's deltas as RAW_FLOWS rows (one per FLOW_KEY), then a fresh window.

        `is_local(ip: str) -> bool` (or a set of canonical IP strings): whether an address
        belongs to this node (its own addresses and its pods'). direction = outbound if the
        originator is local, inbound if the real peer (reply_src) or the dialed address is
        local; neither = transit: dropped, counted in stats.
        """
        window_start, window_end = as_utc(window_start), as_utc(window_end)
        test = is_local if callable(is_local) else frozenset(is_local).__contains__
        window, self._window, self._window_conns = self._window, {}, set()
        names: dict[bytes, str] = {}
        local: dict[bytes, bool] = {}
        for ident in window:
            for ip in (ident[1], ident[2], ident[4]):
                if ip not in names:
                    name = names[ip] = ip_str(ip)
                    local[ip] = bool(test(name))
        cols: dict[str, list] = {c: [] for c in (
            "direction", "src_ip", "dst_ip", "orig_dst_ip", "orig_dst_port", "dst_port", "proto",
            "tx_bytes", "tx_packets", "rx_bytes", "rx_packets", "connections")}
        st = self._stats
        for (proto, src, dst, dport, rsrc, rsport), (txb, txp, rxb, rxp, conns) in window.items():
            if local[src]:
                direction = "outbound"
            elif local[rsrc] or local[dst]:
                direction = "inbound"
            else:
                st["transit_flows"] += 1
                st["transit_bytes"] += txb + rxb
                continue
            cols["direction"].append(direction)
            cols["src_ip"].append(names[src])
            cols["dst_ip"].append(names[rsrc])
            cols["orig_dst_ip"].append(names[dst])
            cols["orig_dst_port"].append(dport)
            cols["dst_port"].append(rsport)
            cols["proto"].append(proto)
            cols["tx_bytes"].append(txb)
            cols["tx_packets"].append(txp)
            cols["rx_bytes"].append(rxb)
            cols["rx_packets"].append(rxp)
            cols["connections"].append(conns)
            st["tx_bytes"] += txb
            st["rx_bytes"] += rxb
        n = len(cols["src_ip"])
        st["flows_cut"] += n
        arrays = []
        for field in RAW_FLOWS:
            name = field.name
            if name == "window_start":
                arrays.append(_repeat_ts(window_start, n))
            elif name == "window_end":
                arrays.append(_repeat_ts(window_end, n))
            elif name == "node":
                arrays.append(_strings([node] * n))
            elif name in cols:
                arrays.append(_strings(cols[name]) if field.type == pa.string() else _ints(cols[name], field.type))
            else:
                arrays.append(pa.nulls(n, field.type))
        table = pa.Table.from_arrays(arrays, schema=RAW_FLOWS)
        if n > 1:
            table = table.sort_by([(c, "ascending") for c in ("direction", "src_ip", "dst_ip", "orig_dst_ip",
                                                                  "orig_dst_port", "dst_port", "proto")])
        return table

    def pending(self) -> int:
        """Flow rows accumulated in the current window (before the transit filter)."""
        return len(self._window)

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

"""Accounter: cumulative per-connection counters -> exact per-window deltas -> RAW_FLOWS.

Input: `ConnSample`s from a collector (node_agent/collectors/base.py): dumps of the live
table and the connections that ended (final counters, drained continuously).
Output: `cut(window_start, window_end, node, is_local, lookup)` -> a pyarrow Table in
`lake.schema.RAW_FLOWS`, one row per `lake.schema.FLOW_KEY` with non-zero traffic.

Rules (docs/agent-accounting.md explains each and why it never double counts):
- the first poll is a baseline: traffic before the agent started is not counted, unless
  a saved state of the previous process is loaded (`load_state`): then the first dump
  counts what the kernel counted while no agent ran;
- a connection is keyed by (conntrack id, original tuple): a reused 5-tuple with a new id
  is a new connection, counted from zero;
- a counter going backwards is a reset: the delta is the current value;
- an ended connection gives its final delta once, then is forgotten; one never seen in a
  dump (born and gone between two dumps) counts in full;
- a connection missing from a dump keeps its last counters until the next dump, so a
  DESTROY that arrives later still finds them and a dump that skipped a live entry does
  not make the next one count it as new; what the next dump does not show either is
  forgotten (`forgotten` stat);
- deltas belong to the window in which they are observed; an address's locality and pod
  are decided when it is first seen in the window (`resolve`), not at the cut.

Per-connection state is two Python ints (key, packed counters) so a 50k-entry table costs a
few MiB; samples are consumed as a stream (`Collector.iter_dump`).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import struct
import time
import zlib
from array import array
from itertools import accumulate
from typing import Callable, Iterable

import pyarrow as pa

from lake.schema import RAW_FLOWS, TS, as_utc
from node_agent.flows import ConnSample

try:  # the compact state (node_agent/_cttable.c, built by `pip install -e .`); else a dict
    from node_agent._cttable import CounterTable
except ImportError:  # pragma: no cover - depends on the build
    CounterTable = None

log = logging.getLogger("netmon.accounter")

_M64 = (1 << 64) - 1
_M32 = (1 << 32) - 1
# State values are the packed counters shifted left by two; the low bits are flags.
_COUNTED = 1  # the connection already counts in this window's `connections`
_SEEN = 2     # parity of the last dump that showed the connection
_FLAGS = _COUNTED | _SEEN
_from = int.from_bytes


def conn_key(s: ConnSample) -> int:
    """(conntrack id, original tuple) as one int: the hash of (ct_id, family, proto, sport,
    dport, src+dst) with the two addresses as one int. Ints hash the same in every process (bytes
    do not: their hash is salted per process), so a saved state is valid after a restart.
    Two live connections collide with probability ~n^2/2^65 (~1e-9 for 200k entries)."""
    return hash((s[0], s[1], s[2], s[5], s[6], _from(s[3] + s[4], "big")))


def pack(s: ConnSample) -> int:
    """The four cumulative counters as one int (64 bits each), shifted left by two: the
    low bits hold the state's flags (_COUNTED, _SEEN), kept low so the int does not grow.
    """
    ob, op, rb, rp = s[9:13]
    return (ob | op << 64 | rb << 128 | rp << 192) << 2


def ip_str(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


LocalTest = Callable[[str], bool]
# resolve(packed ip) -> (is_local, pod, namespace) or None, asked when an address is first
# seen in a window; lookup(ip string) -> (pod, namespace, host_network) or None (PodIndex.lookup)
Resolve = Callable[[bytes], "tuple[bool, str | None, str | None] | None"]
Lookup = Callable[[str], "tuple | None"]

# Arrays are built from buffers, not with pa.array(list): for Python lists pyarrow imports
# pandas to look for pandas types, which costs ~55 MiB of RSS in a 128 MiB agent.


def _ints(values: array, typ: pa.DataType) -> pa.Array:
    return pa.Array.from_buffers(typ, len(values), [None, pa.py_buffer(values)])


def _strings(values: list) -> pa.Array:
    """A string array of bytes values (None = null), built from offsets and data buffers."""
    n = len(values)
    nulls = values.count(None)
    valid = None
    if nulls:
        bits = bytearray((n + 7) // 8)
        for i, v in enumerate(values):
            if v is not None:
                bits[i >> 3] |= 1 << (i & 7)
        valid = pa.py_buffer(bytes(bits))
        values = [v or b"" for v in values]
    offsets = array("i", [0])
    offsets.extend(accumulate(map(len, values)))
    return pa.Array.from_buffers(pa.string(), n, [valid, pa.py_buffer(offsets), pa.py_buffer(b"".join(values))],
                                 null_count=nulls)


def _repeat_string(value: bytes, n: int) -> pa.Array:
    step = len(value)
    offsets = array("i", range(0, (n + 1) * step, step)) if step else array("i", [0]) * (n + 1)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(value * n)])


def _null_strings(n: int) -> pa.Array:
    """n nulls of type string, from buffers (pa.nulls would allocate from Arrow's pool)."""
    zeros = pa.py_buffer(bytes((n + 7) // 8))
    return pa.Array.from_buffers(pa.string(), n, [zeros, pa.py_buffer(array("i", [0]) * (n + 1)), pa.py_buffer(b"")],
                                 null_count=n)


def _repeat_ts(when: dt.datetime, n: int) -> pa.Array:
    us = (when - _EPOCH) // dt.timedelta(microseconds=1)
    return pa.Array.from_buffers(TS, n, [None, pa.py_buffer(array("q", [us]) * n)])


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class _Window:
    """One window's flows: identity -> row index; each row's identity (the window ids of its
    three addresses, ports, protocol) and counters in flat columns (the counters are handed
    to Arrow without a copy).

    The index is a CounterTable keyed by a hash of the identity (a 48-byte slot a flow
    instead of a dict entry and a 136-bit int), each hit checked against the row's identity;
    the one-in-2^64 colliding flow goes to `overflow`, keyed by the exact identity. Without
    the extension the index is a dict keyed by the exact identity."""

    __slots__ = ("idx", "overflow", "ip_ids", "info", "fa", "fb", "fc", "fports", "fproto",
                 "txb", "txp", "rxb", "rxp", "conns")

    def __init__(self) -> None:
        self.idx = CounterTable() if CounterTable is not None else {}
        self.overflow: dict[int, int] = {}
        self.ip_ids: dict[bytes, int] = {}   # packed IP -> id within this window
        self.info: list = []                 # id -> resolve() answer when first seen
        self.fa, self.fb, self.fc, self.fports = (array("I") for _ in range(4))
        self.fproto = array("B")
        self.txb, self.txp, self.rxb, self.rxp, self.conns = (array("q") for _ in range(5))


class StateError(Exception):
    """A saved accounter state that cannot be used (another boot, too old, damaged)."""


STATE_VERSION = 1
_REC = struct.Struct("<Q4Q")      # key (as unsigned), orig bytes, orig packets, reply bytes, reply packets
_CHUNK = 4096                     # records per write: the save never holds a second copy of the state


class Accounter:
    """Exact per-window deltas from cumulative samples. Not thread-safe: one poll loop owns it."""

    def __init__(self, resolve: Resolve | None = None) -> None:
        # live connections: key -> packed counters; 48 bytes an entry in a CounterTable,
        # ~100-250 in a dict (the same interface: get, pop, items, ...)
        self._state = CounterTable() if CounterTable is not None else {}
        self._missing: dict[int, int] = {}   # missing from the last dump: kept until the next one
        self._ended: dict[int, int] = {}     # ended in the latest drain (a dying entry may still be dumped)
        self._ended_prev: dict[int, int] = {}
        self._window = _Window()
        self.resolve = resolve
        self.last_cut: dict[str, int] = {}   # totals of the latest cut (for metrics and logs)
        self._baselined = False
        self._seen = 0
        self._count_unseen = False           # ended-but-never-dumped connections count in full
        self._stats = dict.fromkeys((
            "polls", "dumps", "drains", "entries", "baseline_entries", "new", "ended", "ended_unseen",
            "ended_before_start", "ended_duplicate", "forgotten", "resets", "dying_skipped",
            "transit_flows", "transit_bytes", "loopback_flows", "loopback_bytes", "flows_cut", "tx_bytes",
            "rx_bytes", "state_loaded", "state_saved"), 0)

    # ----------------------------------------------------------------- polling
    def poll(self, collector) -> None:
        """Drain ended connections, then dump the live table (see docs/agent-accounting.md)."""
        if not self._baselined:
            self.observe_ended(collector.drain_ended())   # ended before start: not ours
            self.observe_dump(collector.iter_dump())      # baseline
            self.observe_ended(collector.drain_ended())   # ended during the baseline dump
        else:
            self.observe_ended(collector.drain_ended())
            self.observe_dump(collector.iter_dump())
        self._stats["polls"] += 1

    def drain(self, collector) -> None:
        """Only the ended connections (their DESTROY carries the final counters): what the
        run loop does between dumps. Before the baseline this is a full poll."""
        if not self._baselined:
            self.poll(collector)
            return
        self.observe_ended(collector.drain_ended())
        self._stats["polls"] += 1

    @property
    def baselined(self) -> bool:
        return self._baselined

    def observe_dump(self, samples: Iterable[ConnSample]) -> None:
        """A full dump of live connections (cumulative counters).

        The state is updated in place: each dump flips the _SEEN parity bit it writes, and
        entries left with the old parity afterwards are the ones the dump did not show."""
        st = self._stats
        state = self._state
        missing = self._missing
        ended = self._ended
        ended_prev = self._ended_prev
        add = self._add
        seen = self._seen = self._seen ^ _SEEN
        baseline = not self._baselined
        key = conn_key
        touch = getattr(state, "touch4", None)  # CounterTable: the idle case without an allocation
        n = 0
        for s in samples:
            n += 1
            k = key(s)
            if touch is not None:
                last = touch(k, s[9], s[10], s[11], s[12], _SEEN, seen)
                if last is True:                # idle since the last dump (the common case)
                    continue
                cur = pack(s)
            else:
                cur = pack(s)
                last = state.get(k)
                if last is not None and last | _FLAGS == cur | _FLAGS:  # idle (the common case)
                    if last & _SEEN != seen:
                        state[k] = last ^ _SEEN
                    continue
            if last is not None:
                # (seen twice in one dump, when the table changes under it: same rule)
                state[k] = add(s, cur, last) | seen
                continue
            if missing:
                last = missing.pop(k, None)  # skipped by the last dump, back in this one: not new
            if last is None:
                if baseline:
                    state[k] = cur | seen
                    continue
                fin = ended.get(k)
                if fin is None:
                    fin = ended_prev.get(k)
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
        st["dumps"] += 1
        # missing from the previous dump and from this one, with no DESTROY: gone unseen
        st["forgotten"] += len(missing)
        # what this dump did not show keeps its counters until the next dump
        if not isinstance(state, dict):
            self._missing = state.take_unseen(_SEEN, seen)
        elif len(state) > n or any(v & _SEEN != seen for v in state.values()):
            gone = {k: v for k, v in state.items() if v & _SEEN != seen}
            for k in gone:
                del state[k]
            self._missing = gone
        else:
            self._missing = {}
        ended.clear()
        ended_prev.clear()

    def observe_ended(self, samples: Iterable[ConnSample]) -> None:
        """Connections that ended, with their final counters."""
        st = self._stats
        self._ended_prev, self._ended = self._ended, self._ended_prev
        self._ended.clear()
        ended, ended_prev = self._ended, self._ended_prev
        state, missing = self._state, self._missing
        for s in samples:
            k = conn_key(s)
            cur = pack(s)
            last = state.pop(k, None)
            if last is None and missing:
                last = missing.pop(k, None)
            if last is None:
                if k in ended or k in ended_prev:  # the same DESTROY twice
                    st["ended_duplicate"] += 1
                    continue
                if not self._count_unseen:  # ended before (or while) the baseline was taken
                    st["ended_before_start"] += 1
                    continue
                st["ended_unseen"] += 1
                last = 0
            st["ended"] += 1
            ended[k] = cur
            if last | _FLAGS != cur | _FLAGS:
                self._add(s, cur, last)
        st["drains"] += 1
        # from the first drain after the baseline on, a connection never dumped was born
        # after the baseline and counts in full
        self._count_unseen = self._baselined

    def _add(self, s: ConnSample, cur: int, last: int) -> int:
        """Log the delta cur - last in the window; returns the state value to keep (cur,
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
        w = self._window
        ids = w.ip_ids
        a, b, c = s.src, s.dst, s.reply_src
        ia = ids.get(a)
        if ia is None:
            ia = self._new_ip(w, a)
        ib = ids.get(b)
        if ib is None:
            ib = self._new_ip(w, b)
        ic = ids.get(c)
        if ic is None:
            ic = self._new_ip(w, c)
        ports = s.dport << 16 | s.reply_sport
        proto = s.proto
        idx = w.idx
        if isinstance(idx, dict):  # exact identity: proto, ports and the three address ids
            i = idx.get(proto | ports << 8 | ia << 40 | ib << 72 | ic << 104)
        else:
            h = hash((ia, ib, ic, ports, proto))
            i = idx.get(h)
            if i is not None and (w.fa[i] != ia or w.fb[i] != ib or w.fc[i] != ic or w.fports[i] != ports
                                  or w.fproto[i] != proto):
                # another flow with the same 64-bit hash: rows of colliding flows by exact identity
                h = None
                i = w.overflow.get(proto | ports << 8 | ia << 40 | ib << 72 | ic << 104)
        if i is None:
            i = len(w.txb)
            if isinstance(idx, dict):
                idx[proto | ports << 8 | ia << 40 | ib << 72 | ic << 104] = i
            elif h is not None:
                idx[h] = i
            else:
                w.overflow[proto | ports << 8 | ia << 40 | ib << 72 | ic << 104] = i
            w.fa.append(ia)
            w.fb.append(ib)
            w.fc.append(ic)
            w.fports.append(ports)
            w.fproto.append(proto)
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

    def _new_ip(self, w: _Window, packed: bytes) -> int:
        """A window id for an address seen for the first time in the window; its locality
        and pod are decided now (a pod deleted later in the window keeps its bytes)."""
        i = w.ip_ids[packed] = len(w.info)
        info = None
        if self.resolve is not None:
            try:
                info = self.resolve(packed)
            except Exception:  # noqa: BLE001 - decided again at the cut
                info = None
        w.info.append(info)
        return i

    # ----------------------------------------------------------------- output
    def cut(self, window_start: dt.datetime, window_end: dt.datetime, node: str,
            is_local: LocalTest | Iterable[str], lookup: Lookup | None = None) -> pa.Table:
        """The window's deltas as RAW_FLOWS rows (one per FLOW_KEY), then a fresh window.

        `is_local(ip: str) -> bool` (or a set of canonical IP strings): whether an address
        belongs to this node (its own addresses and its pods'); `lookup(ip)` -> (pod,
        namespace, host_network) or None names pods. Both complete what `resolve` decided
        when the address was first seen (an address local or named then stays so).
        direction = outbound if the originator is local, inbound if the real peer
        (reply_src) or the dialed address is local; neither = transit: dropped, counted in
        stats. Connections whose real peer is a loopback address never leave the node
        (health probes, a local proxy): dropped, counted.
        """
        window_start, window_end = as_utc(window_start), as_utc(window_end)
        test = is_local if callable(is_local) else frozenset(is_local).__contains__
        w, self._window = self._window, _Window()
        if not isinstance(self._state, dict):    # a new window: nobody counted yet
            self._state.clear_bit(_COUNTED)
        for d in (self._state, self._missing):
            if isinstance(d, dict):
                for k, v in d.items():
                    if v & _COUNTED:
                        d[k] = v ^ _COUNTED
        # per address: name, locality, loopback, pod (once per unique address, not per row)
        names, local, loop, pods, nss = [], array("b"), array("b"), [], []
        for packed, info in zip(w.ip_ids, w.info):
            name = ip_str(packed)
            names.append(name.encode())
            is_loc = bool(info and info[0]) or bool(test(name))
            local.append(is_loc)
            loop.append(_is_loopback(packed))
            pod = ns = None
            if info and info[1]:
                pod, ns = info[1], info[2]
            elif lookup is not None:
                hit = lookup(name)
                if hit and not hit[2]:  # hostNetwork pods carry the node's IP: the node's traffic
                    pod, ns = hit[0], hit[1]
            pods.append(pod.encode() if pod else None)
            nss.append(ns.encode() if ns else None)
        st = self._stats
        direction = array("b")   # 0 outbound, 1 inbound
        src, dst, odst = array("i"), array("i"), array("i")
        oport, dport, proto = array("i"), array("i"), array("h")
        keep: list[int] | None = None  # row indexes to keep, once a transit row was dropped
        w.idx = w.overflow = None  # the rows carry their identity: the index can go before the output is built
        fa, fb, fc, fports, fproto = w.fa, w.fb, w.fc, w.fports, w.fproto
        for i in range(len(fa)):
            ia, ib, ic = fa[i], fb[i], fc[i]
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
            proto.append(fproto[i])
            p = fports[i]
            oport.append(p >> 16)
            dport.append(p & 0xFFFF)
        w.fa = w.fb = w.fc = w.fports = w.fproto = None
        txb, txp, rxb, rxp, conns = w.txb, w.txp, w.rxb, w.rxp, w.conns
        if keep is not None:
            txb, txp, rxb, rxp, conns = (array("q", [col[i] for i in keep]) for col in (txb, txp, rxb, rxp, conns))
        n = len(src)
        tx, rx = sum(txb), sum(rxb)
        st["flows_cut"] += n
        st["tx_bytes"] += tx
        st["rx_bytes"] += rx
        self.last_cut = {"rows": n, "tx_bytes": tx, "rx_bytes": rx, "tx_packets": sum(txp), "rx_packets": sum(rxp)}
        cols = {
            "window_start": _repeat_ts(window_start, n),
            "window_end": _repeat_ts(window_end, n),
            "node": _repeat_string(node.encode(), n),
            "direction": _strings([(b"outbound", b"inbound")[d] for d in direction]),
            "src_ip": _strings([names[i] for i in src]),
            "dst_ip": _strings([names[i] for i in dst]),
            "orig_dst_ip": _strings([names[i] for i in odst]),
            "orig_dst_port": _ints(oport, pa.int32()),
            "dst_port": _ints(dport, pa.int32()),
            "proto": _ints(proto, pa.int16()),
            "tx_bytes": _ints(txb, pa.int64()),
            "tx_packets": _ints(txp, pa.int64()),
            "rx_bytes": _ints(rxb, pa.int64()),
            "rx_packets": _ints(rxp, pa.int64()),
            "connections": _ints(conns, pa.int64()),
        }
        if any(pods):
            cols["src_pod"] = _strings([pods[i] for i in src])
            cols["src_namespace"] = _strings([nss[i] for i in src])
            cols["dst_pod"] = _strings([pods[i] for i in dst])
            cols["dst_namespace"] = _strings([nss[i] for i in dst])
        else:  # no pod named (standalone, or none on this node): one shared all-null column
            cols["src_pod"] = cols["src_namespace"] = cols["dst_pod"] = cols["dst_namespace"] = _null_strings(n)
        return pa.Table.from_arrays([cols[f.name] for f in RAW_FLOWS], schema=RAW_FLOWS)

    def pending(self) -> int:
        """Flow rows accumulated in the current window (before the transit filter)."""
        return len(self._window.txb)

    def stats(self) -> dict[str, int]:
        out = dict(self._stats)
        out["state_entries"] = len(self._state) + len(self._missing)
        return out

    # ----------------------------------------------------------------- continuity
    def save_state(self, path: str, ident: dict, now: float | None = None) -> int:
        """Write the connections' last counted counters to `path` (atomically, fsynced), so a
        restarted agent continues from them instead of re-baselining. `ident` names what the
        state is valid for (boot, network namespace, node, collector). Returns entries written."""
        now = time.time() if now is None else now
        n = len(self._state) + len(self._missing)
        header = json.dumps({"version": STATE_VERSION, "ident": ident, "saved_at": now, "entries": n},
                            sort_keys=True).encode() + b"\n"
        tmp = f"{os.path.dirname(path) or '.'}/.tmp-state-{os.getpid()}"
        crc = 0
        rec = _REC.pack
        try:
            with open(tmp, "wb") as f:
                f.write(header)
                buf = bytearray()
                count = 0
                for d in (self._state, self._missing):
                    for k, v in d.items():
                        c = v >> 2
                        buf += rec(k & _M64, c & _M64, (c >> 64) & _M64, (c >> 128) & _M64, c >> 192)
                        count += 1
                        if count % _CHUNK == 0:
                            crc = zlib.crc32(buf, crc)
                            f.write(buf)
                            buf.clear()
                crc = zlib.crc32(buf, crc)
                f.write(buf)
                f.write(struct.pack("<IQ", crc, count))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(os.path.dirname(path) or ".")
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self._stats["state_saved"] += 1
        return n

    def load_state(self, path: str, ident: dict, max_age: float, now: float | None = None) -> int:
        """Continue from a state saved by `save_state`: the next dump counts from those
        counters (what the kernel counted while no agent ran included), connections not in
        it count in full. Raises StateError (and loads nothing) if the state is from another
        boot, namespace, node or collector, older than `max_age` seconds, or damaged.
        Must be called before the first poll. Returns the entries loaded."""
        if self._baselined:
            raise StateError("the accounter already has a baseline")
        now = time.time() if now is None else now
        try:
            with open(path, "rb") as f:
                header = json.loads(f.readline())
                body = f.read()
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            raise StateError(f"unreadable ({exc})") from None
        if not isinstance(header, dict) or header.get("version") != STATE_VERSION:
            raise StateError(f"format {header.get('version') if isinstance(header, dict) else '?'} is not {STATE_VERSION}")
        saved_ident = header.get("ident") or {}
        for k, v in ident.items():
            if saved_ident.get(k) != v:
                raise StateError(f"saved for {k} {saved_ident.get(k)!r}, this is {v!r}")
        age = now - float(header.get("saved_at", 0))
        if age > max_age:
            raise StateError(f"saved {age:.0f} s ago (more than {max_age:.0f} s)")
        if age < -60:
            raise StateError(f"saved {-age:.0f} s in the future")
        if len(body) < 12 or (len(body) - 12) % _REC.size:
            raise StateError("truncated")
        crc, count = struct.unpack_from("<IQ", body, len(body) - 12)
        data = memoryview(body)[:len(body) - 12]
        if count != len(data) // _REC.size or count != header.get("entries") or zlib.crc32(data) != crc:
            raise StateError("checksum mismatch")
        seen = self._seen = _SEEN   # the first dump flips the parity to 0: loaded entries it misses are missing
        state = self._state
        sign = 1 << 63
        for k, ob, op, rb, rp in _REC.iter_unpack(data):
            if k & sign:
                k -= 1 << 64
            state[k] = ((ob | op << 64 | rb << 128 | rp << 192) << 2) | seen
        del data, body
        self._baselined = True
        self._count_unseen = True
        self._stats["state_loaded"] = count
        return count


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_LOOPBACK6 = bytes(15) + b"\x01"


def _is_loopback(packed: bytes) -> bool:
    """127.0.0.0/8 or ::1: traffic that never leaves the node."""
    return packed[0] == 127 if len(packed) == 4 else packed == _LOOPBACK6

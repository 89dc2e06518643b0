"""Inventory as validity intervals: the compact form of an hour's snapshots its cells share.

An hour's context holds every inventory snapshot its windows may pick (docs/costing.md §1), a
row per pod per snapshot: at one snapshot a minute, sixty copies of nearly the same table. The
interval form keeps, for each lookup the resolution makes (pod by IP, hostNetwork pod by IP,
pod by namespace/name, node by name, node by IP, service by ClusterIP, endpoint by IP), the
row that wins each key in each snapshot under today's tie-breaks (Running pods before others,
internal node IPs before external ones, the smallest (namespace, service, port) endpoint, else
the last row in file and row order), and collapses consecutive snapshots in which a key has
the same winning row into one interval [valid_from, valid_to). The rows themselves are kept
once each (distinct attribute rows, snapshot_time dropped).

A lookup picks the snapshot exactly as before (the latest with snapshot_time <= window_end,
else the earliest: `Snapshots.snap_of`), then the interval of the key holding that snapshot:
the same row as the per-snapshot lookup, by construction. A key absent from a snapshot (a pod
deleted between snapshots, a gap in the snapshotter) has no interval there.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.inventory import Snapshots, ids_in, snapshot_of
from lake import schema as S

_SEP = "\x1f"  # joins namespace and name into one key (never in a Kubernetes name)


def _codes(col) -> np.ndarray:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    enc = pc.dictionary_encode(col)
    return enc.indices.cast(pa.int64()).fill_null(-1).to_numpy()


def _distinct_rows(table: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """(distinct rows without snapshot_time, distinct row id of each input row)."""
    t = table.drop_columns(["snapshot_time"])
    if t.num_rows == 0:
        return t, np.zeros(0, np.int64)
    codes = np.stack([_codes(t.column(c)) for c in t.column_names], axis=1)
    _, first, inverse = np.unique(codes, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")           # distinct rows in order of first appearance
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return t.take(pa.array(first[order])), rank[inverse.reshape(-1)]


@dataclass
class Lookup:
    """key -> payload over intervals of snapshot indices, sorted by (key, start)."""
    keys: pa.Array          # the distinct keys (strings); `key` holds positions in it
    key: np.ndarray
    start: np.ndarray       # first snapshot index of the interval
    stop: np.ndarray        # one past its last
    payload: np.ndarray
    n_snap: int

    @classmethod
    def build(cls, snap: np.ndarray, keys: pa.Array, key: np.ndarray, payload: np.ndarray, n_snap: int) -> "Lookup":
        """Entries given in ascending preference (the last entry of a (snapshot, key) wins, as
        in inventory.KeyLookup); keeps each (snapshot, key)'s winner, then merges consecutive
        snapshots with the same winner."""
        ok = (snap >= 0) & (key >= 0)
        snap, key, payload = snap[ok].astype(np.int64), key[ok].astype(np.int64), payload[ok].astype(np.int64)
        if len(key) == 0:
            e = np.zeros(0, np.int64)
            return cls(keys, e, e, e, e, n_snap)
        seq = np.arange(len(key))
        order = np.lexsort((seq, snap, key))
        snap, key, payload = snap[order], key[order], payload[order]
        last = np.ones(len(key), bool)
        last[:-1] = (key[1:] != key[:-1]) | (snap[1:] != snap[:-1])
        snap, key, payload = snap[last], key[last], payload[last]
        new = np.ones(len(key), bool)   # an interval starts where the key, the row or the run changes
        new[1:] = (key[1:] != key[:-1]) | (payload[1:] != payload[:-1]) | (snap[1:] != snap[:-1] + 1)
        starts = np.flatnonzero(new)
        ends = (np.append(starts[1:], len(key)) - 1).astype(np.int64)
        return cls(keys, key[starts], snap[starts], snap[ends] + 1, payload[starts], n_snap)

    def comp(self) -> np.ndarray:
        if not hasattr(self, "_comp"):
            self._comp = self.key * (self.n_snap + 1) + self.start
        return self._comp

    def query(self, snap: np.ndarray, kc: np.ndarray) -> np.ndarray:
        """Payload per (snapshot index, key code), -1 where no interval holds."""
        if len(self.key) == 0:
            return np.full(len(kc), -1, np.int64)
        ok = (snap >= 0) & (kc >= 0)
        q = np.where(ok, kc * (self.n_snap + 1) + snap, -1)
        pos = np.searchsorted(self.comp(), q, side="right") - 1
        p = np.maximum(pos, 0)
        hit = ok & (pos >= 0) & (self.key[p] == kc) & (self.stop[p] > snap)
        return np.where(hit, self.payload[p], -1)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.key, self.start, self.stop, self.payload)) + self.keys.nbytes

    def table(self, times: np.ndarray) -> pa.Table:
        """The intervals as rows: key, valid_from, valid_to (null: still open), payload."""
        t = times.astype("datetime64[us]")
        to = np.where(self.stop < len(times), self.stop, 0)
        return pa.table({"key": self.keys.take(pa.array(self.key)),
                         "valid_from": pa.array(t[self.start] if len(t) else np.zeros(0, "datetime64[us]"), S.TS),
                         "valid_to": pa.array(t[to] if len(t) else np.zeros(0, "datetime64[us]"), S.TS,
                                              mask=self.stop >= len(times)),
                         "row": pa.array(self.payload, pa.int64())})


@dataclass
class Kind:
    """One inventory kind: snapshot times, distinct rows, its lookups."""
    kind: str
    times: np.ndarray            # snapshot times (us), as Snapshots.times
    table: pa.Table              # distinct attribute rows
    lookups: dict[str, Lookup]

    def __len__(self) -> int:
        return len(self.times)

    def snap_of(self, window_end_us: np.ndarray) -> np.ndarray:
        return snapshot_of(self.times, window_end_us)

    def nbytes(self) -> int:
        return self.times.nbytes + self.table.nbytes + sum(lk.nbytes() for lk in self.lookups.values())


@dataclass
class Intervals:
    """The four kinds, and the node names the name-valued lookups point into."""
    pods: Kind
    services: Kind
    nodes: Kind
    endpoints: Kind
    names: pa.Array

    def nbytes(self) -> int:
        return sum(getattr(self, k).nbytes() for k in S.INVENTORY_KINDS) + self.names.nbytes


def _snap_index(s: Snapshots) -> np.ndarray:
    """Global snapshot index of each row of a Snapshots table."""
    return np.repeat(np.arange(len(s.times)), np.diff(s.bounds)) if len(s.times) else np.zeros(0, np.int64)


def _keyed(values) -> tuple[pa.Array, np.ndarray]:
    """(distinct non-null strings, position of each value in them or -1)."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    values = values.cast(pa.string())
    keys = pc.unique(values.drop_null())
    return keys, ids_in(values, keys)


def from_snapshots(pods: Snapshots, services: Snapshots, nodes: Snapshots, endpoints: Snapshots,
                   earlier: dict[str, np.ndarray] | None = None) -> Intervals:
    """The interval form of the four kinds' snapshots (tie-breaks as resolve.Inventory's).
    `earlier`: per kind, times of snapshots before the first one given whose rows are not
    needed (a carried state: the windows to resolve all end after its latest snapshot); they
    only count for inventory gaps (jobs/load.py), no lookup ever lands on them."""
    out = _from_snapshots(pods, services, nodes, endpoints)
    for kind, times in (earlier or {}).items():
        k = getattr(out, kind)
        first = k.times[0] if len(k.times) else np.iinfo(np.int64).max
        times = np.unique(np.asarray(times, np.int64))
        times = times[times < first]
        if len(times) == 0:
            continue
        k.times = np.concatenate([times, k.times])
        for lk in k.lookups.values():
            lk.start, lk.stop, lk.n_snap = lk.start + len(times), lk.stop + len(times), lk.n_snap + len(times)
    return out


def _from_snapshots(pods: Snapshots, services: Snapshots, nodes: Snapshots, endpoints: Snapshots) -> Intervals:
    P, N, Sv, E = pods.table, nodes.table, services.table, endpoints.table
    names = pc.unique(pa.concat_arrays([c.combine_chunks().cast(pa.string()) for c in
                                        (N.column("name"), P.column("node"), E.column("node"))]).drop_null())

    # pods: non-hostNetwork by IP and hostNetwork by IP (Running wins), by namespace/name
    g = _snap_index(pods)
    rows, rid = _distinct_rows(P)
    hostnet = pc.fill_null(P.column("host_network").combine_chunks(), False).to_numpy(zero_copy_only=False)
    running = pc.fill_null(pc.equal(P.column("phase").combine_chunks(), "Running"), False).to_numpy(zero_copy_only=False)
    order = np.lexsort((running,))
    ip_keys, ip = _keyed(P.column("ip"))
    node_id = ids_in(P.column("node"), names)
    o, h = order[~hostnet[order]], order[hostnet[order]]
    n = len(pods.times)
    both = pc.and_(pc.is_valid(P.column("namespace")), pc.is_valid(P.column("name")))
    nsname = pc.if_else(both, pc.binary_join_element_wise(P.column("namespace"), P.column("name"), _SEP),
                        pa.scalar(None, pa.string()))
    nn_keys, nn = _keyed(nsname)
    allrows = np.arange(P.num_rows)
    pk = Kind("pods", pods.times, rows, {
        "by_ip": Lookup.build(g[o], ip_keys, ip[o], rid[o], n),
        "hostnet_by_ip": Lookup.build(g[h], ip_keys, ip[h], node_id[h], n),
        "by_name": Lookup.build(g, nn_keys, nn, rid[allrows], n),
    })

    # nodes: by name (row), by external then internal IP (name id; internal wins)
    g = _snap_index(nodes)
    rows, rid = _distinct_rows(N)
    n = len(nodes.times)
    name_keys, nm = _keyed(N.column("name"))
    name_id = ids_in(N.column("name"), names)
    ips = pa.concat_arrays([N.column("external_ip").combine_chunks().cast(pa.string()),
                            N.column("internal_ip").combine_chunks().cast(pa.string())])
    nip_keys, nip = _keyed(ips)
    nk = Kind("nodes", nodes.times, rows, {
        "by_name": Lookup.build(g, name_keys, nm, rid, n),
        "by_ip": Lookup.build(np.concatenate([g, g]), nip_keys, nip, np.concatenate([name_id, name_id]), n),
    })

    # services by ClusterIP
    g = _snap_index(services)
    rows, rid = _distinct_rows(Sv)
    ck, cip = _keyed(Sv.column("cluster_ip"))
    sk = Kind("services", services.times, rows, {"by_ip": Lookup.build(g, ck, cip, rid, len(services.times))})

    # endpoints by IP: the smallest (namespace, service, port) wins, so it is given last
    g = _snap_index(endpoints)
    rows, rid = _distinct_rows(E)
    if E.num_rows:
        eorder = pc.sort_indices(E, sort_keys=[("namespace", "descending"), ("service", "descending"),
                                              ("port", "descending")]).to_numpy()
    else:
        eorder = np.zeros(0, np.int64)
    ek, eip = _keyed(E.column("ip"))
    ep = Kind("endpoints", endpoints.times, rows,
              {"by_ip": Lookup.build(g[eorder], ek, eip[eorder], rid[eorder], len(endpoints.times))})
    return Intervals(pods=pk, services=sk, nodes=nk, endpoints=ep, names=names)


def nsname_keys(ns_d: pa.Array, ns_code: np.ndarray, pod_d: pa.Array, pod_code: np.ndarray) -> pa.Array:
    """namespace/name keys (as `from_snapshots` builds them) of rows given as dictionary codes."""
    ok = (ns_code >= 0) & (pod_code >= 0)
    ns = ns_d.cast(pa.string()).take(pa.array(np.where(ok, ns_code, 0))) if len(ns_d) else pa.nulls(len(ok), pa.string())
    nm = pod_d.cast(pa.string()).take(pa.array(np.where(ok, pod_code, 0))) if len(pod_d) else pa.nulls(len(ok), pa.string())
    joined = pc.binary_join_element_wise(ns, nm, _SEP)
    return pc.if_else(pa.array(ok), joined, pa.scalar(None, pa.string()))

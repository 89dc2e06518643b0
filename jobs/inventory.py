"""As-of inventory: which snapshot of pods/services/nodes/endpoints describes a window.

Rule (docs/costing.md §1): for a window [start, end) use the latest snapshot with
snapshot_time <= end; if there is none, the earliest snapshot (the lake starts mid-stream).

`Snapshots` holds one kind's snapshots sorted by time. `KeyLookup` maps (snapshot, integer
key) pairs to a payload (a row number, a name id); keys are ids into a per-call dictionary
(of IP addresses or node names), so lookups over millions of rows are integer indexing.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lake import schema as S

#: dense (snapshot x key) tables up to this many cells, sorted keys + searchsorted beyond
DENSE_MAX = 1 << 22

SCHEMAS = {"pods": S.INV_PODS, "services": S.INV_SERVICES, "nodes": S.INV_NODES, "endpoints": S.INV_ENDPOINTS}


def to_us(col) -> np.ndarray:
    """A timestamp column as int64 microseconds since the epoch (UTC)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col.cast(S.TS, safe=False).cast(pa.int64()).fill_null(0).to_numpy()



def snapshot_of(times: np.ndarray, window_end_us: np.ndarray) -> np.ndarray:
    """Per window end, the index of the snapshot (sorted `times`) its as-of join takes: the
    last at or before it, else the first; -1 everywhere if there is no snapshot at all."""
    if len(times) == 0:
        return np.full(len(window_end_us), -1, np.int64)
    return np.maximum(np.searchsorted(times, window_end_us, side="right") - 1, 0)

class Snapshots:
    """One inventory kind, rows sorted by snapshot_time."""

    def __init__(self, kind: str, table: pa.Table | None):
        schema = SCHEMAS[kind]
        table = S.empty(schema) if table is None else S.conform(table, schema)
        table = table.sort_by("snapshot_time")
        ts = to_us(table.column("snapshot_time"))
        self.kind = kind
        self.table = table
        self.times, starts = np.unique(ts, return_index=True)
        self.bounds = np.append(starts, len(ts)).astype(np.int64)

    def __len__(self) -> int:
        return len(self.times)

    def snap_of(self, window_end_us: np.ndarray) -> np.ndarray:
        """Global snapshot index per window end (-1 if this kind has no snapshot at all)."""
        return snapshot_of(self.times, window_end_us)

    def select(self, snaps: np.ndarray) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        """Rows of the given unique global snapshots: (rows table, local snapshot per row,
        global->local map). Local snapshot numbers are positions in `snaps`."""
        g2l = np.full(max(len(self.times), 1), -1, np.int64)
        snaps = snaps[snaps >= 0]
        g2l[snaps] = np.arange(len(snaps))
        if len(snaps) == 0:
            return self.table.slice(0, 0), np.zeros(0, np.int64), g2l
        lens = self.bounds[snaps + 1] - self.bounds[snaps]
        rows = np.concatenate([np.arange(self.bounds[s], self.bounds[s + 1]) for s in snaps])
        local = np.repeat(np.arange(len(snaps)), lens)
        return self.table.take(pa.array(rows)), local, g2l


class KeyLookup:
    """(local snapshot, key id) -> payload int, -1 when absent (or when snapshot or key is -1).
    On duplicate pairs the entry given last wins: callers order entries by ascending preference.

    Dense layout: table[(key + 1) * (n_snap + 1) + snap + 1], whose row and column 0 hold -1,
    so a lookup is two multiply-adds and one gather with no masking."""

    def __init__(self, snap: np.ndarray, key: np.ndarray, payload: np.ndarray, n_snap: int, n_key: int):
        ok = (snap >= 0) & (key >= 0)
        snap, key, payload = snap[ok].astype(np.int64), key[ok].astype(np.int64), payload[ok].astype(np.int64)
        self.n_key = max(int(n_key), 1)
        self.stride = max(int(n_snap), 1) + 1
        self.dense = self.stride * (self.n_key + 1) <= DENSE_MAX
        if self.dense:
            self.table = np.full(self.stride * (self.n_key + 1), -1, np.int32)
            self.table[(key + 1) * self.stride + snap + 1] = payload  # numpy: the last write wins
        else:
            flat = snap * self.n_key + key
            order = np.argsort(flat, kind="stable")
            flat, payload = flat[order], payload[order]
            last = np.append(flat[1:] != flat[:-1], True)
            self.keys, self.values = flat[last], payload[last]

    def __call__(self, snap: np.ndarray, key: np.ndarray) -> np.ndarray:
        if self.dense:
            flat = key * self.stride
            flat += snap
            flat += self.stride + 1
            return self.table.take(flat)
        ok = (snap >= 0) & (key >= 0)
        flat = np.where(ok, snap * self.n_key + key, 0)
        if len(self.keys) == 0:
            return np.full(len(flat), -1, np.int64)
        pos = np.minimum(np.searchsorted(self.keys, flat), len(self.keys) - 1)
        return np.where(ok & (self.keys[pos] == flat), self.values[pos], -1)


def ids_in(values, dictionary: pa.Array) -> np.ndarray:
    """Position of each value in `dictionary` (int64), -1 for nulls and values not in it."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if len(values) == 0:
        return np.zeros(0, np.int64)
    return pc.index_in(values, value_set=dictionary, skip_nulls=True).fill_null(-1).to_numpy().astype(np.int64)

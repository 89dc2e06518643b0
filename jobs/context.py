"""The per-hour context every cell of an hour shares: as-of inventory and the DNS answers its
as-of lookups can pick (docs/costing.md §1 and §4, dst_domain).

Built once per hour (a task of its own), put in Ray's object store once, and read by each of
the hour's cells, instead of every cell reading a day of DNS files.

DNS is carried forward hour by hour instead of re-read. The lookup wants, for a flow of hour H
(window_end in (H, H + 1h + a window]), the latest answer for its destination IP within the
lookback, preferring the same client. Of all answers seen before H, only the latest one per
(client_ip, ip) can ever win such a lookup (ties broken by the greatest domain, as the lookup
does), so the **DNS state at the end of hour H-1** is:

    P(H-1) = latest answer per (client_ip, ip) among answers seen before H
             + every answer seen at or after H (from files of earlier hours; normally none)
             - answers seen before H - lookback (too old for any later lookup)

and hour H's lookups run over P(H-1) + the answers in DNS files of hours H and H+1 (a window
starting in H may end in H+1). P(H) = the same reduction of P(H-1) + hour H's files, so a run
reads each DNS file about twice, never a day of them per hour. P(H) is persisted at
`_state/context/dns/date=D/HH.parquet` with a digest of the DNS files (paths, sizes, mtimes)
of the hours it depends on ([H - lookback, H]); the next run starts from it when the digest
still matches, and otherwise rebuilds the state from those hours' files (a cold start, what
every hour cost before).

The inventory is carried the same way, in its compact form: an hour's context holds its
snapshots as validity intervals (jobs/intervals.py), and what the next hour needs of the
snapshots before it is only the latest one (every window of the next hour ends after it) and
the times of the last hour's snapshots (inventory gaps, jobs/load.py). That is the
**inventory state at the end of hour H** (`inventory_state`), handed to the next hour's
context and persisted at `_state/context/inventory/<kind>/date=D/HH.parquet` with a digest of
the snapshot files it stands for (names, from the listing); the next hour then reads only its
own snapshot files. Without a usable state an hour reads the snapshots discovery selected for
it, as before (a cold start). Either way a window resolves against the same snapshot.

A late DNS file for hour K changes the answers hours K .. K + lookback could pick. Hour K is
recomputed (the file is one of its inputs), and its new state is rolled forward through the
later hours (`tasks.roll_dns`): each later hour's state is rebuilt from the previous one and
its own files, and the names of its committed cost rows are looked up again; only rows whose
dst_domain or dst_cname change are re-costed (jobs/rename.py), only parts holding such rows
are rewritten, and only hours with such parts are committed again. The roll stops at the
first hour whose state comes out unchanged (the hours after it see the same state as
before), and at the lookback's end. Not re-named: hour K-1's windows that end in hour K and
could pick a late answer of hour K (only an answer seen exactly at the hour boundary, with the
agent's aligned 60 s windows).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lake import schema as S

HOUR = dt.timedelta(hours=1)
DIGEST_META = b"netmon.dns_inputs"


def state_path(hour: dt.datetime) -> str:
    """Where the DNS state at the end of `hour` is kept."""
    return f"{S.STATE_DIR}/context/dns/date={hour:%Y-%m-%d}/{hour:%H}.parquet"


def inputs_digest(files: dict[str, object], lookback: dt.timedelta) -> str:
    """Digest of the DNS files (rel path -> FileSig) a state depends on, and the lookback."""
    h = hashlib.sha256(f"lookback={lookback.total_seconds()}\n".encode())
    for rel in sorted(files):
        sig = files[rel]
        h.update(f"{rel}\t{getattr(sig, 'size', 0)}\t{getattr(sig, 'mtime_ns', 0)}\n".encode())
    return h.hexdigest()


def _seen_us(t: pa.Table) -> np.ndarray:
    seen = pc.coalesce(t.column("seen_at"), t.column("window_end"))
    return seen.cast(pa.int64()).fill_null(np.iinfo(np.int64).min).to_numpy()


def _codes(col) -> np.ndarray:
    """Integer codes of a string column, nulls as -1 (equal values, equal codes)."""
    enc = pc.dictionary_encode(col).combine_chunks() if isinstance(col, pa.ChunkedArray) else pc.dictionary_encode(col)
    return enc.indices.cast(pa.int64()).fill_null(-1).to_numpy()


def reduce_answers(answers: pa.Table, boundary: dt.datetime, lookback: dt.timedelta) -> pa.Table:
    """The DNS state at `boundary` from raw DNS rows (RAW_DNS): the latest answer per
    (client_ip, ip) seen before it, every answer seen at or after it, nothing older than
    boundary - lookback, and no row the lookup ignores (null ip, domain or time)."""
    t = S.conform(answers, S.RAW_DNS)
    if t.num_rows == 0:
        return t
    seen = _seen_us(t)
    b_us = int(S.as_utc(boundary).timestamp() * 1_000_000)
    lb_us = int(lookback.total_seconds() * 1_000_000)
    usable = pc.and_(pc.is_valid(t.column("ip")), pc.is_valid(t.column("domain"))).to_numpy(zero_copy_only=False)
    usable &= seen >= b_us - lb_us
    t, seen = t.filter(pa.array(usable)), seen[usable]
    if t.num_rows == 0:
        return t
    before = seen < b_us
    late = np.flatnonzero(~before)
    idx = np.flatnonzero(before)
    if len(idx) == 0:
        return t
    sub = t.take(pa.array(idx))
    client, ip = _codes(sub.column("client_ip")), _codes(sub.column("ip"))
    dom = pc.dictionary_encode(pc.utf8_lower(sub.column("domain"))).combine_chunks()
    names = np.array(dom.dictionary.to_pylist(), dtype=object)
    rank = np.argsort(np.argsort(names))[dom.indices.to_numpy()] if len(names) else np.zeros(0, np.int64)
    # latest first within each (client, ip): by seen, then the greatest domain (the lookup's tie-break)
    order = np.lexsort((-rank, -seen[idx], ip, client))
    c, i = client[order], ip[order]
    first = np.ones(len(order), bool)
    first[1:] = (c[1:] != c[:-1]) | (i[1:] != i[:-1])
    keep = np.sort(idx[order[first]])
    return t.take(pa.array(np.concatenate([keep, late]).astype(np.int64)))


_STATE_KEY = ["client_ip", "ip", "seen_at", "domain", "window_end", "node", "ttl_s"]


def same_state(a: pa.Table | None, b: pa.Table | None) -> bool:
    """Whether two DNS states hold the same answers (in any order; metadata ignored)."""
    if a is None or b is None:
        return False
    a, b = S.conform(a, S.RAW_DNS), S.conform(b, S.RAW_DNS)
    if a.num_rows != b.num_rows:
        return False
    key = [(k, "ascending") for k in _STATE_KEY]
    return a.sort_by(key).equals(b.sort_by(key))


def inventory_state_path(kind: str, hour: dt.datetime) -> str:
    """Where the inventory state (one kind) at the end of `hour` is kept."""
    return f"{S.STATE_DIR}/context/inventory/{kind}/date={hour:%Y-%m-%d}/{hour:%H}.parquet"


TIMES_META = b"netmon.snapshot_times"
INV_LOOKBACK = dt.timedelta(hours=1)  # snapshot times kept for the next hour's gap check


def inventory_state(snaps, earlier: np.ndarray | None, boundary: dt.datetime) -> tuple[pa.Table, np.ndarray]:
    """One kind's state at `boundary` from its Snapshots (jobs/inventory.py) and the times of
    earlier snapshots it no longer holds: (rows of the latest snapshot before the boundary,
    times of the snapshots in the hour before it and of that latest one)."""
    b_us = int(S.as_utc(boundary).timestamp() * 1_000_000)
    times = np.unique(np.concatenate([np.asarray(earlier if earlier is not None else [], np.int64),
                                      snaps.times.astype(np.int64)]))
    j = int(np.searchsorted(snaps.times, b_us, side="left")) - 1
    keep = (times >= b_us - int(INV_LOOKBACK.total_seconds() * 1_000_000)) & (times < b_us)
    if j < 0:
        return snaps.table.slice(0, 0), times[keep]
    rows = snaps.table.slice(int(snaps.bounds[j]), int(snaps.bounds[j + 1] - snaps.bounds[j]))
    return rows, np.unique(np.append(times[keep], snaps.times[j]))


def inventory_digest(index: dict[str, list], hour: dt.datetime) -> str:
    """Digest of the snapshot files the inventory state at the end of `hour` stands for: per
    kind, those named in the hour and the latest named before its end (`index`: kind ->
    sorted (time, path), discovery's listing)."""
    h = hashlib.sha256(b"inventory\n")
    end = hour + HOUR
    for kind in S.INVENTORY_KINDS:
        items = index.get(kind, [])
        before = [p for t, p in items if t < end]
        mine = [p for t, p in items if hour <= t < end]
        for rel in sorted(set(mine + before[-1:])):
            h.update(f"{kind}\t{rel}\n".encode())
    return h.hexdigest()


def with_times(table: pa.Table, times: np.ndarray, digest: str) -> pa.Table:
    meta = dict(table.schema.metadata or {})
    meta[TIMES_META] = json.dumps([int(x) for x in times]).encode()
    return with_digest(table.replace_schema_metadata(meta), digest)


def times_of(table: pa.Table) -> np.ndarray:
    raw = (table.schema.metadata or {}).get(TIMES_META)
    return np.array(json.loads(raw) if raw else [], np.int64)


def with_digest(state: pa.Table, digest: str) -> pa.Table:
    meta = dict(state.schema.metadata or {})
    meta[DIGEST_META] = digest.encode()
    return state.replace_schema_metadata(meta)


def digest_of(state: pa.Table) -> str | None:
    raw = (state.schema.metadata or {}).get(DIGEST_META)
    return raw.decode() if raw else None


def dns_hours_for(hour: dt.datetime, lookback: dt.timedelta) -> list[dt.datetime]:
    """Hours whose DNS files the state at the end of `hour` depends on: [hour - lookback, hour]."""
    n = int(np.ceil(lookback.total_seconds() / 3600))
    return [hour - k * HOUR for k in range(n, -1, -1)]


def describe(plan_meta: dict) -> str:
    """One line for logs: what a context was built from."""
    return json.dumps(plan_meta, sort_keys=True, default=str)

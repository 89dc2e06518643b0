"""Load raw lake files for the cost job: read, check against the contract, quarantine the bad.

Two kinds of failure, handled differently:
- the *storage* failed (throttling, a reset or stalled connection, a timeout, an I/O error):
  the read is retried with backoff (the lake's RetryPolicy) and, if it keeps failing, a
  StorageError fails the hour that needed the file. Nothing is quarantined; the hour's record
  is not written, so the next run computes it again.
- the *contents* are wrong: the file is moved (copy, then delete) to
  `_quarantine/<original relative path>` with `<that path>.reason.json` beside it, and the run
  carries on without it. `netmon-jobs release` moves it back after a fix.
A file is fetched whole before it is parsed, so the two cannot be confused: any error while
fetching is the storage's, any error while parsing the fetched bytes is the file's.

Checks (table -> table, raising InvalidFile with a machine-readable reason):
- unreadable: not Parquet, truncated;
- schema: a required column missing, a column that does not cast to the contract type
  (lake.schema.conform), a null in a required column, an unknown `direction`;
- negative_counter: a byte, packet or connection delta below zero;
- bad_window: window_end <= window_start;
- wrong_hour: rows whose window_start is not in the hour the file's name says;
- identity checks (jobs/identity.py): rows of another node or window than the name says,
  a name that disagrees with its partition directories, windows in the future or beyond the
  horizon, and copies of another file under a second name;
- bad_name: a name that does not follow `<kind>-<node>-<YYYYMMDDTHHMMSSZ>.parquet`, so the
  file's node and window (its identity, used to drop duplicate uploads) are unknown.
"""
from __future__ import annotations

import datetime as dt
import json
import posixpath

from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs import identity
from lake import schema as S
from lake.storage import Lake, StorageError, one_line

HOUR = dt.timedelta(hours=1)

#: Columns a raw file must carry (the others are nullable enrichments the agent may lack).
REQUIRED = {
    "raw/flows": (
        "window_start", "window_end", "node", "direction", "src_ip", "dst_ip", "orig_dst_ip",
        "orig_dst_port", "dst_port", "proto", "tx_bytes", "tx_packets", "rx_bytes", "rx_packets",
    ),
    "raw/dns": ("window_start", "window_end", "node", "client_ip", "domain", "ip", "seen_at"),
}
COUNTERS = {
    "raw/flows": ("tx_bytes", "tx_packets", "rx_bytes", "rx_packets", "connections"),
    "raw/dns": (),
}


#: reason of an inventory snapshot that could not be read (skipped, not quarantined)
SKIPPED_INVENTORY = "inventory_unreadable"
#: longest stretch of an hour an inventory kind may go without a readable snapshot
#: (snapshots come every 60 s): beyond it the hour is costed with `inventory_gap` set
INVENTORY_MAX_GAP = dt.timedelta(minutes=10)
#: a window may use a snapshot taken up to one window after its start
_SNAPSHOT_LEAD = dt.timedelta(seconds=60)


class InvalidFile(Exception):
    """A raw file the job cannot use; `reason` is one word, the message says what is wrong."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def table_of(rel: str) -> str:
    """'raw/flows' or 'raw/dns' for a raw file's relative path."""
    parts = rel.split("/")
    return "/".join(parts[:2])


def file_hour(rel: str) -> dt.datetime:
    """The hour a raw file belongs to (the hour of its window_start, from its name)."""
    parsed = S.parse_raw_file_name(rel)
    if parsed is None:
        raise InvalidFile("bad_name", f"file name {posixpath.basename(rel)!r} does not follow "
                          "<kind>-<node>-<YYYYMMDDTHHMMSSZ>.parquet, so its node and window are unknown")
    return parsed[2].replace(minute=0, second=0, microsecond=0)


def check(table: pa.Table, table_name: str, hour: dt.datetime | None = None) -> pa.Table:
    """Conform `table` to the contract schema of `table_name`, or raise InvalidFile."""
    missing = [c for c in REQUIRED[table_name] if c not in table.column_names]
    if missing:
        raise InvalidFile("schema", f"missing required column(s) {', '.join(missing)}")
    try:
        out = S.conform(table, S.TABLES[table_name].schema)
    except ValueError as exc:
        raise InvalidFile("schema", str(exc)) from exc
    for c in REQUIRED[table_name]:
        if out.column(c).null_count:
            raise InvalidFile("schema", f"column {c!r} has {out.column(c).null_count} null value(s)")
    if out.num_rows == 0:
        return out
    for c in COUNTERS[table_name]:
        col = out.column(c)
        if col.null_count < len(col) and pc.min(col).as_py() < 0:
            n = pc.sum(pc.less(col, 0)).as_py()
            raise InvalidFile("negative_counter", f"column {c!r} has {n} negative value(s)")
    if table_name == "raw/flows":
        bad = pc.sum(pc.invert(pc.is_in(out.column("direction"), pa.array(S.DIRECTIONS)))).as_py()
        if bad:
            raise InvalidFile("schema", f"column 'direction' has {bad} value(s) not in {S.DIRECTIONS}")
    n_bad = pc.sum(pc.less_equal(out.column("window_end"), out.column("window_start"))).as_py()
    if n_bad:
        raise InvalidFile("bad_window", f"{n_bad} row(s) with window_end <= window_start")
    if hour is not None:
        lo = pa.scalar(hour, S.TS)
        hi = pa.scalar(hour + HOUR, S.TS)
        ws = out.column("window_start")
        outside = pc.sum(pc.or_(pc.less(ws, lo), pc.greater_equal(ws, hi))).as_py()
        if outside:
            raise InvalidFile("wrong_hour", f"{outside} row(s) with window_start outside {hour:%Y-%m-%dT%H}:00Z, "
                              "the hour the file name says")
    return out


def read_checked(lake: Lake, rel: str) -> pa.Table:
    """Read one raw file and check it; raises InvalidFile (FileNotFoundError if it vanished)."""
    table_name = table_of(rel)
    if table_name not in REQUIRED:
        raise InvalidFile("bad_name", f"{rel!r} is not under raw/flows or raw/dns")
    hour = file_hour(rel)
    data = fetch(lake, rel)  # StorageError / FileNotFoundError propagate: not the file's fault
    try:
        table = parse_parquet(data)
    except Exception as exc:  # noqa: BLE001 - the bytes arrived; they are not a Parquet file
        raise InvalidFile("unreadable", one_line(exc)) from exc
    out = check(table, table_name, hour)
    identity.check_rows(out, rel, lake.exists)
    return out


def fetch(lake: Lake, rel: str) -> bytes:
    """A whole raw file's bytes, retried on transient storage errors (raw files are small: one
    request each is also the fastest way to read them from an object store)."""
    data = lake.read_bytes(rel)
    if data is None:
        raise FileNotFoundError(rel)
    return data


def parse_parquet(data: bytes) -> pa.Table:
    return pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)


def read_parquet(lake: Lake, rel: str) -> pa.Table:
    """One small Parquet file: fetched whole (storage errors retried, then StorageError), then
    parsed (a ValueError/OSError from pyarrow means the contents are bad)."""
    return parse_parquet(fetch(lake, rel))


def _map(lake: Lake, fn, rels: list[str]) -> list:
    """fn over files, with a few threads on object stores (latency-bound), serially on local disk."""
    if len(rels) > 1 and not isinstance(lake.fs, pafs.LocalFileSystem):
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(fn, rels))
    return [fn(r) for r in rels]


def quarantine(lake: Lake, rel: str, reason: str, error: str, failed: list[dict] | None = None) -> str:
    """Move `rel` to `_quarantine/<rel>` with a `.reason.json`; returns the quarantine path.

    Safe when two workers quarantine the same file: the copy and the reason are rewritten with
    the same content and the delete ignores a file already gone."""
    dest = f"{S.QUARANTINE_DIR}/{rel}"
    try:
        lake.copy(rel, dest)
    except FileNotFoundError:
        if not lake.exists(dest):
            raise
    except OSError:
        if not lake.exists(rel) and lake.exists(dest):
            pass  # another worker moved it first
        else:
            raise
    note = {
        "path": rel,
        "reason": reason,
        "error": error,
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if failed:
        note["failed_expectations"] = failed
    lake.write_bytes(dest + ".reason.json", (json.dumps(note, indent=1) + "\n").encode())
    lake.delete(rel)
    return dest


def _try_read(lake: Lake, rel: str):
    try:
        return read_checked(lake, rel)
    except FileNotFoundError:
        return None
    except InvalidFile as exc:
        return exc


def load_files(lake: Lake, rels: list[str], table_name: str, validate: bool = True,
               move: bool = True) -> tuple[pa.Table, list[dict]]:
    """Read and check each file; quarantine the bad ones. Returns (concatenated table,
    [{path, reason, error}] for the files quarantined). Files that vanished are skipped.

    Two gates: the contract (read_checked: readable, schema, counters, windows), then, with
    `validate`, the data-quality rules of jobs/quality.py checked by great-expectations over
    all files at once; a file breaking a critical rule is quarantined with the failed
    expectations recorded in its reason file. With `move` False the bad files are left where
    they are (and still reported): for a task reading files another task owns, which
    quarantines them."""
    tables, names, bad = [], [], []
    try:
        results = _map(lake, lambda r: _try_read(lake, r), rels)
    except StorageError as exc:
        raise StorageError(f"{exc}; nothing of its hour was published, the next run retries it") from exc
    for rel, got in zip(rels, results):
        if got is None:
            continue
        if isinstance(got, InvalidFile):
            if move:
                quarantine(lake, rel, got.reason, str(got))
            bad.append({"path": rel, "reason": got.reason, "error": str(got)})
        else:
            tables.append(got)
            names.append(rel)
    schema = S.TABLES[table_name].schema
    if not tables:
        return schema.empty_table(), bad
    if validate:
        tables, bad_values = _quality_gate(lake, table_name, tables, names, move)
        bad += bad_values
        if not tables:
            return schema.empty_table(), bad
    return pa.concat_tables(tables), bad


def _quality_gate(lake: Lake, table_name: str, tables: list[pa.Table], names: list[str], move: bool = True):
    from jobs import quality  # noqa: PLC0415 - great-expectations is heavy; import where used

    idx = pa.concat_arrays([pa.repeat(pa.scalar(i, pa.int32()), t.num_rows) for i, t in enumerate(tables)])
    together = pa.concat_tables(tables).append_column("_file", idx)
    check = quality.check_raw_flows if table_name == "raw/flows" else quality.check_raw_dns
    per_file: dict[int, list] = {}
    for f in quality.critical(check(together, by="_file")):
        per_file.setdefault(int(f.file), []).append(f)
    bad = []
    for i, fails in sorted(per_file.items()):
        error = "; ".join(f.describe() for f in fails)
        if move:
            quarantine(lake, names[i], "expectations", error, [f.as_dict() for f in fails])
        bad.append({"path": names[i], "reason": "expectations", "error": error})
    return [t for i, t in enumerate(tables) if i not in per_file], bad


def read_inventory(lake: Lake, rels: list[str], kind: str) -> tuple[pa.Table, list[dict]]:
    """Read inventory snapshots, conformed to the contract. A snapshot whose contents are bad is
    skipped and reported (not quarantined: several hours share it, and the next snapshot
    supersedes it); storage errors are retried, then raise StorageError (the hour fails)."""
    schema = S.TABLES[f"inventory/{kind}"].schema

    def one(rel):
        try:
            data = fetch(lake, rel)
        except FileNotFoundError:
            return {"path": rel, "reason": SKIPPED_INVENTORY, "error": "vanished while the job ran"}
        try:
            return S.conform(parse_parquet(data), schema)
        except Exception as exc:  # noqa: BLE001 - reported, the run goes on with the rest
            return {"path": rel, "reason": SKIPPED_INVENTORY, "error": one_line(exc)}

    got = _map(lake, one, rels)
    tables = [g for g in got if isinstance(g, pa.Table)]
    bad = [g for g in got if isinstance(g, dict)]
    if not tables:
        return schema.empty_table(), bad
    return pa.concat_tables(tables), bad


def inventory_gaps(inv: dict[str, pa.Table | None], hour: dt.datetime,
                   max_gap: dt.timedelta = INVENTORY_MAX_GAP) -> list[str]:
    """Inventory kinds that leave part of `hour` uncovered: a moment t of the hour is covered
    when a readable snapshot was taken in [t - max_gap, t + one window]. `inv`: the snapshots
    the hour's as-of joins were given (unreadable ones already left out), by kind."""
    times = {}
    for kind in S.INVENTORY_KINDS:
        t = inv.get(kind)
        times[kind] = [] if t is None or t.num_rows == 0 else [
            S.as_utc(x) for x in pc.unique(t.column("snapshot_time")).to_pylist()]
    return gaps_of_times(times, hour, max_gap)


def context_gaps(ctx, hour: dt.datetime, max_gap: dt.timedelta = INVENTORY_MAX_GAP) -> list[str]:
    """inventory_gaps of a pipeline Context (its per-kind Snapshots keep their times in us)."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    times = {k: [epoch + dt.timedelta(microseconds=int(us)) for us in getattr(ctx, k).times]
             for k in S.INVENTORY_KINDS}
    return gaps_of_times(times, hour, max_gap)


def gaps_of_times(times: dict[str, list[dt.datetime]], hour: dt.datetime,
                  max_gap: dt.timedelta = INVENTORY_MAX_GAP) -> list[str]:
    lo, hi = hour, hour + HOUR
    out = []
    for kind in S.INVENTORY_KINDS:
        covered_to = lo
        for s in sorted(times.get(kind, [])):
            if s - _SNAPSHOT_LEAD > covered_to:
                break  # a hole before this snapshot
            covered_to = max(covered_to, s + max_gap)
            if covered_to >= hi:
                break
        if covered_to < hi:
            out.append(kind)
    return out

"""Publishing an hour: staged parts, one commit record, roll-forward (docs/publishing.md).

An hour's output is written under `_state/staging/<token>/...` (no reader looks there), then
its commit record `_state/hours/date=D/HH.json` is written whole: **that write is the commit
point**. The record lists the hour's final part names; rolling forward moves the staged parts
to those names and deletes the parts of the hour the record does not list (the previous
generation). A crash before the record leaves only staging garbage; a crash after it is
finished by `recover` at the next lease acquisition, from the record alone.

Readers never guess: `jobs/catalog.current_files` returns exactly the parts records list, and
the commit writes a Hive symlink manifest per hour for Athena/Trino.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs

from jobs import state as st
from jobs.errors import JobError
from lake import schema as S
from lake.storage import Lake

HOURS_DIR = f"{S.STATE_DIR}/hours"
STAGING_DIR = f"{S.STATE_DIR}/staging"
PARTIALS_DIR = f"{S.STATE_DIR}/partials"
SYMLINK_DIR = "costs/flows/_symlink_format_manifest"
FLOWS = "costs/flows"
UTC = dt.timezone.utc


# ---------------------------------------------------------------------------------- names

def record_path(hour: dt.datetime) -> str:
    return f"{HOURS_DIR}/date={hour:%Y-%m-%d}/{hour:%H}.json"


def part_path(hour: dt.datetime, token: int, cell: int = 0, table: str = FLOWS) -> str:
    """Final name of one part of an hour's partition (several cells: several parts)."""
    return f"{S.TABLES[table].partition_dir(hour)}/part-{token:08d}-{cell:04d}.parquet"


def partial_path(rollup: str, hour: dt.datetime, token: int) -> str:
    """Final name of an hour's rollup partial (`parts` key `partials/<rollup>`)."""
    return f"{PARTIALS_DIR}/{rollup}/date={hour:%Y-%m-%d}/hour={hour:%H}/{token:08d}.parquet"


def staged(token: int, final_rel: str) -> str:
    """Where a run with `token` writes a part before its hour is committed."""
    return f"{STAGING_DIR}/{token:08d}/{final_rel}"


def hour_dir(hour: dt.datetime, table: str = FLOWS) -> str:
    return S.TABLES[table].partition_dir(hour)


def symlink_manifest_path(hour: dt.datetime) -> str:
    return f"{SYMLINK_DIR}/date={hour:%Y-%m-%d}/hour={hour:%H}/manifest"


def write_part(lake: Lake, token: int, final_rel: str, table: pa.Table) -> str:
    """Write `table` to the staging name of `final_rel`; returns `final_rel` (for the record)."""
    lake.write_table(staged(token, final_rel), table)
    return final_rel


# -------------------------------------------------------------------------------- records

@dataclass
class HourRecord:
    """What one hour's published output is (the JSON of `_state/hours/date=D/HH.json`).

    `inputs`: raw files (rel path -> size, mtime) the hour was computed from; `parts`: per
    output kind (`costs/flows`, `partials/<rollup>`), the final part names; `tier_*`: the
    hour's tier volumes and the month-to-date tier state before and after it (opaque dicts
    of the pricing module, stored as given)."""
    hour: dt.datetime
    inputs: dict[str, st.FileSig] = field(default_factory=dict)
    parts: dict[str, list[str]] = field(default_factory=dict)
    rows_in: int = 0
    rows_out: int = 0
    kept_bytes: int = 0
    quarantined: list[str] = field(default_factory=list)
    tier_volumes: list[list] = field(default_factory=list)   # [[pool, window id, bytes], ...]
    tier_state_before: dict = field(default_factory=dict)
    tier_state_after: dict = field(default_factory=dict)
    flags: dict = field(default_factory=dict)
    token: int = 0
    committed_at: str = ""

    def to_json(self) -> dict:
        return {
            "hour": st.hour_id(self.hour), "token": self.token, "committed_at": self.committed_at,
            "inputs": {p: s.to_json() for p, s in sorted(self.inputs.items())},
            "parts": {k: sorted(v) for k, v in sorted(self.parts.items())},
            "rows_in": self.rows_in, "rows_out": self.rows_out, "kept_bytes": self.kept_bytes,
            "quarantined": sorted(self.quarantined),
            "tier_volumes": [list(v) for v in self.tier_volumes],
            "tier_state_before": self.tier_state_before, "tier_state_after": self.tier_state_after,
            "flags": self.flags,
        }

    @classmethod
    def from_json(cls, d: dict) -> "HourRecord":
        return cls(
            hour=st.parse_hour_id(d["hour"]), token=int(d["token"]), committed_at=str(d.get("committed_at", "")),
            inputs={p: st.FileSig(int(s["size"]), int(s["mtime_ns"])) for p, s in d.get("inputs", {}).items()},
            parts={k: [str(p) for p in v] for k, v in d.get("parts", {}).items()},
            rows_in=int(d.get("rows_in", 0)), rows_out=int(d.get("rows_out", 0)),
            kept_bytes=int(d.get("kept_bytes", 0)), quarantined=list(d.get("quarantined", [])),
            tier_volumes=[list(v) for v in d.get("tier_volumes", [])],
            tier_state_before=dict(d.get("tier_state_before", {})),
            tier_state_after=dict(d.get("tier_state_after", {})), flags=dict(d.get("flags", {})),
        )

    def all_parts(self) -> list[str]:
        return sorted(p for ps in self.parts.values() for p in ps)

    def changed_inputs(self, current: dict[str, st.FileSig]) -> list[str]:
        """Files of `current` that are new or differ from what this hour was computed from.
        A file that disappeared (retention, quarantine) does not count: costs stay."""
        return sorted(p for p, s in current.items() if self.inputs.get(p) != s)


def read_record(lake: Lake, hour: dt.datetime) -> HourRecord | None:
    """The hour's record; None if it has none. A damaged record reads as none (the hour is
    recomputed), never as an empty hour."""
    data = lake.read_bytes(record_path(hour))
    if data is None:
        return None
    try:
        rec = HourRecord.from_json(json.loads(data))
    except (ValueError, KeyError, TypeError):
        return None
    return rec if rec.hour == hour else None


def read_records(lake: Lake, hours) -> dict[dt.datetime, HourRecord]:
    """Records of `hours` (those that exist), read concurrently (small GETs)."""
    hours = sorted(set(hours))
    if not hours:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(hours))) as pool:
        got = list(pool.map(lambda h: read_record(lake, h), hours))
    return {h: r for h, r in zip(hours, got) if r is not None}


def recorded_hours(lake: Lake, day: dt.date | None = None) -> list[dt.datetime]:
    """Hours with a record, from listing (one date directory, or all: readers, validate)."""
    rel = f"{HOURS_DIR}/date={day:%Y-%m-%d}" if day is not None else HOURS_DIR
    out = []
    for info in lake.list_files(rel, suffix=".json"):
        parts = lake.rel(info.path).split("/")
        try:
            out.append(dt.datetime.strptime(f"{parts[-2][5:]}T{parts[-1][:2]}", "%Y-%m-%dT%H").replace(tzinfo=UTC))
        except (ValueError, IndexError):
            continue
    return sorted(out)


def newest_recorded_hour(lake: Lake) -> dt.datetime | None:
    """The latest hour with a record: two listings (the date directories, then the last
    one's records), whatever the lake's age."""
    sel = pafs.FileSelector(lake.path(HOURS_DIR), recursive=False, allow_not_found=True)
    days = []
    for info in lake.call(lambda: lake.fs.get_file_info(sel), f"listing {HOURS_DIR}/"):
        name = posixpath.basename(info.path.rstrip("/"))
        if info.type == pafs.FileType.Directory and name.startswith("date="):
            try:
                days.append(dt.date.fromisoformat(name[5:]))
            except ValueError:
                continue
    for day in sorted(days, reverse=True):
        hours = recorded_hours(lake, day)
        if hours:
            return hours[-1]
    return None


def records_of_month(lake: Lake, month: str) -> dict[dt.datetime, HourRecord]:
    """Every record of a month: one listing per day of the month, then the records (used to
    rebuild a lost ledger, never by a normal run)."""
    first = dt.date.fromisoformat(f"{month}-01")
    days, d = [], first
    while d.month == first.month:
        days.append(d)
        d += dt.timedelta(days=1)
    with ThreadPoolExecutor(max_workers=8) as pool:
        hours = [h for hs in pool.map(lambda day: recorded_hours(lake, day), days) for h in hs]
    return read_records(lake, hours)


# ----------------------------------------------------------------------------- publishing

def _fault(name: str) -> None:
    """Test-only failpoint (jobs/faults.py, when present): kill -9 here if asked to."""
    try:
        from jobs import faults  # noqa: PLC0415
    except ImportError:
        return
    faults.point(name)


def publish_hour(lake: Lake, lease, record: HourRecord) -> HourRecord:
    """Commit one hour whose parts are staged under `lease.token` (or are already final parts
    of an earlier generation the hour keeps). Checks that every listed part exists, checks the
    lease (fencing), writes the record (the commit point), rolls forward. Returns the record
    as written (token and committed_at filled in)."""
    record.token = lease.token
    staged_now, final_now = _present(lake, record)
    for rel in record.all_parts():
        if rel not in staged_now and rel not in final_now:
            raise JobError(f"hour {st.hour_id(record.hour)} cannot be committed: part {rel} was not written")
    lease.check()
    record.committed_at = dt.datetime.now(UTC).isoformat(timespec="seconds")
    lake.write_bytes(record_path(record.hour), (json.dumps(record.to_json(), indent=1) + "\n").encode())
    _fault("during-commit")
    roll_forward(lake, record)
    return record


def _move(lake: Lake, src_rel: str, dst_rel: str) -> None:
    """Local: rename (atomic). Object stores: copy then delete (the copy is atomic; a crash
    between leaves both, and rolling forward again finishes it)."""
    dst = lake.path(dst_rel)
    if isinstance(lake.fs, pafs.LocalFileSystem):
        os.makedirs(posixpath.dirname(dst), exist_ok=True)
        os.replace(lake.path(src_rel), dst)
    else:
        lake.call(lambda: lake.fs.copy_file(lake.path(src_rel), dst), f"copying {src_rel} to {dst_rel}")
        lake.delete(src_rel)


def _dirs(record: HourRecord) -> set[str]:
    """The directories holding the hour's parts, of this generation and of earlier ones."""
    dirs = {hour_dir(record.hour)} | {posixpath.dirname(p) for p in record.all_parts()}
    dirs |= {f"{PARTIALS_DIR}/{k.split('/', 1)[1]}/date={record.hour:%Y-%m-%d}/hour={record.hour:%H}"
             for k in record.parts if k.startswith("partials/")}
    return dirs


def _present(lake: Lake, record: HourRecord) -> tuple[set[str], set[str]]:
    """(parts staged under the record's token, files at final names in the hour's
    directories), as final rel paths: two listings per directory, not a request per part."""
    staged_now, final_now = set(), set()
    prefix = staged(record.token, "")
    for d in sorted(_dirs(record)):
        final_now |= {lake.rel(i.path) for i in lake.list_files(d)}
        staged_now |= {lake.rel(i.path)[len(prefix):] for i in lake.list_files(staged(record.token, d))}
    return staged_now, final_now


def roll_forward(lake: Lake, record: HourRecord) -> None:
    """Make the filesystem what a committed record says: move its staged parts to their final
    names, delete every other part in the hour's directories, write the symlink manifest.
    Idempotent: safe to repeat after a crash at any point."""
    staged_now, final_now = _present(lake, record)
    for rel in record.all_parts():
        if rel in staged_now:
            _move(lake, staged(record.token, rel), rel)
        elif rel not in final_now:
            raise JobError(f"committed part {rel} of hour {st.hour_id(record.hour)} is missing "
                           f"(neither staged nor published)")
    keep = set(record.all_parts())
    for rel in final_now - keep:
        lake.delete(rel)
    write_symlink_manifest(lake, record)


def uri(lake: Lake, rel: str) -> str:
    """A part's URI as SQL engines name it (s3://bucket/key, file:///abs/path)."""
    full = lake.path(rel)
    if isinstance(lake.fs, pafs.LocalFileSystem):
        return "file://" + full
    if isinstance(lake.fs, pafs.S3FileSystem):
        return "s3://" + full
    scheme = lake.url.split("://", 1)[0]
    return f"{scheme}://{full}"


def write_symlink_manifest(lake: Lake, record: HourRecord) -> None:
    """Hive SymlinkTextInputFormat manifest of the hour's cost parts (Athena/Trino read
    exactly the committed parts through it)."""
    lines = "".join(uri(lake, p) + "\n" for p in sorted(record.parts.get(FLOWS, [])))
    lake.write_bytes(symlink_manifest_path(record.hour), lines.encode())


# ------------------------------------------------------------------------------- recovery

@dataclass
class Recovered:
    hours: list[dt.datetime]        # hours the dead run was publishing (rolled forward or left)
    committed: list[dt.datetime]    # of those, hours whose record the dead run had written
    staging_removed: list[int]      # tokens whose staging was deleted
    temporaries_removed: list[str] = field(default_factory=list)  # a killed run's half-written files


def recover(lake: Lake, lease) -> Recovered:
    """Finish what a dead (or failed) run left, from its lease entry alone: roll forward the
    hours it committed, clean the hours it was publishing, delete staging of other tokens.
    Bounded: the dead run's hours plus one listing of `_state/staging/`."""
    prev = lease.previous or {}
    hours = sorted(st.parse_hour_id(h) for h in prev.get("publishing", []))
    dead = int(prev.get("token", 0))
    records = read_records(lake, hours)
    committed = []
    for h in hours:
        rec = records.get(h)
        if rec is None:
            continue  # never committed: nothing of it is outside staging
        if rec.token == dead:
            committed.append(h)
        roll_forward(lake, rec)
    removed = []
    sel = pafs.FileSelector(lake.path(STAGING_DIR), allow_not_found=True)
    for info in lake.call(lambda: lake.fs.get_file_info(sel), f"listing {STAGING_DIR}/"):
        name = posixpath.basename(info.path)
        if info.type == pafs.FileType.Directory and name.isdigit() and int(name) != lease.token:
            lake.call(lambda p=info.path: lake.fs.delete_dir(p), f"deleting {lake.rel(info.path)}/")
            removed.append(int(name))
    temps = []
    if prev and not prev.get("released"):
        # a run killed between writing a temporary and renaming it (local lakes only): its
        # state files and the days it was publishing
        days = sorted({h.date() for h in hours})
        temps = lake.sweep_temporaries([S.STATE_DIR] + [f"costs/{t}/date={d}" for t in _cost_tables(lake)
                                                        for d in days])
    return Recovered(hours=hours, committed=committed, staging_removed=sorted(removed),
                     temporaries_removed=temps)


def _cost_tables(lake: Lake) -> list[str]:
    sel = pafs.FileSelector(lake.path("costs"), allow_not_found=True)
    return sorted(posixpath.basename(i.path) for i in lake.call(lambda: lake.fs.get_file_info(sel), "listing costs/")
                  if i.type == pafs.FileType.Directory)



def clean_staging(lake: Lake, token: int) -> None:
    """Remove a run's (empty, once every hour is rolled forward) staging directory."""
    try:
        lake.fs.delete_dir(lake.path(f"{STAGING_DIR}/{token:08d}"))
    except (FileNotFoundError, OSError):
        pass

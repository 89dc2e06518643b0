"""What readers read: exactly the committed files of a cost table (docs/publishing.md).

`current_files(lake, "costs/flows", start, end)` returns the parts the hours' commit records
list, never a listing of `costs/flows/` (which, for the seconds an hour is being rolled
forward, can hold both generations). Rollup tables (`costs/namespace_hourly`,
`costs/workload_daily`, `costs/focus`) are one file per date written whole, so their files
are the listing of the date partitions.

Paths are in the lake's filesystem (`lake.fs`), like `lake.list_files` returns: give them to
`pyarrow.dataset.dataset(paths, filesystem=lake.fs)`; `jobs.commit.uri` turns one into the
`s3://` / `file://` URI a SQL engine wants. A part whose hour is being rolled forward at
that instant (or whose run died doing it) is returned at its staged name, so the answer is
exact at every instant.

Range: `start`/`end` may be datetimes (hours overlapping [start, end)) or dates (whole days,
`end` inclusive: `current_files(lake, t, date(2026, 3, 1), date(2026, 3, 31))` is March).
"""
from __future__ import annotations

import datetime as dt

from jobs import commit as C
from lake import schema as S
from lake.storage import Lake

UTC = dt.timezone.utc
HOUR = dt.timedelta(hours=1)


def _bounds(start, end) -> tuple[dt.datetime | None, dt.datetime | None]:
    def as_dt(v, is_end: bool):
        if v is None:
            return None
        if isinstance(v, dt.datetime):
            return S.as_utc(v)
        d = dt.datetime(v.year, v.month, v.day, tzinfo=UTC)
        return d + dt.timedelta(days=1) if is_end else d
    return as_dt(start, False), as_dt(end, True)


def _days(lo: dt.datetime, hi: dt.datetime) -> list[dt.date]:
    out, d = [], lo.date()
    while dt.datetime(d.year, d.month, d.day, tzinfo=UTC) < hi:
        out.append(d)
        d += dt.timedelta(days=1)
    return out


def committed_hours(lake: Lake, start=None, end=None) -> list[dt.datetime]:
    """Hours that have a commit record, in [start, end) (listing of `_state/hours/` only)."""
    lo, hi = _bounds(start, end)
    if lo is None or hi is None:
        hours = C.recorded_hours(lake)
    else:
        hours = [h for d in _days(lo, hi) for h in C.recorded_hours(lake, d)]
    return [h for h in hours if (lo is None or h + HOUR > lo) and (hi is None or h < hi)]


def current_records(lake: Lake, start=None, end=None) -> dict[dt.datetime, C.HourRecord]:
    return C.read_records(lake, committed_hours(lake, start, end))


def current_files(lake: Lake, table: str, start=None, end=None) -> list[str]:
    """The committed files of `table` ("costs/flows", "costs/namespace_hourly", ...; "flows"
    is short for "costs/flows") in the range, sorted, as paths in `lake.fs`."""
    table = table if "/" in table else f"costs/{table}"
    if table not in S.TABLES and table != "costs/focus":
        raise ValueError(f"unknown table {table!r}")
    lo, hi = _bounds(start, end)
    if table == C.FLOWS:
        recs = current_records(lake, start, end)
        # a part whose hour is being rolled forward (or whose run died doing it) is still
        # staged: read it there, so the answer is exact at every instant
        days = sorted({h.date() for h in recs})
        listed = ({i.path for i in lake.list_files(C.FLOWS)} if lo is None or hi is None or len(days) > 62 else
                  {i.path for d in days for i in lake.list_files(f"{C.FLOWS}/date={d:%Y-%m-%d}")})
        out = []
        for r in recs.values():
            for p in r.parts.get(C.FLOWS, []):
                full = lake.path(p)
                out.append(full if full in listed else lake.path(C.staged(r.token, p)))
        return sorted(out)
    out = []
    bounded = lo is not None and hi is not None and len(_days(lo, hi)) <= 62
    infos = ([i for d in _days(lo, hi) for i in lake.list_files(f"{table}/date={d:%Y-%m-%d}")] if bounded
             else lake.list_files(table))  # a bounded range lists its dates only
    for info in infos:
        day = _date_of(lake.rel(info.path))
        if day is None:
            continue
        t = dt.datetime(day.year, day.month, day.day, tzinfo=UTC)
        if (lo is None or t + dt.timedelta(days=1) > lo) and (hi is None or t < hi):
            out.append(info.path)
    return sorted(out)


def _date_of(rel: str) -> dt.date | None:
    for seg in rel.split("/"):
        if seg.startswith("date="):
            try:
                return dt.date.fromisoformat(seg[5:])
            except ValueError:
                return None
    return None

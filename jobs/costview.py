"""Read-side views of the cost tables for the notebook and `netmon-jobs report`.

`connect(lake, start, end)` gives a DuckDB connection with the views `cost_flows`,
`namespace_hourly` and `workload_daily`, each a pyarrow dataset over only the files of the
dates asked for (partition pruning by path, before any byte is read). DuckDB pushes the
columns a query names and its filters into the Parquet scan, so a query touches a few
columns of a few days, never the whole table: a month of a 100-node cluster fits on a laptop.
Local, S3 and MinIO lakes read the same way (the lake's pyarrow filesystem).
"""
from __future__ import annotations

import datetime as dt
import re

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from lake import schema as S
from lake.storage import Lake

#: view name -> cost table (under costs/)
VIEWS = {"cost_flows": "flows", "namespace_hourly": "namespace_hourly", "workload_daily": "workload_daily"}
_DATE = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/")


def cost_files(lake: Lake, table: str, start: dt.date | None = None, end: dt.date | None = None) -> list[str]:
    """Paths of the Parquet files of cost table `table` ("flows", ...) whose date partition is
    in [start, end] (inclusive; None: unbounded). The one place that lists cost files."""
    out = []
    for info in lake.list_files(f"costs/{table}"):
        m = _DATE.search(info.path)
        if m is None:
            continue
        day = dt.date.fromisoformat(m.group(1))
        if (start is None or day >= start) and (end is None or day <= end):
            out.append(info.path)
    return out


def dataset(lake: Lake, table: str, start: dt.date | None = None, end: dt.date | None = None) -> ds.Dataset:
    """The cost table's files for [start, end] as one dataset with its partition columns
    (`date` as a DATE, `hour` as text, as in docs/queries.md). The schema is the contract's,
    so files written before a column existed read it as nulls."""
    t = S.TABLES[f"costs/{table}"]
    parts = pa.schema([("date", pa.date32())] + [(p, pa.string()) for p in t.partitions if p != "date"])
    schema = pa.schema(list(t.schema) + list(parts))
    return ds.dataset(cost_files(lake, table, start, end), schema=schema, format="parquet",
                      filesystem=lake.fs, partitioning=ds.partitioning(parts, flavor="hive"),
                      partition_base_dir=lake.path(f"costs/{table}"))


def connect(lake: Lake, start: dt.date | None = None, end: dt.date | None = None,
            con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per cost table, limited to dates [start, end]."""
    con = con or duckdb.connect()
    for view, table in VIEWS.items():
        con.register(view, dataset(lake, table, start, end))
    return con


def lake_dates(lake: Lake) -> list[dt.date]:
    """The dates that have cost rows, in order (from the listing only)."""
    days = {m.group(1) for i in lake.list_files("costs/flows") if (m := _DATE.search(i.path))}
    return sorted(dt.date.fromisoformat(d) for d in days)


def egress_tier_position(lake: Lake, end: dt.date, cards=None) -> list[dict]:
    """Where each rate card's internet egress stands in its monthly volume tiers on day `end`:
    month-to-date bytes (the 1st of the month through `end`, every namespace: tiers count the
    account's volume), the tier they are in, what is left of it, and the month's tiered charge.
    Rows priced by a user rule are not tiered, as in the cost job."""

    from jobs.pricing import default_cards  # noqa: PLC0415
    cards = cards or default_cards()
    con = duckdb.connect()
    con.register("mtd", dataset(lake, "flows", end.replace(day=1), end))
    rows = con.execute("""
        SELECT src_provider, src_region, SUM(tx_bytes)
        FROM mtd
        WHERE traffic_class = 'internet_egress' AND NOT starts_with(COALESCE(rate_card, ''), 'rule:')
        GROUP BY 1, 2 ORDER BY 1, 2""").fetchall()
    # the month's tiered charge per pool, with the provider's free allowance shared by its pools
    from jobs.pricing import pool_name, tier_costs  # noqa: PLC0415
    vol = pa.table({"tier_pool": [pool_name(p, r) for p, r, _ in rows],
                    "window_start": pa.array([dt.datetime.combine(end.replace(day=1), dt.time(), dt.timezone.utc)] * len(rows),
                                             pa.timestamp("us", tz="UTC")),
                    "tier_bytes": pa.array([int(t) for _, _, t in rows], pa.int64())})
    usd, _ = tier_costs(vol, {}, cards)
    month_costs = {(p, r): float(c) for (p, r, _), c in zip(rows, usd)}
    out = []
    for provider, region, total in rows:
        card = cards.card(provider, region)
        gb = int(total) / card.egress_unit
        lo, hi, rate = 0.0, None, 0.0
        for up_to, per_gb in card.tiers:
            rate, hi = per_gb, up_to
            if up_to is None or gb < up_to:
                break
            lo = float(up_to)
        out.append({
            "rate_card": card.name, "month": f"{end:%Y-%m}", "through": end.isoformat(),
            "egress_bytes": int(total), "egress_gb": gb, "tier_from_gb": lo,
            "tier_to_gb": None if hi is None else float(hi), "per_gb_usd": rate,
            "gb_to_next_tier": None if hi is None else float(hi) - gb,
            "month_cost_usd": month_costs.get((provider, region), 0.0),
        })
    return out

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

"""`netmon-jobs sql` and `netmon-jobs views`: DuckDB over exactly the committed cost files.

A glob of `costs/flows/**/*.parquet` can read files no commit lists (both generations of an
hour for the seconds it is rolled forward, or until the next run after one was killed doing
it; docs/publishing.md). These read what `jobs.catalog.current_files` returns instead.

- `netmon-jobs sql --lake URL [--start D] [--end D] [--csv] "SELECT ..."` runs one query over
  the views `cost_flows`, `namespace_hourly`, `workload_daily` and `focus` (pyarrow datasets
  over the committed files, so local, S3 and MinIO lakes read alike; DuckDB pushes columns
  and filters into the scan) and prints the result.
- `netmon-jobs views --lake URL [--start D] [--end D]` prints the same views as plain DuckDB
  SQL: `CREATE OR REPLACE VIEW ... AS SELECT * FROM read_parquet([<the committed files>], ...)`,
  for a DuckDB shell, a notebook or a BI tool (`.read views.sql`). The list is the commit at
  the time it was printed: after the next cost run, print it again (a file a later run
  replaced is then an error, never a wrong number).
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys

from jobs import catalog
from lake import schema as S
from lake.storage import LakeError, open_lake

#: view name -> cost table under costs/
VIEWS = {"cost_flows": "flows", "namespace_hourly": "namespace_hourly", "workload_daily": "workload_daily",
         "focus": "focus"}


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _duckdb_types(table: S.Table) -> list[tuple[str, str]]:
    """(column, DuckDB type) of a cost table with its partition columns, as the views read them."""
    import duckdb  # noqa: PLC0415
    rel = duckdb.connect().from_arrow(table.schema.empty_table())
    cols = [(n, str(t)) for n, t in zip(rel.columns, rel.dtypes)]
    return cols + [(p, "DATE" if p == "date" else "VARCHAR") for p in table.partitions]


def view_sql(lake, start: dt.date | None = None, end: dt.date | None = None) -> str:
    """CREATE VIEW statements over the committed files of each cost table (dates [start, end])."""
    from jobs import commit as C  # noqa: PLC0415
    out = [f"-- netmon cost views over the committed files of {lake.url}"
           f"{f' from {start}' if start else ''}{f' through {end}' if end else ''}, "
           f"as committed at {dt.datetime.now(dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ}"]
    if not lake.url.startswith(("/", "file://", ".")) and "://" in lake.url:
        out.append("-- an object-store lake: LOAD httpfs and set its credentials (CREATE SECRET) first")
    for view, table in VIEWS.items():
        t = S.TABLES[f"costs/{table}"]
        files = [C.uri(lake, lake.rel(p)) for p in catalog.current_files(lake, f"costs/{table}", start, end)]
        if not files:  # read_parquet of no file is an error: an empty view of the same columns
            cols = ", ".join(f"CAST(NULL AS {ty}) AS \"{c}\"" for c, ty in _duckdb_types(t))
            out.append(f"CREATE OR REPLACE VIEW {view} AS SELECT {cols} WHERE false;")
            continue
        types = ", ".join(f"'{p}': {'DATE' if p == 'date' else 'VARCHAR'}" for p in t.partitions)
        listed = ",\n  ".join(_sql_str(f) for f in files)
        out.append(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM read_parquet([\n  {listed}],\n"
                   f"  hive_partitioning = true, hive_types = {{{types}}}, union_by_name = true);")
    return "\n".join(out) + "\n"


def connect(lake, start: dt.date | None = None, end: dt.date | None = None):
    """A DuckDB connection with the four views over the committed files (pyarrow datasets)."""
    import duckdb  # noqa: PLC0415

    from jobs import costview  # noqa: PLC0415
    con = duckdb.connect()
    for view, table in VIEWS.items():
        con.register(view, costview.dataset(lake, table, start, end))
    return con


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid date {text!r}: expected YYYY-MM-DD") from None


def _parser(prog: str, with_query: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--lake", required=True, help="lake URL (./dir, s3://bucket/prefix, ...)")
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint override (MinIO, moto)")
    p.add_argument("--start", type=_date, default=None, help="first date (YYYY-MM-DD; default: the first)")
    p.add_argument("--end", type=_date, default=None, help="last date, inclusive (default: the last)")
    if with_query:
        p.add_argument("--csv", action="store_true", help="print CSV (a header, then one line a row)")
        p.add_argument("query", help="one SQL statement over cost_flows, namespace_hourly, workload_daily, focus")
    return p


def _open(args):
    if args.start and args.end and args.end < args.start:
        raise ValueError(f"--end {args.end} is before --start {args.start}")
    return open_lake(args.lake, s3_endpoint=args.s3_endpoint, create_bucket=False)


def sql_main(argv: list[str] | None = None) -> int:
    import duckdb  # noqa: PLC0415
    args = _parser("netmon-jobs sql", True).parse_args(argv)
    try:
        con = connect(_open(args), args.start, args.end)
        rel = con.sql(args.query)
        if rel is None:
            return 0
        if args.csv:
            import csv  # noqa: PLC0415
            w = csv.writer(sys.stdout, lineterminator="\n")
            w.writerow(rel.columns)
            w.writerows(rel.fetchall())
        else:
            rel.show(max_rows=10_000, max_width=10_000)
    except (LakeError, ValueError, OSError, duckdb.Error) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


def views_main(argv: list[str] | None = None) -> int:
    args = _parser("netmon-jobs views", False).parse_args(argv)
    try:
        sys.stdout.write(view_sql(_open(args), args.start, args.end))
    except (LakeError, ValueError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0

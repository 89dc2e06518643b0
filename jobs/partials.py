"""Rollup partials: the rollups of jobs/rollup.py applied to each cell's cost rows, summed per
hour, and summed again per day into the published rollup tables, so a day's rollups never
re-read its cost rows (docs/architecture.md "Rollups").

Rollups are group-by sums, so partials re-aggregate exactly: group by every column that is not
a measure, sum the measures (integer and floating columns: bytes, flow counts, cost).
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from jobs import rollup
from lake import schema as S

#: published rollup -> (function of cost rows, schema)
ROLLUPS = {
    "namespace_hourly": (rollup.rollup_namespace_hourly, S.COST_NAMESPACE_HOURLY),
    "workload_daily": (rollup.rollup_workload_daily, S.COST_WORKLOAD_DAILY),
}


def partial_path(name: str, hour, tag: str) -> str:
    return f"{S.STATE_DIR}/partials/{name}/date={hour:%Y-%m-%d}/hour={hour:%H}/{tag}.parquet"


def _is_measure(field: pa.Field) -> bool:
    return pa.types.is_integer(field.type) or pa.types.is_floating(field.type)


def partials(costs: pa.Table) -> dict[str, pa.Table]:
    """Every rollup of one table of cost rows."""
    return {name: fn(costs) for name, (fn, _) in ROLLUPS.items()}


def combine(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    """Sum partials of one rollup (any number, any split of the rows) into one table."""
    tables = [S.conform(t, schema) for t in tables if t is not None]
    if not tables:
        return schema.empty_table()
    t = pa.concat_tables(tables)
    keys = [f.name for f in schema if not _is_measure(f)]
    measures = [f.name for f in schema if _is_measure(f)]
    g = t.group_by(keys, use_threads=False).aggregate([(m, "sum") for m in measures])
    g = g.rename_columns({f"{m}_sum": m for m in measures})
    return S.conform(g, schema).sort_by([(k, "ascending") for k in keys])


def negate(t: pa.Table, schema: pa.Schema) -> pa.Table:
    t = S.conform(t, schema)
    for i, f in enumerate(schema):
        if _is_measure(f):
            t = t.set_column(i, f, pc.negate(t.column(i)))
    return t


def delta(old: dict[str, pa.Table], new: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """new - old per rollup (what re-pricing some rows changed)."""
    return {name: combine([new[name], negate(old[name], schema)], schema) for name, (_, schema) in ROLLUPS.items()}

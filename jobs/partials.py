"""Rollup partials: the rollups of jobs/rollup.py applied to each cell's cost rows, summed per
hour, and summed again per day into the published rollup tables, so a day's rollups never
re-read its cost rows (docs/architecture.md "Rollups").

Rollups are group-by sums, so partials re-aggregate exactly: group by every column that is not
a measure, sum the measures (integer and floating columns: bytes, flow counts, cost).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from jobs import rollup
from lake import schema as S

@dataclass(frozen=True)
class Rollup:
    fn: Callable[[pa.Table], pa.Table]          # cost rows -> rollup rows (any subset of rows)
    schema: pa.Schema
    combine_fn: Callable[[list[pa.Table]], pa.Table] | None = None  # sum partials (default: generic)

    def combine(self, tables: list[pa.Table]) -> pa.Table:
        tables = [t for t in tables if t is not None]
        if self.combine_fn is not None:
            return self.combine_fn([S.conform(t, self.schema) for t in tables]) if tables else self.schema.empty_table()
        return combine(tables, self.schema)


def _focus_rows(costs: pa.Table) -> pa.Table:
    from jobs import focus  # noqa: PLC0415
    return focus.focus_rows(costs)


def _focus_combine(tables: list[pa.Table]) -> pa.Table:
    from jobs import focus  # noqa: PLC0415
    return focus.combine(tables)


def _rollup_combine(schema: pa.Schema):
    """jobs/rollup.py's own group-by of sums, over partials of one rollup."""
    keys = [f.name for f in schema if f.name not in rollup.SUMS]

    def combine_fn(tables: list[pa.Table]) -> pa.Table:
        return rollup.combine(pa.concat_tables(tables), keys, schema)
    return combine_fn


#: published rollup (costs/<name>) -> how to build and sum it
ROLLUPS = {
    "namespace_hourly": Rollup(rollup.rollup_namespace_hourly, S.COST_NAMESPACE_HOURLY,
                               _rollup_combine(S.COST_NAMESPACE_HOURLY)),
    "workload_daily": Rollup(rollup.rollup_workload_daily, S.COST_WORKLOAD_DAILY,
                             _rollup_combine(S.COST_WORKLOAD_DAILY)),
    "focus": Rollup(_focus_rows, S.COST_FOCUS, _focus_combine),
}


def _is_measure(field: pa.Field) -> bool:
    return pa.types.is_integer(field.type) or pa.types.is_floating(field.type)


def partials(costs: pa.Table) -> dict[str, pa.Table]:
    """Every rollup of one table of cost rows."""
    return {name: r.fn(costs) for name, r in ROLLUPS.items()}


def combine(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    """Sum partials of one rollup (any number, any split of the rows) into one table: group by
    every column that is not a measure, sum the measures."""
    tables = [S.conform(t, schema) for t in tables if t is not None]
    if not tables:
        return schema.empty_table()
    t = pa.concat_tables(tables)
    keys = [f.name for f in schema if not _is_measure(f)]
    measures = [f.name for f in schema if _is_measure(f)]
    g = t.group_by(keys, use_threads=False).aggregate([(m, "sum") for m in measures])
    g = g.rename_columns({f"{m}_sum": m for m in measures})
    return S.conform(g, schema).sort_by([(k, "ascending") for k in keys])


def negate(t: pa.Table, schema: pa.Schema, measures: tuple[str, ...] | None = None) -> pa.Table:
    t = S.conform(t, schema)
    for i, f in enumerate(schema):
        if (f.name in measures) if measures is not None else _is_measure(f):
            t = t.set_column(i, f, pc.negate(t.column(i)))
    return t


def delta(old: dict[str, pa.Table], new: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """new - old per rollup (what re-pricing some rows changed): summed with the old partial,
    it gives the new one."""
    return {name: r.combine([new[name], negate(old[name], r.schema)]) for name, r in ROLLUPS.items()}


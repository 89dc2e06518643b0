"""Rollups of costs/flows (schemas in lake/schema.py).

- namespace_hourly: by (hour of window_start, namespace, traffic_class).
- workload_daily: by (UTC day of window_start, namespace, workload_kind, workload, traffic_class).

Both sides are charged: a cost row's destination-side part (`dst_cost_usd`: the receiving
AZ's transfer in, the other region's transfer out of the reply) is charged to the
destination's namespace and workload when the destination is in the cluster (pod, service,
endpoint or node), and stays with the source otherwise (a managed service's or the internet's
side is the source's bill). `cost_usd` of a rollup row is what its namespace is charged, of
which `dst_side_cost_usd` as a destination; bytes and `flows` count the rows the namespace
sent (source side only), so sums of bytes, flows and cost all reconcile with costs/flows.

Node traffic (hostNetwork pods, the node itself, a node as destination) has namespace null:
it is not any namespace's spend, and SQL users find it with `namespace IS NULL`.

Every rollup is a group-by of sums, so rollups of parts of an hour or day can be combined
by the same group-by (`combine`).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lake import schema as S

#: costs/flows columns the rollups and the FOCUS export read (a fraction of a partition)
ROLLUP_COLUMNS = ["window_start", "src_provider", "src_region", "src_zone", "src_namespace", "src_workload_kind",
                  "src_workload", "dst_kind", "dst_namespace", "dst_workload_kind", "dst_workload", "traffic_class",
                  "tx_bytes", "rx_bytes", "cost_usd", "rate_card", "usage_type", "usage_bytes", "dst_cost_usd",
                  "dst_usage_type", "dst_usage_bytes", "processing_cost_usd", "processing_usage_type",
                  "processing_bytes"]
SUMS = ("tx_bytes", "rx_bytes", "flows", "cost_usd", "dst_side_cost_usd")


def _col(costs: pa.Table, name: str, type_=pa.float64()):
    if name in costs.column_names:
        return costs.column(name)
    return pa.chunked_array([pa.nulls(costs.num_rows, type_)])


def dst_side(costs: pa.Table) -> pa.ChunkedArray:
    """Per row: the part of cost_usd charged to the destination's namespace (0 when the
    destination is outside the cluster)."""
    inside = pc.fill_null(pc.not_equal(_col(costs, "dst_kind", pa.string()), "external"), False)
    return pc.if_else(inside, pc.fill_null(_col(costs, "dst_cost_usd"), 0.0), 0.0)


def _sides(costs: pa.Table, keys_src: dict, keys_dst: dict) -> pa.Table:
    """One entry per row for the source side and one for the destination side's charge."""
    n = costs.num_rows
    d = dst_side(costs)
    zero_i = pa.array(np.zeros(n, np.int64))
    src = pa.table({**keys_src, "tx_bytes": costs.column("tx_bytes"), "rx_bytes": costs.column("rx_bytes"),
                    "flows": pa.array(np.ones(n, np.int64)),
                    "cost_usd": pc.subtract(pc.fill_null(costs.column("cost_usd"), 0.0), d),
                    "dst_side_cost_usd": pc.multiply(d, 0.0)})
    dst = pa.table({**keys_dst, "tx_bytes": zero_i, "rx_bytes": zero_i, "flows": zero_i, "cost_usd": d,
                    "dst_side_cost_usd": d})
    has = pc.greater(d, 0.0)
    return pa.concat_tables([src, dst.filter(has).cast(src.schema)])


def combine(parts: pa.Table, keys: list[str], schema: pa.Schema) -> pa.Table:
    """Group-by of sums over rollup rows (or partial rollups of the same keys)."""
    g = parts.group_by(keys, use_threads=False).aggregate([(c, "sum") for c in SUMS])
    g = g.rename_columns({f"{c}_sum": c for c in SUMS} | {k: k for k in keys})
    return S.conform(g, schema).sort_by([(k, "ascending") for k in keys])


def rollup_namespace_hourly(costs: pa.Table) -> pa.Table:
    hour = pc.floor_temporal(costs.column("window_start"), unit="hour")
    cls = costs.column("traffic_class")
    t = _sides(costs, {"hour_start": hour, "namespace": costs.column("src_namespace"), "traffic_class": cls},
               {"hour_start": hour, "namespace": _col(costs, "dst_namespace", pa.string()), "traffic_class": cls})
    return combine(t, ["hour_start", "namespace", "traffic_class"], S.COST_NAMESPACE_HOURLY)


def rollup_workload_daily(costs: pa.Table) -> pa.Table:
    day = costs.column("window_start").cast(pa.date32())
    cls = costs.column("traffic_class")
    t = _sides(costs, {"day": day, "namespace": costs.column("src_namespace"),
                       "workload_kind": costs.column("src_workload_kind"), "workload": costs.column("src_workload"),
                       "traffic_class": cls},
               {"day": day, "namespace": _col(costs, "dst_namespace", pa.string()),
                "workload_kind": _col(costs, "dst_workload_kind", pa.string()),
                "workload": _col(costs, "dst_workload", pa.string()), "traffic_class": cls})
    return combine(t, ["day", "namespace", "workload_kind", "workload", "traffic_class"], S.COST_WORKLOAD_DAILY)

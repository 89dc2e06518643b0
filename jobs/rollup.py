"""Rollups of costs/flows (schemas in lake/schema.py).

- namespace_hourly: by (hour of window_start, src_namespace, traffic_class). Node traffic
  (hostNetwork pods and the node itself) has src_namespace null and stays under namespace
  null: it is not any namespace's spend, and SQL users find it with `namespace IS NULL`.
- workload_daily: by (UTC day of window_start, src_namespace, src_workload_kind,
  src_workload, traffic_class), nulls kept as their own group the same way.
Sums of tx_bytes, rx_bytes, cost_usd and the number of flow rows reconcile with the detail.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from lake import schema as S

def _rollup(costs: pa.Table, keys: dict[str, pa.ChunkedArray], schema: pa.Schema) -> pa.Table:
    t = pa.table({**keys, "tx_bytes": costs.column("tx_bytes"), "rx_bytes": costs.column("rx_bytes"),
                  "cost_usd": costs.column("cost_usd")})
    g = t.group_by(list(keys), use_threads=False).aggregate(
        [("tx_bytes", "sum"), ("rx_bytes", "sum"), ("cost_usd", "sum"), ([], "count_all")])
    g = g.rename_columns({"tx_bytes_sum": "tx_bytes", "rx_bytes_sum": "rx_bytes", "cost_usd_sum": "cost_usd",
                          "count_all": "flows"})
    out = S.conform(g, schema)
    return out.sort_by([(k, "ascending") for k in keys])


def rollup_namespace_hourly(costs: pa.Table) -> pa.Table:
    hour = pc.floor_temporal(costs.column("window_start"), unit="hour")
    keys = {"hour_start": hour, "namespace": costs.column("src_namespace"),
            "traffic_class": costs.column("traffic_class")}
    return _rollup(costs, keys, S.COST_NAMESPACE_HOURLY)


def rollup_workload_daily(costs: pa.Table) -> pa.Table:
    day = costs.column("window_start").cast(pa.date32())
    keys = {"day": day, "namespace": costs.column("src_namespace"),
            "workload_kind": costs.column("src_workload_kind"), "workload": costs.column("src_workload"),
            "traffic_class": costs.column("traffic_class")}
    return _rollup(costs, keys, S.COST_WORKLOAD_DAILY)

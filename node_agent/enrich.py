"""Pod enrichment: raw/flows window -> the same table with src/dst pod and namespace filled.

Input and output schema: lake.schema.RAW_FLOWS. `src_pod`/`src_namespace` come from
`src_ip`, `dst_pod`/`dst_namespace` from `dst_ip` (the real peer after NAT, so a ClusterIP
resolves to the backend pod that answered). IPs of hostNetwork pods are the node's own
addresses: they stay null so that node traffic is attributed to the node, never to an
arbitrary hostNetwork pod. Lookups run once per unique IP, the columns are built with
vectorized take, not per row.
"""
from __future__ import annotations

from typing import Callable, Optional

import pyarrow as pa
import pyarrow.compute as pc

# lookup(ip) -> (pod name, namespace, host_network) or None; PodIndex.lookup has this shape.
Lookup = Callable[[str], Optional[tuple]]


def enrich(table: pa.Table, lookup: Lookup | None) -> pa.Table:
    if lookup is None or table.num_rows == 0:
        return table
    src = table.column("src_ip").combine_chunks()
    dst = table.column("dst_ip").combine_chunks()
    unique = pc.unique(pa.concat_arrays([src, dst]).drop_null())
    ips, names, namespaces = [], [], []
    for ip in unique.to_pylist():
        hit = lookup(ip)
        if hit and not hit[2]:
            ips.append(ip)
            names.append(hit[0])
            namespaces.append(hit[1])
    if not ips:
        return table
    keys = pa.array(ips, pa.string())
    names_arr = pa.array(names, pa.string())
    ns_arr = pa.array(namespaces, pa.string())
    for side, col in (("src", src), ("dst", dst)):
        idx = pc.index_in(col, value_set=keys)
        table = _set(table, f"{side}_pod", pc.take(names_arr, idx))
        table = _set(table, f"{side}_namespace", pc.take(ns_arr, idx))
    return table


def _set(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, table.schema.field(i), values)

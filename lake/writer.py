"""The one writer for raw and inventory files, used by the node agent and the simulator alike."""
from __future__ import annotations

import datetime as dt

import pyarrow as pa

from lake import schema as S
from lake.storage import Lake


def write_raw(lake: Lake, table_name: str, node: str, window_start: dt.datetime, table: pa.Table) -> str:
    """Write one node's window of `raw/flows` or `raw/dns`. Deterministic path: a retry replaces."""
    if table_name not in ("raw/flows", "raw/dns"):
        raise ValueError(f"not a raw table: {table_name!r}")
    rel = S.raw_file_path(table_name, node, window_start)
    lake.write_table(rel, S.conform(table, S.TABLES[table_name].schema))
    return rel


def write_inventory(lake: Lake, kind: str, snapshot_time: dt.datetime, table: pa.Table) -> str:
    """Write one inventory snapshot (`kind` in pods, services, nodes, endpoints)."""
    if kind not in S.INVENTORY_KINDS:
        raise ValueError(f"unknown inventory kind {kind!r}; expected one of {S.INVENTORY_KINDS}")
    rel = S.inventory_file_path(kind, snapshot_time)
    lake.write_table(rel, S.conform(table, S.TABLES[f"inventory/{kind}"].schema))
    return rel

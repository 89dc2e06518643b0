"""A window's DNS lookups -> the raw/dns table (lake.schema.RAW_DNS).

Stage: list[Lookup] (dns/cache.py) -> pyarrow.Table with columns window_start, window_end,
node, client_ip, domain, ip, ttl_s (as answered, before the cache's cap), seen_at. Writing it
is the agent exporter's job (lake.writer.write_raw, like raw/flows).
"""
from __future__ import annotations

import datetime as dt
from typing import Sequence

import pyarrow as pa

from lake.schema import RAW_DNS
from node_agent.dns.cache import Lookup

UTC = dt.timezone.utc
_I32_MAX = 2**31 - 1


def dns_table(lookups: Sequence[Lookup], window_start: dt.datetime, window_end: dt.datetime, node: str) -> pa.Table:
    n = len(lookups)
    cols = {
        "window_start": pa.array([window_start] * n, RAW_DNS.field("window_start").type),
        "window_end": pa.array([window_end] * n, RAW_DNS.field("window_end").type),
        "node": pa.array([node] * n, pa.string()),
        "client_ip": pa.array([x.client_ip for x in lookups], pa.string()),
        "domain": pa.array([x.domain for x in lookups], pa.string()),
        "ip": pa.array([x.ip for x in lookups], pa.string()),
        "ttl_s": pa.array([min(x.ttl_s, _I32_MAX) for x in lookups], pa.int32()),
        "seen_at": pa.array([dt.datetime.fromtimestamp(x.seen_at, UTC) for x in lookups],
                            RAW_DNS.field("seen_at").type),
        "cname_chain": pa.array([list(x.chain) for x in lookups], RAW_DNS.field("cname_chain").type),
    }
    return pa.table(cols, schema=RAW_DNS)

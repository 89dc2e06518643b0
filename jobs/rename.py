"""Re-naming committed cost rows after their hour's DNS answers changed (a late raw/dns file).

`rename(costs, dns, ctx)` looks every row's destination up again in `dns` (a DnsIndex over the
hour's new answers, docs/costing.md §4 dst_domain) and returns the rows as a cost job run with
those answers would have written them, or None when no row's dst_domain or dst_cname changes.

Only a name can change, and a name decides the class (and so the price) of one kind of row
only: an external destination at a private address (§5, rule 2.3). Those rows are classified
and priced again from their own columns (what resolution gave them: external rows carry no
zone or region before classification, and a private address never passes a NAT gateway or
pays a tier); every other row whose name changes keeps its class and cost and takes the new
name. Rows keep their positions, so a part stays in the order its cell wrote it.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.errors import JobError
from jobs.inventory import ids_in, to_us
from jobs.ipaddr import is_private, parse_ips
from lake import schema as S

#: columns classification and pricing set (dropped before a row is classified again)
_DERIVED = ("traffic_class", "dst_cloud_provider", "dst_cloud_service", "dst_cloud_region", "cost_usd",
            "rate_card", "usage_type", "dst_cost_usd", "dst_usage_type", "processing_cost_usd",
            "processing_usage_type", "usage_bytes", "dst_usage_bytes", "processing_bytes", "nat_gateway")


def _differs(a: pa.ChunkedArray | pa.Array, b: pa.Array) -> np.ndarray:
    a, b = pc.cast(a, pa.string()), pc.cast(b, pa.string())
    na = pc.is_null(a).to_numpy(zero_copy_only=False)
    nb = pc.is_null(b).to_numpy(zero_copy_only=False)
    ne = pc.fill_null(pc.not_equal(a, b), False).to_numpy(zero_copy_only=False)
    return (na != nb) | ne


def names(costs: pa.Table, dns) -> tuple[pa.Array, pa.Array]:
    """(dst_domain, dst_cname) of each cost row looked up in `dns` (rows are already oriented:
    src is the client, dst the peer)."""
    src, dst = costs.column("src_ip"), costs.column("dst_ip")
    ipd = pc.unique(pa.concat_arrays([pc.cast(src, pa.string()).combine_chunks(),
                                      pc.cast(dst, pa.string()).combine_chunks()]).drop_null())
    we = to_us(costs.column("window_end"))
    dom, cname = dns.lookup(ipd, ids_in(src, ipd), ids_in(dst, ipd), we, with_cname=True)
    return pc.cast(dom, pa.string()), pc.cast(cname, pa.string())


def rename(costs: pa.Table, dns, ctx) -> tuple[pa.Table, int, int] | None:
    """The rows with the names `dns` gives them, re-costed where the name decides the class;
    None if no name changes. Also returns how many rows changed name and how many were
    re-costed. `ctx`: a pipeline Context (config, cards, rules, subnets, ranges)."""
    from jobs import classify, pricing  # noqa: PLC0415 (pricing imports resolve)
    costs = S.conform(costs, S.COST_FLOWS)
    if costs.num_rows == 0:
        return None
    dom, cname = names(costs, dns)
    changed = _differs(costs.column("dst_domain"), dom) | _differs(costs.column("dst_cname"), cname)
    if not changed.any():
        return None
    out = costs.set_column(costs.schema.get_field_index("dst_domain"), "dst_domain", dom)
    out = out.set_column(out.schema.get_field_index("dst_cname"), "dst_cname", cname)
    external = pc.fill_null(pc.equal(out.column("dst_kind"), "external"), False).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(changed & external)
    if len(rows):
        ips = parse_ips(pc.fill_null(out.column("dst_ip").take(pa.array(rows)), "").combine_chunks())
        rows = rows[is_private(ips)]
    if len(rows) == 0:
        return out, int(changed.sum()), 0
    sub = out.take(pa.array(rows))
    gap = sub.column("inventory_gap")
    t = sub.drop_columns([c for c in _DERIVED if c in sub.column_names] + ["inventory_gap"])
    nulls = pa.nulls(len(rows), pa.string())
    t = t.set_column(t.schema.get_field_index("dst_zone"), "dst_zone", nulls)
    t = t.set_column(t.schema.get_field_index("dst_region"), "dst_region", nulls)
    new = pricing.price(classify.classify(t, ctx), ctx)
    new = S.conform(new, S.COST_FLOWS)
    new = new.set_column(new.schema.get_field_index("inventory_gap"), "inventory_gap", gap)
    old_pool, _ = pricing.tier_pools(sub, ctx.cards)
    new_pool, _ = pricing.tier_pools(new, ctx.cards)
    if old_pool.null_count != len(rows) or new_pool.null_count != len(rows):
        raise JobError("re-naming a cost part would move tiered egress bytes; recompute the hour "
                       "with --start/--end instead")
    n = costs.num_rows
    idx = np.arange(n, dtype=np.int64)
    idx[rows] = n + np.arange(len(rows))
    return pa.concat_tables([out, new]).take(pa.array(idx)), int(changed.sum()), len(rows)

"""FOCUS export of network costs (`costs/focus`, FinOps Open Cost and Usage Specification 1.x).

`focus_rows(costs)` turns cost rows into FOCUS charge rows: one per (hour, provider, region,
zone, meter, side, namespace, workload, traffic class, rate card), with the FOCUS columns a
usage charge needs (ChargeCategory "Usage", ServiceCategory "Networking", costs, quantities
and units in the provider's billing unit) and `x_` columns for what netmon adds: namespace,
workload, traffic class, the provider usage type, the side of the flow and the flow count.

A cost row gives up to three charges, each with its own meter (see jobs/pricing.py):
- the source side's transfer (`usage_type`, cost_usd - dst_cost_usd - processing_cost_usd),
  charged to the source's namespace and workload;
- the destination side's transfer (`dst_usage_type`, dst_cost_usd), charged to the
  destination's namespace and workload when it is in the cluster, else to the source's;
- processing (`processing_usage_type`: NAT gateway, private endpoint, transit gateway).
Charges without a meter and without cost (same-zone traffic, IMDS, ...) are not billed lines
and are left out. BilledCost = EffectiveCost = ListCost = ContractedCost: list prices.

Re-aggregatable: `combine(focus_tables)` sums rows with equal keys, so FOCUS rows of parts of
an hour (cells) and of several hours give the same table as one call over all cost rows.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lake import schema as S

PROVIDER = {"aws": "AWS", "gcp": "Google Cloud", "azure": "Microsoft"}
UNIT = {"aws": ("GB", 1 << 30), "gcp": ("GiB", 1 << 30), "azure": ("GB", 10**9)}
#: the provider's service name for a meter, by the word that identifies it
SERVICE = {
    "aws": (("NatGateway", "Amazon Virtual Private Cloud"), ("VpcEndpoint", "AWS PrivateLink"),
            ("TransitGateway", "AWS Transit Gateway"), ("", "AWS Data Transfer")),
    "gcp": (("NAT", "Cloud NAT"), ("Private Service Connect", "Virtual Private Cloud"), ("", "Networking")),
    "azure": (("NAT", "NAT Gateway"), ("Private Link", "Azure Private Link"), ("Peering", "Virtual Network"),
              ("Virtual WAN", "Virtual WAN"), ("", "Bandwidth")),
}

KEYS = ["ChargePeriodStart", "RegionId", "AvailabilityZone", "x_UsageType", "x_Side", "x_Namespace",
        "x_WorkloadKind", "x_Workload", "x_TrafficClass", "x_RateCard", "x_Provider"]
SUMS = ["BilledCost", "x_UsageBytes", "x_Flows"]


def _s(costs: pa.Table, name: str) -> pa.ChunkedArray:
    col = costs.column(name) if name in costs.column_names else pa.chunked_array([pa.nulls(costs.num_rows, pa.string())])
    return col.cast(pa.string()) if not pa.types.is_string(col.type) else col


def _f(costs: pa.Table, name: str) -> np.ndarray:
    if name not in costs.column_names:
        return np.zeros(costs.num_rows)
    return pc.fill_null(costs.column(name), 0).to_numpy().astype(np.float64)


def _charges(costs: pa.Table) -> pa.Table:
    """The three charges of every cost row, stacked, with the FOCUS key columns."""
    from jobs.rollup import dst_side  # noqa: PLC0415
    n = costs.num_rows
    total, dst, proc = _f(costs, "cost_usd"), _f(costs, "dst_cost_usd"), _f(costs, "processing_cost_usd")
    to_dst = dst_side(costs).to_numpy() if n else np.zeros(0)
    hour = pc.floor_temporal(costs.column("window_start"), unit="hour")
    base = {"ChargePeriodStart": hour, "x_Provider": _s(costs, "src_provider"), "RegionId": _s(costs, "src_region"),
            "AvailabilityZone": _s(costs, "src_zone"), "x_TrafficClass": _s(costs, "traffic_class"),
            "x_RateCard": _s(costs, "rate_card")}
    src_who = {"x_Namespace": _s(costs, "src_namespace"), "x_WorkloadKind": _s(costs, "src_workload_kind"),
               "x_Workload": _s(costs, "src_workload")}
    inside = pa.array(to_dst > 0) if n else pa.array([], pa.bool_())
    dst_who = {k: pc.if_else(inside, _s(costs, d), src_who[k]) for k, d in
               (("x_Namespace", "dst_namespace"), ("x_WorkloadKind", "dst_workload_kind"), ("x_Workload", "dst_workload"))}
    flows = np.ones(n, np.int64)
    parts = []
    for side, usage, cost, qty, who, fl in (
            ("source", "usage_type", total - dst - proc, "usage_bytes", src_who, flows),
            ("destination", "dst_usage_type", dst, "dst_usage_bytes", dst_who, np.zeros(n, np.int64)),
            ("processing", "processing_usage_type", proc, "processing_bytes", src_who, np.zeros(n, np.int64))):
        t = pa.table({**base, **who, "x_UsageType": _s(costs, usage),
                      "x_Side": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([side])).cast(pa.string()),
                      "BilledCost": pa.array(cost, pa.float64()),
                      "x_UsageBytes": pa.array(_f(costs, qty).astype(np.int64), pa.int64()),
                      "x_Flows": pa.array(fl, pa.int64())})
        keep = pc.or_(pc.is_valid(t.column("x_UsageType")), pc.not_equal(t.column("BilledCost"), 0.0))
        parts.append(t.filter(keep))
    return pa.concat_tables(parts)


def combine(tables: list[pa.Table] | pa.Table) -> pa.Table:
    """Sum FOCUS rows with equal keys (partial exports of cells or hours) and complete the
    derived columns; the result is COST_FOCUS."""
    t = pa.concat_tables(tables) if isinstance(tables, list) else tables
    if t.num_rows == 0:
        return S.empty(S.COST_FOCUS)
    g = t.select(KEYS + SUMS).group_by(KEYS, use_threads=False).aggregate([(c, "sum") for c in SUMS])
    g = g.rename_columns({f"{c}_sum": c for c in SUMS} | {k: k for k in KEYS})
    g = g.sort_by([(k, "ascending") for k in KEYS])
    return _complete(g)


def _complete(g: pa.Table) -> pa.Table:
    n = g.num_rows
    prov = g.column("x_Provider").to_pylist()
    start = g.column("ChargePeriodStart")
    start_us = start.cast(pa.int64()).to_numpy()
    end = pa.array(start_us + 3_600_000_000, pa.int64()).cast(S.TS)
    months = start_us.astype("datetime64[us]").astype("datetime64[M]")
    bp_start = pa.array(months.astype("datetime64[us]").astype(np.int64), pa.int64()).cast(S.TS)
    bp_end = pa.array((months + 1).astype("datetime64[us]").astype(np.int64), pa.int64()).cast(S.TS)
    unit = [UNIT.get(p or "", ("GB", 1 << 30)) for p in prov]
    qty = g.column("x_UsageBytes").to_numpy().astype(np.float64) / np.array([u[1] for u in unit], np.float64)
    cost = g.column("BilledCost").to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        unit_price = np.where(qty > 0, cost / qty, np.nan)
    usage = g.column("x_UsageType").to_pylist()
    cls = g.column("x_TrafficClass").to_pylist()
    side = g.column("x_Side").to_pylist()

    def service(p, u):
        for word, name in SERVICE.get(p or "", (("", None),)):
            if word in (u or ""):
                return name
        return None

    name = [PROVIDER.get(p or "", p) for p in prov]
    none = pa.nulls(n, pa.string())
    cols = {
        "BilledCost": g.column("BilledCost"), "EffectiveCost": g.column("BilledCost"),
        "ListCost": g.column("BilledCost"), "ContractedCost": g.column("BilledCost"),
        "BillingCurrency": pa.array(["USD"] * n), "BillingAccountId": none, "BillingAccountName": none,
        "BillingPeriodStart": bp_start, "BillingPeriodEnd": bp_end,
        "ChargePeriodStart": start, "ChargePeriodEnd": end,
        "ChargeCategory": pa.array(["Usage"] * n), "ChargeClass": none,
        "ChargeDescription": pa.array([f"{c} network transfer ({s} side)" if s != "processing" else f"{c} data processing"
                                       for c, s in zip(cls, side)], pa.string()),
        "ChargeFrequency": pa.array(["Usage-Based"] * n),
        "ConsumedQuantity": pa.array(qty, pa.float64()), "ConsumedUnit": pa.array([u[0] for u in unit]),
        "PricingQuantity": pa.array(qty, pa.float64()), "PricingUnit": pa.array([u[0] for u in unit]),
        "PricingCategory": pa.array(["Standard"] * n),
        "ListUnitPrice": pa.array(unit_price, pa.float64(), from_pandas=True),
        "ContractedUnitPrice": pa.array(unit_price, pa.float64(), from_pandas=True),
        "ProviderName": pa.array(name, pa.string()), "PublisherName": pa.array(name, pa.string()),
        "InvoiceIssuerName": pa.array(name, pa.string()),
        "ServiceCategory": pa.array(["Networking"] * n),
        "ServiceName": pa.array([service(p, u) for p, u in zip(prov, usage)], pa.string()),
        "RegionId": g.column("RegionId"), "RegionName": g.column("RegionId"),
        "AvailabilityZone": g.column("AvailabilityZone"),
        "ResourceId": none, "ResourceName": none, "ResourceType": none, "SkuId": none, "SkuPriceId": none,
        "SubAccountId": none, "SubAccountName": none,
        "CommitmentDiscountCategory": none, "CommitmentDiscountId": none, "CommitmentDiscountName": none,
        "CommitmentDiscountStatus": none, "CommitmentDiscountType": none,
        "x_Namespace": g.column("x_Namespace"), "x_WorkloadKind": g.column("x_WorkloadKind"),
        "x_Workload": g.column("x_Workload"), "x_TrafficClass": g.column("x_TrafficClass"),
        "x_UsageType": g.column("x_UsageType"), "x_Side": g.column("x_Side"), "x_RateCard": g.column("x_RateCard"),
        "x_Provider": g.column("x_Provider"), "x_UsageBytes": g.column("x_UsageBytes"), "x_Flows": g.column("x_Flows"),
    }
    return S.conform(pa.table(cols), S.COST_FOCUS)


def focus_rows(costs: pa.Table) -> pa.Table:
    """COST_FOCUS rows of cost rows (any subset: an hour, a cell, a day)."""
    if costs.num_rows == 0:
        return S.empty(S.COST_FOCUS)
    return combine(_charges(costs))

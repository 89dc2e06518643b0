"""The notebook's and the report's tables computed independently: pandas over every cost file
of a lake, no DuckDB, no jobs.costview. Tests compare what those show with these."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds

GB = 2 ** 30


def cost_flows(lake: Path, namespaces: list[str] | None = None) -> pd.DataFrame:
    df = ds.dataset(str(Path(lake) / "costs" / "flows"), format="parquet", partitioning="hive").to_table().to_pandas()
    df["date"] = df["date"].astype(str)
    df["bytes"] = df.tx_bytes + df.rx_bytes
    df["namespace"] = df.src_namespace.fillna("(node)")
    if namespaces:
        df = df[df.namespace.isin(namespaces)]
    return df


def by_class(df: pd.DataFrame) -> dict[str, tuple[float, float]]:
    g = df.groupby("traffic_class").agg(bytes=("bytes", "sum"), cost=("cost_usd", "sum"))
    return {k: (float(r.bytes), float(r.cost)) for k, r in g.iterrows()}


def by_day_class(df: pd.DataFrame) -> dict[tuple[str, str], float]:
    g = df.groupby(["date", "traffic_class"]).cost_usd.sum()
    return {k: float(v) for k, v in g.items()}


def top(df: pd.DataFrame, key: pd.Series, n: int) -> pd.DataFrame:
    """total / cross-zone / egress cost per key, biggest first (ties by name), first n."""
    t = pd.DataFrame({
        "name": key,
        "total": df.cost_usd,
        "cross_zone": df.cost_usd.where(df.traffic_class == "cross_zone", 0.0),
        "egress": df.cost_usd.where(df.traffic_class == "internet_egress", 0.0),
    }).groupby("name").sum()
    return t.reset_index().sort_values(["total", "name"], ascending=[False, True]).head(n).set_index("name")


def workload_key(df: pd.DataFrame) -> pd.Series:
    return (df.src_namespace + "/" + df.src_workload).fillna("(node)")


def egress_destinations(df: pd.DataFrame, n: int) -> list[tuple[str, float]]:
    eg = df[df.traffic_class == "internet_egress"]
    g = eg.groupby(eg.dst_domain.fillna(eg.dst_ip)).tx_bytes.sum().reset_index()
    g.columns = ["dest", "tx"]
    g = g.sort_values(["tx", "dest"], ascending=[False, True]).head(n)
    return [(r.dest, r.tx / GB) for r in g.itertuples()]


def egress_domains(df: pd.DataFrame) -> dict[str, float]:
    eg = df[df.traffic_class == "internet_egress"]
    dom = eg.dst_domain.map(lambda d: ".".join(d.split(".")[-2:]) if isinstance(d, str) else "(no DNS name)")
    return {k: v / GB for k, v in eg.groupby(dom).tx_bytes.sum().items()}


def cross_zone_pairs(df: pd.DataFrame) -> dict[tuple[str, str], float]:
    cz = df[df.traffic_class == "cross_zone"]
    src = workload_key(cz)
    dst = (cz.dst_namespace + "/" + cz.dst_workload.fillna(cz.dst_name)).fillna(cz.dst_name).fillna(cz.dst_ip)
    return {k: float(v) for k, v in cz.groupby([src, dst]).cost_usd.sum().items()}


def service_savings(df: pd.DataFrame) -> dict[str, float]:
    cz = df[(df.traffic_class == "cross_zone") & df.dst_service.notna()]
    g = cz.groupby(cz.dst_namespace + "/" + cz.dst_service).cost_usd.sum()
    return {k: float(v) for k, v in g.items() if v > 0}


def month_egress(lake: Path, month: str) -> tuple[int, float]:
    """Tiered internet-egress bytes (tx) in `month` (YYYY-MM), every namespace, and the tiered
    part of their cost as the job wrote it: cost_usd less the NAT / endpoint processing, the
    only other charge an internet-egress row carries."""
    df = cost_flows(lake)
    eg = df[(df.traffic_class == "internet_egress") & df.date.str.startswith(month)
            & ~df.rate_card.fillna("").str.startswith("rule:")]
    return int(eg.tx_bytes.sum()), float((eg.cost_usd - eg.processing_cost_usd.fillna(0.0)).sum())


def backends_everywhere(df: pd.DataFrame) -> dict[str, bool]:
    """Per service: do the backend zones seen cover every zone its callers are in?"""
    sv = df[df.dst_service.notna() & df.traffic_class.isin(["same_zone", "cross_zone"])]
    key = sv.dst_namespace + "/" + sv.dst_service
    return {k: set(g.src_zone) <= set(g.dst_zone) for k, g in sv.groupby(key)}

"""Read-side views of the cost tables for the notebook and `netmon-jobs report`.

`connect(lake, start, end)` gives a DuckDB connection with the views `cost_flows`,
`namespace_hourly` and `workload_daily`, each a pyarrow dataset over only the files of the
dates asked for (partition pruning by path, before any byte is read). DuckDB pushes the
columns a query names and its filters into the Parquet scan, so a query touches a few
columns of a few days, never the whole table: a month of a 100-node cluster fits on a laptop.
Local, S3 and MinIO lakes read the same way (the lake's pyarrow filesystem).
"""
from __future__ import annotations

import datetime as dt

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from jobs import catalog
from lake import schema as S
from lake.storage import Lake

#: view name -> cost table (under costs/)
VIEWS = {"cost_flows": "flows", "namespace_hourly": "namespace_hourly", "workload_daily": "workload_daily"}


def cost_files(lake: Lake, table: str, start: dt.date | None = None, end: dt.date | None = None) -> list[str]:
    """Paths of the committed Parquet files of cost table `table` ("flows", ...) whose date is
    in [start, end] (inclusive; None: unbounded): what the hours' commit records list, never
    a half-published hour (jobs/catalog.py)."""
    return catalog.current_files(lake, f"costs/{table}", start, end)


def dataset(lake: Lake, table: str, start: dt.date | None = None, end: dt.date | None = None) -> ds.Dataset:
    """The cost table's files for [start, end] as one dataset with its partition columns
    (`date` as a DATE, `hour` as text, as in docs/queries.md). The schema is the contract's,
    so files written before a column existed read it as nulls."""
    t = S.TABLES[f"costs/{table}"]
    parts = pa.schema([("date", pa.date32())] + [(p, pa.string()) for p in t.partitions if p != "date"])
    schema = pa.schema(list(t.schema) + list(parts))
    # Partition values come from the path below each file's table directory: the lake's, or a
    # run's staging directory for an hour being rolled forward at this instant.
    groups: dict[str, list[str]] = {}
    for path in cost_files(lake, table, start, end):
        groups.setdefault(path.split("/date=", 1)[0], []).append(path)
    sets = [ds.dataset(paths, schema=schema, format="parquet", filesystem=lake.fs,
                       partitioning=ds.partitioning(parts, flavor="hive"), partition_base_dir=base)
            for base, paths in sorted(groups.items())]
    if len(sets) == 1:
        return sets[0]
    return ds.dataset(sets) if sets else ds.dataset([], schema=schema, format="parquet", filesystem=lake.fs)


def connect(lake: Lake, start: dt.date | None = None, end: dt.date | None = None,
            con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per cost table, limited to dates [start, end]."""
    con = con or duckdb.connect()
    for view, table in VIEWS.items():
        con.register(view, dataset(lake, table, start, end))
    return con


def lake_dates(lake: Lake) -> list[dt.date]:
    """The dates that have committed cost hours, in order (from listings only)."""
    return sorted({h.date() for h in catalog.committed_hours(lake)})


def egress_tier_position(lake: Lake, end: dt.date, cards=None) -> list[dict]:
    """Where each tier pool's internet egress stands on day `end`: month-to-date bytes (the 1st
    of the month through `end`, every namespace: tiers count the account's volume), the tier
    they are in, what is left of it, the provider's free allowance used, and the month's tiered
    charge. The charge is the cost job's own arithmetic (`pricing.tier_costs` over the month's
    (window, pool) volumes in time order, from the state the month's first committed hour was
    tiered from: the config's egress baseline), so it equals the tiered part of the rows'
    cost_usd; the volume includes the baseline (`baseline_gb`), the charge only the lake's."""
    import pyarrow.compute as pc  # noqa: PLC0415

    from jobs import pricing  # noqa: PLC0415 - only for the tier curve
    cards = cards or pricing.default_cards()
    con = duckdb.connect()
    con.register("mtd", dataset(lake, "flows", end.replace(day=1), end))
    # with a destination map (GCP egress by destination), the pool also depends on the address
    by_dest = ", dst_ip, dst_domain" if cards.destinations else ""
    vol = con.sql(f"""
        SELECT src_provider, src_region, window_start{by_dest}, SUM(tx_bytes) AS tier_bytes
        FROM mtd
        WHERE traffic_class = 'internet_egress' AND NOT starts_with(COALESCE(rate_card, ''), 'rule:')
        GROUP BY ALL""").to_arrow_table()
    if vol.num_rows == 0:
        return []
    if cards.destinations:
        rows = vol.append_column("traffic_class", pa.array(["internet_egress"] * vol.num_rows)) \
                  .append_column("rate_card", pa.array([""] * vol.num_rows)) \
                  .append_column("tx_bytes", pc.cast(vol["tier_bytes"], pa.int64()))
        pools_arr, _ = pricing.tier_pools(rows, cards)
        vol = pa.table({"tier_pool": pools_arr, "window_start": vol["window_start"],
                        "tier_bytes": pc.cast(vol["tier_bytes"], pa.int64())}) \
            .group_by(["tier_pool", "window_start"]).aggregate([("tier_bytes", "sum")]) \
            .rename_columns(["tier_pool", "window_start", "tier_bytes"])
    else:
        pools = [pricing.pool_name(p, r) for p, r in zip(vol["src_provider"].to_pylist(), vol["src_region"].to_pylist())]
        vol = pa.table({"tier_pool": pa.array(pools, pa.string()), "window_start": vol["window_start"],
                        "tier_bytes": pc.cast(vol["tier_bytes"], pa.int64())})
    vol = vol.sort_by([("window_start", "ascending"), ("tier_pool", "ascending")])
    start = month_start_state(lake, end)
    charge, state = pricing.tier_costs(vol, start, cards)
    by_pool: dict[str, float] = {}
    for pool, usd in zip(vol["tier_pool"].to_pylist(), charge.tolist()):
        by_pool[pool] = by_pool.get(pool, 0.0) + usd
    out = []
    for pool in sorted(by_pool):
        card = cards.card(*pricing.pool_key(pool))
        total = state[pool]
        base = int(start.get(pool, 0))
        gb = total / card.egress_unit
        free_gb = card.free_bytes() / card.egress_unit
        free_used = state.get(f"{card.provider}/free_allowance", 0) / card.egress_unit
        lo, hi, rate = 0.0, None, 0.0
        for up_to, per_gb in card.tiers:
            rate, hi = per_gb, up_to
            if up_to is None or gb < up_to:
                break
            lo = float(up_to)
        if free_gb and free_used < free_gb:
            rate = 0.0          # still inside the account's free allowance
        out.append({
            "rate_card": card.name + ("@" + pricing.pool_key(pool)[1].partition("@")[2]
                                      if "@" in pricing.pool_key(pool)[1] else ""), "month": f"{end:%Y-%m}", "through": end.isoformat(),
            "egress_bytes": int(total), "egress_gb": gb, "baseline_gb": base / card.egress_unit,
            "free_gb": free_gb, "free_used_gb": free_used,
            "tier_from_gb": lo, "tier_to_gb": None if hi is None else float(hi), "per_gb_usd": rate,
            "gb_to_next_tier": None if hi is None else float(hi) - gb,
            "month_cost_usd": by_pool[pool],
        })
    return out


def month_start_state(lake: Lake, end: dt.date) -> dict:
    """The tier state the month of `end` started from (its first committed hour's state before:
    the config's egress baseline, {} without one)."""
    recs = catalog.current_records(lake, end.replace(day=1), end)
    return dict(recs[min(recs)].tier_state_before) if recs else {}

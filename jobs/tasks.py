"""Task bodies of the cost job (run in Ray workers or inline); each reads and writes the lake itself.

- wave 0: `load_dns_chunk`, `load_inventory_chunk` (one hour of DNS / inventory files)
- wave 1: `compute_hour` (the hour's pre-tier cost table and a small info dict)
- wave 2: `finish_hour` (egress tiers from month-to-date offsets, the cost partition)
- `rollup_date` (a date's rollups)
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs import load
from jobs import summary as sm
from jobs.discover import HourSpec
from jobs.errors import JobError
from lake import schema as S
from lake.storage import Lake, job_lake

#: Parquet metadata key of a cost partition: the month-to-date egress offsets it was tiered from.
OFFSETS_META = b"netmon.egress_offsets"
UTC = dt.timezone.utc


# The pure stages (jobs/pipeline.py and friends) are imported here only, so the rest of this
# module depends on nothing but their documented entry points.

_RANGES_CACHE: dict[str | None, Any] = {}


def _ip_ranges(directory: str | None):
    """Published cloud IP ranges, loaded once per worker process (None: no cloud tagging)."""
    if directory is None:
        return None
    if directory not in _RANGES_CACHE:
        from jobs.ipranges import CloudRanges  # noqa: PLC0415
        _RANGES_CACHE[directory] = CloudRanges.load_dir(directory)
    return _RANGES_CACHE[directory]


def _build_context(inv: dict[str, pa.Table], dns: pa.Table, cfg, ranges_dir: str | None):
    from jobs import pipeline  # noqa: PLC0415
    return pipeline.build_context(inv, dns, cfg, _ip_ranges(ranges_dir))


def _egress_volumes(costs: pa.Table) -> dict[str, int]:
    from jobs import pipeline  # noqa: PLC0415
    return {_key(k): int(v) for k, v in pipeline.egress_bytes(costs).items()}


def _tier_amounts(costs: pa.Table, offsets: dict[str, int]) -> np.ndarray:
    """The tiered internet-egress cost of each row given month-to-date `offsets` (0 elsewhere)."""
    from jobs import pipeline  # noqa: PLC0415
    i = costs.schema.get_field_index("cost_usd")
    zero = costs.set_column(i, costs.schema.field(i), pa.array(np.zeros(costs.num_rows), pa.float64()))
    tiered, _ = pipeline.apply_egress_tiers(zero, {_unkey(k): v for k, v in offsets.items()})
    return tiered.column("cost_usd").to_numpy()


def _apply_tiers(costs: pa.Table, offsets: dict[str, int], old_offsets: dict[str, int] | None) -> pa.Table:
    """Add the tiered egress cost to pre-tier `costs`; with `old_offsets`, `costs` were already
    tiered from those offsets (a stored partition): swap the old tier amounts for the new."""
    cost = costs.column("cost_usd").to_numpy().astype(np.float64)
    if old_offsets is not None:
        old = _tier_amounts(costs, old_offsets)
        cost = np.where(old != 0, cost - old, cost)
    new = _tier_amounts(costs, offsets)
    cost = np.where(new != 0, cost + new, cost)
    i = costs.schema.get_field_index("cost_usd")
    return costs.set_column(i, costs.schema.field(i), pa.array(cost, pa.float64()))


def _key(k) -> str:
    """Ledger key of a tier key: the stages use (provider, region) tuples."""
    return "/".join(k) if isinstance(k, tuple) else str(k)


def _unkey(k: str) -> tuple[str, ...]:
    return tuple(k.split("/", 1))




_LAKES: dict[tuple[str, str | None], Lake] = {}


def _lake(url: str, endpoint: str | None) -> Lake:
    key = (url, endpoint)
    if key not in _LAKES:
        _LAKES[key] = job_lake(url, endpoint)  # storage calls retried with backoff
    return _LAKES[key]


def load_dns_chunk(lake_url: str, endpoint: str | None, files: list[str]):
    """Wave 0: one hour of raw DNS files, checked (bad ones quarantined). Shared by every hour
    whose lookback covers it, so each file is read once per run."""
    return load.load_files(_lake(lake_url, endpoint), files, "raw/dns")


def load_inventory_chunk(lake_url: str, endpoint: str | None, files: dict[str, list[str]]):
    """Wave 0: the inventory snapshots taken in one hour, per kind."""
    lake = _lake(lake_url, endpoint)
    out, bad = {}, []
    for kind in S.INVENTORY_KINDS:
        out[kind], b = load.read_inventory(lake, files.get(kind, []), kind)
        bad += b
    return out, bad


def compute_hour(lake_url: str, endpoint: str | None, spec: HourSpec, cfg, ranges_dir: str | None,
                 n_dns: int, *chunks):
    """Wave 1: the hour's pre-tier cost table and an info dict (rows, egress, quarantined).
    `chunks`: the DNS tables of spec.dns_hours (n_dns of them), then the inventory dicts of
    spec.inv_hours (wave-0 results; Ray resolves them to values before the call)."""
    lake = _lake(lake_url, endpoint)
    flows, bad = load.load_files(lake, spec.flows, "raw/flows")
    flows = flows.combine_chunks()  # one chunk per file otherwise; the stages work on whole columns
    dns_parts, inv_parts = chunks[:n_dns], chunks[n_dns:]
    dns = pa.concat_tables(dns_parts) if dns_parts else S.RAW_DNS.empty_table()
    inv = {k: pa.concat_tables([c[k] for c in inv_parts]) if inv_parts else None for k in S.INVENTORY_KINDS}
    if flows.num_rows:
        from jobs import pipeline  # noqa: PLC0415
        ctx = _build_context({k: v for k, v in inv.items() if v is not None}, dns, cfg, ranges_dir)
        stats: dict = {}
        costs = S.conform(pipeline.cost_flows(flows, ctx, stats), S.COST_FLOWS)
        _gate_costs(spec.hour, costs, stats["kept_bytes"])
    else:
        costs, stats = S.COST_FLOWS.empty_table(), {"kept_bytes": 0}
    # an hour costed without full inventory says so in every row (and in its record)
    gaps = load.inventory_gaps(inv, spec.hour) if flows.num_rows else []
    i = costs.schema.get_field_index("inventory_gap")
    costs = costs.set_column(i, costs.schema.field(i), pa.array([bool(gaps)] * costs.num_rows, pa.bool_()))
    info = {
        "hour": spec.hour,
        "rows_in": flows.num_rows,
        "rows_out": costs.num_rows,
        "files_read": len(spec.flows) - len(bad),
        "egress": _egress_volumes(costs) if costs.num_rows else {},
        "quarantined": bad,
        "kept_bytes": stats["kept_bytes"],
        "inventory_gap": gaps,
    }
    return costs, info


def _gate_costs(hour: dt.datetime, costs: pa.Table, kept_bytes: int) -> None:
    """A cost partition is published only if it passes its data-quality rules and its bytes
    equal the kept raw rows' bytes; otherwise the run fails, saying why."""
    from jobs import quality  # noqa: PLC0415

    fails = quality.critical(quality.check_costs(costs, raw_bytes=kept_bytes))
    if fails:
        raise JobError(f"cost partition {hour:%Y-%m-%dT%H}:00Z failed its checks and was not published: "
                       + "; ".join(f.describe() for f in fails))


def finish_hour(lake_url: str, endpoint: str | None, hour: dt.datetime, costs: pa.Table | None,
                offsets: dict[str, int], old_offsets: dict[str, int] | None, token: int,
                old_parts: list[str] | None = None) -> dict:
    """Wave 2: tier the hour's internet egress from month-to-date `offsets`, write its partition.
    `costs` None means re-tier the stored partition (an earlier hour of the month changed): its
    old tier amounts are recomputed from the offsets recorded in its metadata (`old_offsets`,
    the ledger's, if absent) and swapped for the new ones.

    The offsets a partition was tiered from are kept in its Parquet metadata, so re-tiering is
    exact even if a crash left the ledger behind the partitions.

    The part is staged under `token` (jobs/commit.py); the driver commits the hour."""
    from jobs import commit  # noqa: PLC0415
    lake = _lake(lake_url, endpoint)
    rel = commit.part_path(hour, token, 0)
    if costs is None:
        stored = pa.concat_tables([lake.read_table(p) for p in old_parts])
        meta = (stored.schema.metadata or {}).get(OFFSETS_META)
        if meta is not None:
            old_offsets = json.loads(meta)
        costs = S.conform(stored, S.COST_FLOWS)
    else:
        old_offsets = None
    if costs.num_rows:
        costs = S.conform(_apply_tiers(costs, offsets, old_offsets), S.COST_FLOWS)
    meta = dict(S.COST_FLOWS.metadata or {})
    meta[OFFSETS_META] = json.dumps(dict(sorted(offsets.items()))).encode()
    commit.write_part(lake, token, rel, costs.replace_schema_metadata(meta))
    return {"hour": hour, "rows": costs.num_rows, "partial": sm.partial(costs), "parts": {commit.FLOWS: [rel]}}


#: cost columns the rollups group and sum (read alone: a fraction of the partition)
from jobs.rollup import ROLLUP_COLUMNS  # noqa: E402 - the columns the rollups and the FOCUS export read


def rollup_date(lake_url: str, endpoint: str | None, day: dt.date) -> int:
    """Rebuild the date's rollups from its committed cost parts; returns the cost rows read."""
    from jobs import catalog, rollup  # noqa: PLC0415
    lake = _lake(lake_url, endpoint)
    when = dt.datetime(day.year, day.month, day.day, tzinfo=UTC)
    tables = []
    for full in catalog.current_files(lake, "costs/flows", day, day):
        with lake.fs.open_input_file(full) as f:
            pf = pq.ParquetFile(f)  # partitions written before a column existed lack it
            tables.append(pf.read(columns=[c for c in ROLLUP_COLUMNS if c in pf.schema_arrow.names]))
    tables = [S.conform(t, S.COST_FLOWS).select(ROLLUP_COLUMNS) for t in tables]
    costs = pa.concat_tables(tables) if tables else S.COST_FLOWS.empty_table().select(ROLLUP_COLUMNS)
    lake.write_table(S.cost_file_path("costs/namespace_hourly", when),
                     S.conform(rollup.rollup_namespace_hourly(costs), S.COST_NAMESPACE_HOURLY))
    lake.write_table(S.cost_file_path("costs/workload_daily", when),
                     S.conform(rollup.rollup_workload_daily(costs), S.COST_WORKLOAD_DAILY))
    from jobs.focus import focus_rows  # noqa: PLC0415
    lake.write_table(S.cost_file_path("costs/focus", when), focus_rows(costs))
    return costs.num_rows



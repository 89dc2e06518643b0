"""Task bodies of the cost job (run in Ray workers or inline); each reads and writes the lake itself.

- `build_context`: one hour's shared context (inventory, DNS as-of state; jobs/context.py),
  and the DNS state at the end of the hour, handed to the next hour's context
- `cost_cell`: one cell (jobs/cells.py): read, check, quarantine, resolve, classify, price
  (tiered egress at a provisional rate), write its staged part, return a small summary
- `retier_part`: swap a part's tier rates for the settled ones (only `cost_usd` changes)
- `rollup_day`: a date's rollups from its hours' partials
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs import context as cx
from jobs import load
from jobs import partials as pt
from jobs import summary as sm
from jobs import tiers
from jobs.cells import Cell
from jobs.errors import JobError
from lake import schema as S
from lake.storage import Lake, job_lake

UTC = dt.timezone.utc
HOUR = dt.timedelta(hours=1)

_RANGES_CACHE: dict[str | None, Any] = {}
_LAKES: dict[tuple[str, str | None], Lake] = {}


def _ip_ranges(directory: str | None):
    """Published cloud IP ranges, loaded once per worker process (None: no cloud tagging)."""
    if directory is None:
        return None
    if directory not in _RANGES_CACHE:
        from jobs.ipranges import CloudRanges  # noqa: PLC0415
        _RANGES_CACHE[directory] = CloudRanges.load_dir(directory)
    return _RANGES_CACHE[directory]


def _lake(url: str, endpoint: str | None) -> Lake:
    key = (url, endpoint)
    if key not in _LAKES:
        _LAKES[key] = job_lake(url, endpoint)  # storage calls retried with backoff
    return _LAKES[key]


# ----------------------------------------------------------------------------- context

@dataclasses.dataclass
class ContextSpec:
    """What one hour's context is built from (paths and digests, no data)."""
    hour: dt.datetime
    inventory: dict[str, list[str]]          # kind -> snapshot files its as-of joins may pick
    dns_own: list[str]                       # DNS files of the hour
    dns_next: list[str]                      # DNS files of the next hour (windows ending there)
    cold: list[list[str]]                    # DNS files of [hour - 1 - lookback, hour - 1], hour by hour
    prev_digest: str                         # digest the stored state of hour - 1 must carry
    digest: str                              # digest of the state this hour leaves
    lookback: dt.timedelta


def _load_dns(lake: Lake, files: list[str], bad: list[dict]) -> pa.Table:
    t, b = load.load_files(lake, files, "raw/dns")
    bad += b
    return t


def _prev_state(lake: Lake, spec: ContextSpec, handed: pa.Table | None, bad: list[dict]) -> tuple[pa.Table, str]:
    """The DNS state at the end of the previous hour: handed over by its context task in this
    run, else the stored one if its digest matches, else rebuilt from the lookback's files."""
    if handed is not None:
        return handed, "handed"
    rel = cx.state_path(spec.hour - HOUR)
    try:
        stored = lake.read_table(rel)
        if cx.digest_of(stored) == spec.prev_digest:
            return S.conform(stored, S.RAW_DNS), "stored"
    except Exception:  # noqa: BLE001 - missing or unreadable: rebuild it
        pass
    state = S.RAW_DNS.empty_table()
    first = spec.hour - HOUR * len(spec.cold)
    for k, files in enumerate(spec.cold):  # one hour at a time: memory stays one hour + the state
        own = _load_dns(lake, files, bad)
        state = cx.reduce_answers(pa.concat_tables([state, own]), first + (k + 1) * HOUR, spec.lookback)
    return state, "cold"


def build_context(lake_url: str, endpoint: str | None, spec: ContextSpec, cfg, handed_state, handed_own):
    """Returns (the hour's pipeline Context without IP ranges, the DNS state at the end of the
    hour, the next hour's DNS rows, quarantined/skipped files, the data-quality evidence for
    the driver to confirm)."""
    from jobs import quality  # noqa: PLC0415
    with quality.deferred() as evidence:
        return (*_build_context(lake_url, endpoint, spec, cfg, handed_state, handed_own), evidence)


def _build_context(lake_url: str, endpoint: str | None, spec: ContextSpec, cfg, handed_state, handed_own):
    from jobs import pipeline  # noqa: PLC0415
    lake = _lake(lake_url, endpoint)
    bad: list[dict] = []
    prev, _how = _prev_state(lake, spec, handed_state, bad)
    own = handed_own if handed_own is not None else _load_dns(lake, spec.dns_own, bad)
    nxt = _load_dns(lake, spec.dns_next, bad)
    inv = {}
    for kind in S.INVENTORY_KINDS:
        inv[kind], b = load.read_inventory(lake, spec.inventory.get(kind, []), kind)
        bad += b
    ctx = pipeline.build_context(inv, pa.concat_tables([prev, own, nxt]), cfg, None)
    state = cx.reduce_answers(pa.concat_tables([prev, own]), spec.hour + HOUR, spec.lookback)
    lake.write_table(cx.state_path(spec.hour), cx.with_digest(state, spec.digest))
    return ctx, state, nxt, bad


# ----------------------------------------------------------------------------- cells

def _gate_costs(hour: dt.datetime, costs: pa.Table, kept_bytes: int) -> None:
    """A cost part is published only if it passes its data-quality rules and its bytes equal
    the kept raw rows' bytes; otherwise the run fails, saying why."""
    from jobs import quality  # noqa: PLC0415

    fails = quality.critical(quality.check_costs(costs, raw_bytes=kept_bytes))
    if fails:
        raise JobError(f"cost partition {hour:%Y-%m-%dT%H}:00Z failed its checks and was not published: "
                       + "; ".join(f.describe() for f in fails))


def _tier_rows(costs: pa.Table, cards) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Per row: pool index (-1 untiered), tier bytes; the pool names; window_start in us."""
    from jobs import pricing  # noqa: PLC0415
    pools, nbytes = pricing.tier_pools(costs, cards)
    enc = pc.dictionary_encode(pools)
    code = enc.indices.cast(pa.int64()).fill_null(-1).to_numpy()
    ws = costs.column("window_start").cast(pa.int64()).to_numpy() if costs.num_rows else np.zeros(0, np.int64)
    return code, nbytes.to_numpy().astype(np.int64), enc.dictionary.to_pylist(), ws


def _row_rates(code, names, ws, rates: dict[tuple[str, int], float], default: dict[str, float]) -> np.ndarray:
    """Per row, the rate of its (pool, window) (pool default where the window is not listed)."""
    out = np.zeros(len(code))
    tiered = np.flatnonzero(code >= 0)
    if len(tiered) == 0:
        return out
    keys, inv = np.unique(np.stack([code[tiered], ws[tiered]]), axis=1, return_inverse=True)
    vals = np.array([rates.get((names[c], int(w)), default.get(names[c], 0.0)) for c, w in keys.T])
    out[tiered] = vals[inv.reshape(-1)]
    return out


def _set_cost(costs: pa.Table, cost: np.ndarray, rates: dict[tuple[str, int], float]) -> pa.Table:
    i = costs.schema.get_field_index("cost_usd")
    t = costs.set_column(i, costs.schema.field(i), pa.array(cost, pa.float64()))
    meta = dict(S.COST_FLOWS.metadata or {})
    meta[tiers.RATES_META] = tiers.rates_meta(rates)
    return t.replace_schema_metadata(meta)


def _volumes(code, nbytes, names, ws) -> list[tuple[str, int, int]]:
    tiered = np.flatnonzero(code >= 0)
    if len(tiered) == 0:
        return []
    keys, inv = np.unique(np.stack([code[tiered], ws[tiered]]), axis=1, return_inverse=True)
    exact = np.zeros(keys.shape[1], np.int64)
    np.add.at(exact, inv.reshape(-1), nbytes[tiered])  # int64 sums: bytes stay exact
    return [(names[c], int(w), int(b)) for (c, w), b in zip(keys.T, exact)]


def cost_cell(lake_url: str, endpoint: str | None, cell: Cell, ctx, ranges_dir: str | None,
              staged: str, tier_state: dict) -> dict:
    """Cost one cell and write its part to `staged`. Tiered egress is priced at the marginal
    rate of month-to-date `tier_state` (the driver's best estimate of the state before the
    hour); the driver settles it from the returned volumes. Returns a small summary, with the
    data-quality evidence the driver confirms before it commits the hour."""
    from jobs import quality  # noqa: PLC0415
    with quality.deferred() as evidence:
        out = _cost_cell(lake_url, endpoint, cell, ctx, ranges_dir, staged, tier_state)
    return {**out, "quality": evidence}


def _cost_cell(lake_url: str, endpoint: str | None, cell: Cell, ctx, ranges_dir: str | None,
               staged: str, tier_state: dict) -> dict:
    from jobs import pipeline  # noqa: PLC0415
    lake = _lake(lake_url, endpoint)
    flows, bad = load.load_files(lake, list(cell.files), "raw/flows")
    ctx = dataclasses.replace(ctx, ranges=_ip_ranges(ranges_dir))
    stats: dict = {"kept_bytes": 0}
    if flows.num_rows:
        costs = S.conform(pipeline.cost_flows(flows, ctx, stats), S.COST_FLOWS)
        _gate_costs(cell.hour, costs, stats["kept_bytes"])
    else:
        costs = S.COST_FLOWS.empty_table()
    # an hour costed without full inventory says so in every row (and in its record)
    gaps = load.context_gaps(ctx, cell.hour) if flows.num_rows else []
    i = costs.schema.get_field_index("inventory_gap")
    costs = costs.set_column(i, costs.schema.field(i), pa.array([bool(gaps)] * costs.num_rows, pa.bool_()))
    code, nbytes, names, ws = _tier_rows(costs, ctx.cards)
    provisional = {p: tiers.marginal_rate(p, cell.hour, tier_state, ctx.cards) for p in names}
    vols = _volumes(code, nbytes, names, ws)
    rates = {(p, w): provisional[p] for p, w, _ in vols}
    cost = costs.column("cost_usd").to_numpy().astype(np.float64)
    if vols:
        cost = cost + _row_rates(code, names, ws, rates, provisional) * nbytes
    costs = _set_cost(costs, cost, rates)
    lake.write_table(staged, costs)
    return {
        "hour": cell.hour, "cell": cell.index, "part": staged,
        "rows_in": flows.num_rows, "rows_out": costs.num_rows, "kept_bytes": stats["kept_bytes"],
        "files_read": len(cell.files) - len(bad), "quarantined": bad,
        "volumes": vols, "rates": rates, "inventory_gap": gaps,
        "partials": pt.partials(costs), "summary": sm.partial(costs),
    }


def retier_part(lake_url: str, endpoint: str | None, src: str, dst: str, rates: dict[tuple[str, int], float]) -> dict | None:
    """Re-price the tiered rows of the part at `src` at the settled `rates` ((pool, window) ->
    per-byte rate) and write it to `dst`. None when the part was already priced at them (its
    footer says so; the rows are not read). Otherwise the new part's summary partial and the
    rollup partials' change (cost only)."""
    lake = _lake(lake_url, endpoint)
    def footer():
        with lake.fs.open_input_file(lake.path(src)) as f:
            return pq.ParquetFile(f).schema_arrow.metadata or {}
    meta = lake.call(footer, f"reading {src}")
    old = tiers.parse_rates_meta(meta.get(tiers.RATES_META))
    mine = {k: rates.get(k, 0.0) for k in old}
    if mine == old:
        return None
    costs = S.conform(lake.read_table(src), S.COST_FLOWS)
    code, nbytes, names, ws = _tier_rows(costs, None)
    before = costs.column("cost_usd").to_numpy().astype(np.float64)
    r_old = _row_rates(code, names, ws, old, {})
    r_new = _row_rates(code, names, ws, mine, {})
    moved = r_old != r_new
    cost = before.copy()
    cost[moved] = (before[moved] - r_old[moved] * nbytes[moved]) + r_new[moved] * nbytes[moved]
    new = _set_cost(costs, cost, mine)
    lake.write_table(dst, new)
    old_t = costs.set_column(costs.schema.get_field_index("cost_usd"), "cost_usd", pa.array(before, pa.float64()))
    return {"part": dst, "summary": sm.partial(new), "old_summary": sm.partial(old_t),
            "delta": pt.delta(pt.partials(old_t), pt.partials(new))}


# ----------------------------------------------------------------------------- rollups

def rollup_day(lake_url: str, endpoint: str | None, day: dt.date, hour_partials: dict[str, list[str]],
               legacy_parts: list[str] = ()) -> int:
    """Write the date's rollups (costs/<rollup>/date=D/part-0, one file each, written whole)
    from its hours' partial files (rollup -> files), never from cost rows; `legacy_parts`: cost
    parts of hours committed before partials existed, rolled up from their rows. Returns the
    number of partial rows read."""
    from jobs.rollup import ROLLUP_COLUMNS  # noqa: PLC0415
    lake = _lake(lake_url, endpoint)
    when = dt.datetime(day.year, day.month, day.day, tzinfo=UTC)
    extra = {}
    if legacy_parts:
        tables = []
        def columns(rel):
            with lake.fs.open_input_file(lake.path(rel)) as f:
                pf = pq.ParquetFile(f)
                return pf.read(columns=[c for c in ROLLUP_COLUMNS if c in pf.schema_arrow.names])
        for rel in legacy_parts:
            tables.append(lake.call(lambda rel=rel: columns(rel), f"reading {rel}"))
        extra = pt.partials(pa.concat_tables([S.conform(t, S.COST_FLOWS) for t in tables]))
    n = 0
    for name, r in pt.ROLLUPS.items():
        tables = [lake.read_table(rel) for rel in hour_partials.get(name, [])] + ([extra[name]] if extra else [])
        n += sum(t.num_rows for t in tables)
        lake.write_table(S.cost_file_path(f"costs/{name}", when), r.combine(tables))
    return n

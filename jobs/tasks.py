"""Task bodies of the cost job (run in Ray workers or inline); each reads and writes the lake itself.

- `build_context`: one hour's shared context (inventory, DNS as-of state; jobs/context.py),
  and the DNS state at the end of the hour, handed to the next hour's context
- `cost_cell`: one cell (jobs/cells.py): read, check, quarantine, resolve, classify, price
  (tiered egress at a provisional rate), write its staged part, return a small summary
- `relay_clients`: for a window larger than a cell, its outside clients' connections
  (resolve.outside_clients of all its files), which each of its cells needs for the relay rule
- `roll_dns`: a later, already committed hour after its previous hour's DNS state changed:
  its new state, and its parts re-named where a name changes (jobs/rename.py)
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
    #: kind -> the hour's own snapshot files and later ones (read when an inventory state is carried)
    inv_new: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    inv_prev_digest: str = ""                # digest the stored inventory state of hour - 1 must carry
    inv_digest: str = ""                     # digest of the inventory state this hour leaves


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


def _prev_inventory(lake: Lake, spec: ContextSpec, handed) -> dict | None:
    """The inventory state at the end of the previous hour (kind -> (rows, times)): handed
    over in this run, else the stored one if its digest matches, else None (a cold start)."""
    if handed is not None:
        return handed
    if not spec.inv_prev_digest:
        return None
    out = {}
    for kind in S.INVENTORY_KINDS:
        rel = cx.inventory_state_path(kind, spec.hour - HOUR)
        try:
            t = lake.read_table(rel) if lake.exists(rel) else None
        except Exception:  # noqa: BLE001 - unreadable: cold start
            t = None
        if t is None or cx.digest_of(t) != spec.inv_prev_digest:
            return None
        out[kind] = (S.conform(t, S.TABLES[f"inventory/{kind}"].schema), cx.times_of(t))
    return out


def build_context(lake_url: str, endpoint: str | None, spec: ContextSpec, cfg, handed_state, handed_own,
                  handed_inv=None):
    """Returns (the hour's pipeline Context without IP ranges, its inventory as validity
    intervals; the DNS state at the end of the hour; the next hour's DNS rows;
    quarantined/skipped files; {"changed": whether the DNS state differs from the one stored
    before: the later hours' names may have moved}; the inventory state at the end of the
    hour; the data-quality evidence for the driver to confirm)."""
    from jobs import quality  # noqa: PLC0415
    with quality.deferred() as evidence:
        return (*_build_context(lake_url, endpoint, spec, cfg, handed_state, handed_own, handed_inv), evidence)


def _build_context(lake_url: str, endpoint: str | None, spec: ContextSpec, cfg, handed_state, handed_own,
                   handed_inv):
    from jobs import pipeline  # noqa: PLC0415
    lake = _lake(lake_url, endpoint)
    bad: list[dict] = []
    prev, _how = _prev_state(lake, spec, handed_state, bad)
    own = handed_own if handed_own is not None else _load_dns(lake, spec.dns_own, bad)
    nxt = _load_dns(lake, spec.dns_next, bad)
    carried = _prev_inventory(lake, spec, handed_inv)
    files = spec.inventory if carried is None else spec.inv_new  # carried: only this hour's and later
    inv, earlier = {}, {}
    for kind in S.INVENTORY_KINDS:
        inv[kind], b = load.read_inventory(lake, files.get(kind, []), kind)
        bad += b
        if carried is not None:
            rows, earlier[kind] = carried[kind]
            inv[kind] = pa.concat_tables([rows, inv[kind]])
    base = pipeline.build_context(inv, pa.concat_tables([prev, own, nxt]), cfg, None)
    inv_state = {kind: cx.inventory_state(getattr(base, kind), earlier.get(kind), spec.hour + HOUR)
                 for kind in S.INVENTORY_KINDS}
    # shared in the compact form: inventory as validity intervals (jobs/intervals.py)
    ctx = pipeline.compact(base, earlier)
    state = cx.reduce_answers(pa.concat_tables([prev, own]), spec.hour + HOUR, spec.lookback)
    changed = not cx.same_state(_stored_state(lake, spec.hour), state)
    lake.write_table(cx.state_path(spec.hour), cx.with_digest(state, spec.digest))
    if spec.inv_digest:
        for kind, (rows, times) in inv_state.items():
            lake.write_table(cx.inventory_state_path(kind, spec.hour), cx.with_times(rows, times, spec.inv_digest))
    return ctx, state, nxt, bad, {"changed": changed}, inv_state


def _stored_state(lake: Lake, hour: dt.datetime) -> pa.Table | None:
    """The DNS state stored for the end of `hour` (None: missing or unreadable)."""
    rel = cx.state_path(hour)
    try:
        return lake.read_table(rel) if lake.exists(rel) else None
    except Exception:  # noqa: BLE001 - unreadable: as if missing
        return None


@dataclasses.dataclass
class RollSpec:
    """A committed (or empty) hour the previous hour's changed DNS state is rolled through."""
    hour: dt.datetime
    dns_own: list[str]
    dns_next: list[str]
    digest: str                 # digest of the state this hour leaves
    lookback: dt.timedelta
    parts: list[tuple[str, str]]  # (committed part, staged name of its replacement)


def roll_dns(lake_url: str, endpoint: str | None, spec: RollSpec, cfg, ranges_dir: str | None, prev_state,
             prev: dict):
    """`prev_state`: the new DNS state at the end of the previous hour; `prev["changed"]`:
    whether it differs from the stored one (if not, nothing here can change: returns at once).
    Returns (the DNS state at the end of this hour, {"changed": whether it differs from the
    stored one, "parts": [rename result or None per part], "quarantined": [...]})."""
    if not prev.get("changed"):
        return None, {"hour": spec.hour, "changed": False, "parts": [None] * len(spec.parts), "quarantined": []}
    from jobs import pipeline  # noqa: PLC0415
    from jobs import rename as RN  # noqa: PLC0415
    from jobs.dns import DnsIndex  # noqa: PLC0415
    lake = _lake(lake_url, endpoint)
    bad: list[dict] = []
    prev_state = S.conform(prev_state, S.RAW_DNS)
    own = _load_dns(lake, spec.dns_own, bad)
    state = cx.reduce_answers(pa.concat_tables([prev_state, own]), spec.hour + HOUR, spec.lookback)
    changed = not cx.same_state(_stored_state(lake, spec.hour), state)
    lake.write_table(cx.state_path(spec.hour), cx.with_digest(state, spec.digest))
    out: list[dict | None] = []
    if spec.parts:
        nxt = _load_dns(lake, spec.dns_next, bad)
        index = DnsIndex(pa.concat_tables([prev_state, own, nxt]), cfg.dns_lookback_s)
        ctx = pipeline.build_context({}, None, cfg, _ip_ranges(ranges_dir))
        for src, dst in spec.parts:
            old = lake.read_table(src)
            got = RN.rename(old, index, ctx)
            if got is None:
                out.append(None)
                continue
            new, renamed, recosted = got
            lake.write_table(dst, new.replace_schema_metadata(old.schema.metadata))
            old = S.conform(old, S.COST_FLOWS)
            out.append({"part": dst, "renamed": renamed, "recosted": recosted, "summary": sm.partial(new),
                        "delta": pt.delta(pt.partials(old), pt.partials(new))})
    return state, {"hour": spec.hour, "changed": changed, "parts": out, "quarantined": bad}


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


def relay_clients(lake_url: str, endpoint: str | None, files: tuple[str, ...], ctx) -> pa.Table:
    """resolve.outside_clients of a window's files: the rows a relaying node reported for its
    outside clients (four narrow columns), for the cells that each hold part of the window.
    Files are checked as their cells check them (a file its cell will quarantine contributes
    nothing) but quarantined only by their own cell."""
    from jobs import quality  # noqa: PLC0415
    from jobs import resolve  # noqa: PLC0415
    lake = _lake(lake_url, endpoint)
    with quality.deferred():  # the cells' own evidence covers these files; no GX in workers
        flows, _ = load.load_files(lake, list(files), "raw/flows", move=False)
    # plain (not dictionary) columns: the cells concatenate the tables of several tasks
    schema = pa.schema([S.RAW_FLOWS.field(c) for c in resolve.CLIENT_COLS])
    if not flows.num_rows:
        return schema.empty_table()
    return resolve.outside_clients(resolve.encode(flows), ctx).cast(schema)


def cost_cell(lake_url: str, endpoint: str | None, cell: Cell, ctx, ranges_dir: str | None,
              staged: str, tier_state: dict, *clients: pa.Table) -> dict:
    """Cost one cell and write its part to `staged`. Tiered egress is priced at the marginal
    rate of month-to-date `tier_state` (the driver's best estimate of the state before the
    hour); the driver settles it from the returned volumes. `clients`: relay_clients of the
    window's other cells, when the cell holds only part of a window. Returns a small summary, with the
    data-quality evidence the driver confirms before it commits the hour."""
    from jobs import quality  # noqa: PLC0415
    with quality.deferred() as evidence:
        out = _cost_cell(lake_url, endpoint, cell, ctx, ranges_dir, staged, tier_state,
                         pa.concat_tables(clients) if clients else None)
    return {**out, "quality": evidence}


def _cost_cell(lake_url: str, endpoint: str | None, cell: Cell, ctx, ranges_dir: str | None,
               staged: str, tier_state: dict, clients: pa.Table | None) -> dict:
    from jobs import pipeline  # noqa: PLC0415
    lake = _lake(lake_url, endpoint)
    flows, bad = load.load_files(lake, list(cell.files), "raw/flows")
    ctx = dataclasses.replace(ctx, ranges=_ip_ranges(ranges_dir))
    stats: dict = {"kept_bytes": 0}
    if flows.num_rows:
        costs = S.conform(pipeline.cost_flows(flows, ctx, stats, clients), S.COST_FLOWS)
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

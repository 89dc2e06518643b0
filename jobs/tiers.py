"""Exact monthly volume tiers from small per-(pool, window) summaries, never by gathering rows
(the contract with pricing: `pricing.tier_pools` / `pricing.tier_costs`).

Every tiered row belongs to a pool and adds `tier_bytes` to its month-to-date volume. The cost
of a (pool, window) is `tier_costs` of the window's volume from the month-to-date state before
it; each row of the window gets that cost pro rata to its bytes, i.e. `rate * tier_bytes`
with `rate = cost / volume` (so the allocation does not depend on how rows were cut into
cells).

How the job applies it without a second pass over most rows:
1. A cell prices its tiered rows at a *provisional* rate per pool: the marginal rate at the
   best-known state before its hour (exact when the previous hour is already settled).
2. The driver sums the cells' volumes per (pool, window), calls `tier_costs` from the state
   after the previous hour of the month, and gets each window's exact rate.
3. A window whose exact rate equals the provisional one (it crossed no breakpoint: the usual
   case) needs nothing; only parts holding a window whose rate differs are rewritten
   (`tasks.retier_part`, which changes `cost_usd` and nothing else).
Rates are snapped to the card's marginal rates when they agree to 1e-7 (the interpolation of a
window's cost has rounding noise), so "equal" is exact and a settled part is bit-stable.

Each hour's record (and the month's ledger, a cache of the records) keeps its volumes and the
state before and after it; a late change re-tiers a later hour only if the state before it
actually moved, and within it only the parts whose windows' rates changed.
"""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa

from jobs import state as st
from lake import schema as S

#: Parquet metadata key of a cost part: {pool: {window_start_us: rate per byte}} it was priced at
RATES_META = b"netmon.tier_rates"
PROBE_BYTES = 1 << 30   # the marginal rate at a state is probed with one GiB
SNAP_REL = 1e-7

Volumes = dict[tuple[str, int], int]   # (pool, window_start in us) -> tier bytes


def volumes_table(vols: Volumes) -> pa.Table:
    """The contract's `volumes` table, sorted by (window_start, tier_pool)."""
    keys = sorted(vols, key=lambda k: (k[1], k[0]))
    return pa.table({
        "tier_pool": pa.array([k[0] for k in keys], pa.string()),
        "window_start": pa.array([k[1] for k in keys], pa.int64()).cast(S.TS),
        "tier_bytes": pa.array([int(vols[k]) for k in keys], pa.int64()),
    })


def add(into: Volumes, more) -> Volumes:
    for pool, w, b in more:
        into[(pool, int(w))] = into.get((pool, int(w)), 0) + int(b)
    return into


def card_rates(pool: str, cards) -> list[float]:
    """The marginal per-byte rates a pool's card can have (0 included)."""
    provider, _, rest = pool.partition("/")
    card = cards.card(provider, rest.split("/", 1)[0])
    return [0.0] + [float(per_gb) / card.egress_unit for _, per_gb in card.tiers]


def snap(rate: float, candidates: list[float]) -> float:
    for c in candidates:
        if abs(rate - c) <= SNAP_REL * max(abs(c), 1e-30) or (c == 0.0 and abs(rate) < 1e-30):
            return c
    return rate


def window_rates(vols: Volumes, before: dict, cards) -> tuple[dict[tuple[str, int], float], dict]:
    """Exact per-byte rate of each (pool, window) from the state `before`, and the state after."""
    from jobs import pricing  # noqa: PLC0415
    if not vols:
        return {}, dict(before)
    t = volumes_table(vols)
    cost, after = pricing.tier_costs(t, before, cards)
    pools = t.column("tier_pool").to_pylist()
    wins = t.column("window_start").cast(pa.int64()).to_pylist()
    nbytes = t.column("tier_bytes").to_pylist()
    cand: dict[str, list[float]] = {}
    out = {}
    for pool, w, b, c in zip(pools, wins, nbytes, cost.tolist()):  # one step per (pool, window): few
        if pool not in cand:
            cand[pool] = card_rates(pool, cards)
        out[(pool, w)] = snap(c / b, cand[pool]) if b > 0 else 0.0
    return out, after


def marginal_rate(pool: str, at: dt.datetime, state: dict, cards) -> float:
    """The rate one more GiB of `pool` would cost at month-to-date `state` (a cell's
    provisional rate)."""
    from jobs import pricing  # noqa: PLC0415
    t = pa.table({"tier_pool": pa.array([pool]), "window_start": pa.array([at], S.TS),
                  "tier_bytes": pa.array([PROBE_BYTES], pa.int64())})
    cost, _ = pricing.tier_costs(t, state, cards)
    return snap(float(cost[0]) / PROBE_BYTES, card_rates(pool, cards))


# ----------------------------------------------------------------- the month's ledger (jobs/state.py)
# Hour records and the ledger keep an hour's volumes as [[pool, window id, bytes], ...].

def window_id(us: int) -> str:
    t = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=int(us))
    return t.isoformat().replace("+00:00", "Z")


def window_us(wid: str) -> int:
    t = dt.datetime.fromisoformat(wid.replace("Z", "+00:00"))
    return int(round(t.timestamp() * 1_000_000))


def to_list(vols: Volumes) -> list[list]:
    return [[p, window_id(w), int(b)] for (p, w), b in sorted(vols.items(), key=lambda kv: (kv[0][1], kv[0][0])) if b]


def from_list(items: list) -> Volumes:
    return add({}, [(p, window_us(w), b) for p, w, b in items])


def same_state(a: dict, b: dict) -> bool:
    norm = lambda s: {k: int(v) for k, v in (s or {}).items() if v}  # noqa: E731
    return norm(a) == norm(b)


def set_pending(ledger, hour: dt.datetime, vols: Volumes, before: dict, after: dict) -> None:
    """Record a settled hour's tier fields in the month's ledger before its commit (so the next
    hour settles from them); the commit replaces them with the record's."""
    hid = st.hour_id(hour)
    ledger.entries[hid] = {"token": 0, "tier_volumes": to_list(vols),
                           "tier_state_before": dict(before), "tier_state_after": dict(after)}
    ledger.entries = dict(sorted(ledger.entries.items()))


def rates_meta(rates: dict[tuple[str, int], float]) -> bytes:
    out: dict[str, dict[str, float]] = {}
    for (pool, w), r in sorted(rates.items()):
        out.setdefault(pool, {})[str(w)] = r
    return json.dumps(out, sort_keys=True).encode()


def parse_rates_meta(raw: bytes | None) -> dict[tuple[str, int], float]:
    if not raw:
        return {}
    return {(pool, int(w)): float(r) for pool, d in json.loads(raw).items() for w, r in d.items()}

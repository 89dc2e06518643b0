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

The month's ledger (`_state/egress/<YYYY-MM>.json`) keeps per hour its volumes and the state
before and after it; a late change re-tiers later hours only while the state before them
actually moved, and within those only the parts whose windows' rates changed.
"""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa

from jobs import state as st
from lake import schema as S
from lake.storage import Lake

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


# ----------------------------------------------------------------------------- the ledger

def ledger_path(month: str) -> str:
    return f"{S.STATE_DIR}/egress/{month}.json"


class Ledger:
    """One month's tier bookkeeping: per hour its (pool, window) volumes and the state before
    and after it. `hours` keeps, per hour, the pool totals (what discovery reads)."""

    def __init__(self, month: str, entries: dict[str, dict] | None = None):
        self.month = month
        self.entries: dict[str, dict] = entries or {}

    @classmethod
    def load(cls, lake: Lake, month: str) -> "Ledger":
        data = lake.read_bytes(ledger_path(month))
        if data is None:
            return cls(month)
        try:
            raw = json.loads(data)
            return cls(month, {h: e for h, e in raw.get("tiers", {}).items() if isinstance(e, dict)})
        except ValueError:
            return cls(month)  # a damaged ledger: hours are re-tiered from their parts' own rates

    def save(self, lake: Lake) -> None:
        hours = {}
        for h, e in sorted(self.entries.items()):
            tot: dict[str, int] = {}
            for pool, _, b in e.get("volumes", []):
                tot[pool] = tot.get(pool, 0) + int(b)
            hours[h] = dict(sorted(tot.items()))
        body = {"month": self.month, "hours": hours, "tiers": dict(sorted(self.entries.items()))}
        lake.write_bytes(ledger_path(self.month), (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())

    def hours(self) -> list[dt.datetime]:
        return sorted(st.parse_hour_id(h) for h in self.entries)

    def before(self, hour: dt.datetime) -> dict:
        """State before `hour`: the state after the latest earlier hour of the month."""
        hid = st.hour_id(hour)
        prev = [h for h in self.entries if h < hid]
        return dict(self.entries[max(prev)].get("after", {})) if prev else {}

    def recorded_before(self, hour: dt.datetime) -> dict | None:
        e = self.entries.get(st.hour_id(hour))
        return None if e is None else dict(e.get("before", {}))

    def volumes(self, hour: dt.datetime) -> Volumes:
        e = self.entries.get(st.hour_id(hour), {})
        return add({}, [(p, int(w), b) for p, w, b in e.get("volumes", [])])

    def set(self, hour: dt.datetime, vols: Volumes, before: dict, after: dict) -> None:
        self.entries[st.hour_id(hour)] = {
            "volumes": [[p, w, b] for (p, w), b in sorted(vols.items(), key=lambda kv: (kv[0][1], kv[0][0])) if b],
            "before": dict(sorted(before.items())), "after": dict(sorted(after.items())),
        }


def rates_meta(rates: dict[tuple[str, int], float]) -> bytes:
    out: dict[str, dict[str, float]] = {}
    for (pool, w), r in sorted(rates.items()):
        out.setdefault(pool, {})[str(w)] = r
    return json.dumps(out, sort_keys=True).encode()


def parse_rates_meta(raw: bytes | None) -> dict[tuple[str, int], float]:
    if not raw:
        return {}
    return {(pool, int(w)): float(r) for pool, d in json.loads(raw).items() for w, r in d.items()}

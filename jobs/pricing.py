"""Pricing stage (docs/costing.md §6): rate cards as data, per-row cost, egress tiers.

A card is chosen by the source's provider and region (`rate_card` = "provider/region");
an unknown provider gets the all-zero card "none". Rows whose user rule has rate_per_gb are
priced by the rule (`rate_card` = "rule:<name or cidr>") and are never tiered.

`price` fills cost_usd for every class except the tiered part of internet egress (NAT
gateway processing included). `apply_egress_tiers` adds that part given the month-to-date
egress per (provider, region): F(cum_after) - F(cum_before), with F the piecewise-linear
cost of the first x bytes of the month.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.resolve import dict_parts, pick, value_parts
from lake import schema as S

CARDS_DIR = Path(__file__).parent / "ratecards"
CLASS = {c: i for i, c in enumerate(S.TRAFFIC_CLASSES)}
#: rates a card must define (internet_egress as tiers)
RATE_KEYS = tuple(c for c in S.TRAFFIC_CLASSES if c != "internet_egress") + ("nat_gateway",)
_FAR = float(1 << 62)  # last tier breakpoint, beyond any month's volume


class RateCardError(ValueError):
    """A rate card file that cannot be used."""


@dataclass(frozen=True)
class Rate:
    per_gb: float
    unit_bytes: int
    sides: int = 1
    source: str = ""

    @property
    def per_byte(self) -> float:
        return self.per_gb * self.sides / self.unit_bytes


@dataclass
class Card:
    name: str                      # "provider/region", or "none"
    provider: str
    region: str
    rates: dict[str, Rate]         # RATE_KEYS
    tiers: list[tuple[float | None, float]] = field(default_factory=list)  # (up_to_gb, per_gb)
    egress_unit: int = 1 << 30
    egress_source: str = ""

    def per_byte(self, key: str) -> float:
        r = self.rates.get(key)
        return r.per_byte if r else 0.0

    def egress_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Breakpoints (bytes) and cumulative cost (USD) of F, for np.interp."""
        xs, ys, x, y = [0.0], [0.0], 0.0, 0.0
        for up_to, per_gb in self.tiers:
            nx = _FAR if up_to is None else float(up_to) * self.egress_unit
            if nx <= x:
                continue
            y += (nx - x) / self.egress_unit * per_gb
            x = nx
            xs.append(x)
            ys.append(y)
        if x < _FAR:
            xs.append(_FAR)
            ys.append(y)
        return np.array(xs), np.array(ys)

    def egress_cost(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        xp, fp = self.egress_curve()
        return np.interp(after.astype(float), xp, fp) - np.interp(before.astype(float), xp, fp)


NONE_CARD = Card("none", "none", "", {k: Rate(0.0, 1 << 30, 1, "") for k in RATE_KEYS}, [(None, 0.0)])


def _rate(where: str, key: str, spec: dict) -> Rate:
    if not isinstance(spec, dict) or "source" not in spec or "unit_bytes" not in spec:
        raise RateCardError(f"{where}: rate {key!r} needs per_gb, unit_bytes and source")
    return Rate(float(spec.get("per_gb", 0.0)), int(spec["unit_bytes"]), int(spec.get("sides", 1)), spec["source"])


class RateCards:
    """Rate cards by provider; `card(provider, region)` applies the region's overrides."""

    def __init__(self, docs: dict[str, dict]):
        self.docs = docs
        self._cache: dict[tuple[str, str], Card] = {}
        for provider, doc in docs.items():
            for region in [None, *doc.get("regions", {})]:
                self._build(provider, region)  # validate every block at load time

    @classmethod
    def load(cls, path: str | Path | None = None) -> "RateCards":
        root = Path(path) if path else CARDS_DIR
        docs = {}
        for f in sorted(root.glob("*.json")):
            try:
                doc = json.loads(f.read_text())
            except (OSError, ValueError) as exc:
                raise RateCardError(f"{f}: not readable JSON: {exc}") from None
            provider = str(doc.get("provider", f.stem)).lower()
            docs[provider] = doc
        if not docs:
            raise RateCardError(f"no rate cards (*.json) in {root}")
        return cls(docs)

    def _build(self, provider: str, region: str | None) -> Card:
        doc = self.docs[provider]
        block = dict(doc.get("default", {}))
        block.update(doc.get("regions", {}).get(region, {}) if region else {})
        where = f"rate card {provider}/{region or 'default'}"
        missing = [k for k in RATE_KEYS + ("internet_egress",) if k not in block]
        if missing:
            raise RateCardError(f"{where}: missing rate(s) {', '.join(missing)}")
        rates = {k: _rate(where, k, block[k]) for k in RATE_KEYS}
        eg = block["internet_egress"]
        if "tiers" not in eg or "source" not in eg or "unit_bytes" not in eg:
            raise RateCardError(f"{where}: internet_egress needs tiers, unit_bytes and source")
        tiers = [(t.get("up_to_gb"), float(t["per_gb"])) for t in eg["tiers"]]
        return Card(f"{provider}/{region or 'default'}", provider, region or "", rates, tiers,
                    int(eg["unit_bytes"]), eg["source"])

    def card(self, provider: str | None, region: str | None) -> Card:
        provider = (provider or "").lower()
        if provider not in self.docs:
            return NONE_CARD
        key = (provider, region or "")
        if key not in self._cache:
            c = self._build(provider, region)
            c.name = f"{provider}/{region}"
            self._cache[key] = c
        return self._cache[key]


def _card_index(t: pa.Table, cards: RateCards) -> tuple[list[Card], np.ndarray]:
    """Cards used by the rows and each row's card index."""
    pd_, pcode = value_parts(t.column("src_provider"))
    rd, rcode = value_parts(t.column("src_region"))
    nr = len(rd) + 1
    combo = (pcode + 1) * nr + (rcode + 1)
    uniq, inv = np.unique(combo, return_inverse=True)
    pl, rl = pd_.to_pylist(), rd.to_pylist()
    used = []
    for c in uniq:
        p, r = int(c) // nr - 1, int(c) % nr - 1
        used.append(cards.card(pl[p] if p >= 0 else None, rl[r] if r >= 0 else None))
    return used, inv.reshape(-1)


def price(t: pa.Table, ctx) -> pa.Table:
    """cost_usd and rate_card for every row; internet egress gets only NAT processing here."""
    n = t.num_rows
    cd, ccodes = dict_parts(t.column("traffic_class"))
    cmap = np.array([CLASS.get(c, CLASS["unknown"]) for c in cd.to_pylist()], np.int64)
    cls = cmap[np.maximum(ccodes, 0)] if len(cmap) else np.zeros(n, np.int64)
    used, card_of = _card_index(t, ctx.cards)
    # per-byte rate matrix [card, class]; internet egress carries the NAT rate (if configured)
    rate = np.zeros((max(len(used), 1), len(S.TRAFFIC_CLASSES)))
    for i, card in enumerate(used):
        for c, k in CLASS.items():
            if c != "internet_egress":
                rate[i, k] = card.per_byte(c)
        if ctx.config.nat_gateway:
            rate[i, CLASS["internet_egress"]] = card.per_byte("nat_gateway")
    tx = pc.fill_null(t.column("tx_bytes"), 0).to_numpy().astype(np.float64)
    rx = pc.fill_null(t.column("rx_bytes"), 0).to_numpy().astype(np.float64)
    cost = (tx + rx) * rate[card_of, cls] if n else np.zeros(0)
    names = [c.name for c in used]
    rc = card_of.astype(np.int64)
    # user rules with their own rate override the card
    rules = ctx.config.rules
    if "_rule" in t.column_names and rules:
        rule = t.column("_rule").to_numpy().astype(np.int64)
        rate_of = np.array([-1.0 if r.rate_per_gb is None else r.rate_per_gb for r in rules])
        r_rate = np.where(rule >= 0, rate_of[np.maximum(rule, 0)], -1.0)
        has = r_rate >= 0
        if has.any():
            units = np.array([c.rates[S.TRAFFIC_CLASSES[0]].unit_bytes for c in used], np.float64)
            cost = np.where(has, (tx + rx) / units[card_of] * r_rate, cost)
            rc = np.where(has, len(names) + rule, rc)
        names = names + [f"rule:{r.label}" for r in rules]
    out = {name: t.column(name) for name in t.column_names}
    out["cost_usd"] = pa.array(cost, pa.float64())
    out["rate_card"] = pick(pa.array(names, pa.string()), rc)
    return pa.table(out)


# ------------------------------------------------------------------ egress tiers

def _tiered_mask(costs: pa.Table) -> np.ndarray:
    eg = pc.fill_null(pc.equal(costs.column("traffic_class"), "internet_egress"), False)
    rule = pc.fill_null(pc.starts_with(costs.column("rate_card"), "rule:"), False)
    return pc.and_(eg, pc.invert(rule)).to_numpy(zero_copy_only=False)


def _keys(sub: pa.Table) -> list[tuple[str, str]]:
    p = sub.column("src_provider").to_pylist()
    r = sub.column("src_region").to_pylist()
    return list(zip(p, r))


def egress_bytes(costs: pa.Table) -> dict[tuple[str, str], int]:
    """Tiered internet-egress bytes (tx) per (src_provider, src_region) in `costs`."""
    m = _tiered_mask(costs)
    if not m.any():
        return {}
    sub = costs.filter(pa.array(m)).select(["src_provider", "src_region", "tx_bytes"])
    g = sub.group_by(["src_provider", "src_region"]).aggregate([("tx_bytes", "sum")])
    return {(p, r): int(v or 0) for p, r, v in zip(g.column("src_provider").to_pylist(),
                                                   g.column("src_region").to_pylist(),
                                                   g.column("tx_bytes_sum").to_pylist())}


def _month(ts_us: np.ndarray) -> np.ndarray:
    d = ts_us.astype("datetime64[us]").astype("datetime64[M]")
    return d.astype(np.int64)


def apply_egress_tiers(costs: pa.Table, offsets: dict[tuple[str, str], int],
                       cards: RateCards | None = None) -> tuple[pa.Table, dict[tuple[str, str], int]]:
    """Add the tiered internet-egress cost. `offsets`: month-to-date egress bytes per
    (src_provider, src_region) before this table. Rows are tiered in the order (window_start,
    src_ip, dst_ip, dst_port, proto) per key. Returns the table and the updated offsets.

    Offsets are for the month of the table's earliest row; rows of a later month (a table
    spanning a month boundary) start that month from zero, and the returned offsets are then
    that later month's. The caller starts each month with empty offsets."""
    cards = cards or default_cards()
    offsets = dict(offsets)
    m = _tiered_mask(costs)
    if not m.any():
        return costs, offsets
    idx = np.flatnonzero(m)
    sub = costs.select(["src_provider", "src_region", "window_start", "src_ip", "dst_ip", "dst_port",
                        "proto", "tx_bytes"]).take(pa.array(idx))
    order = pc.sort_indices(sub, sort_keys=[(c, "ascending") for c in
                                            ("src_provider", "src_region", "window_start", "src_ip",
                                             "dst_ip", "dst_port", "proto")]).to_numpy()
    sub = sub.take(pa.array(order))
    rows = idx[order]
    tx = pc.fill_null(sub.column("tx_bytes"), 0).to_numpy().astype(np.int64)
    month = _month(sub.column("window_start").cast(pa.int64()).to_numpy())
    keys = _keys(sub)
    pd_, pcode = dict_parts(sub.column("src_provider"))
    rd, rcode = dict_parts(sub.column("src_region"))
    combo = pcode * (len(rd) + 1) + rcode
    add = np.zeros(len(rows))
    bounds = np.flatnonzero(np.diff(combo) != 0) + 1
    first_month = int(month.min())
    for s, e in zip(np.r_[0, bounds], np.r_[bounds, len(rows)]):  # one pass per key
        key = keys[s]
        card = cards.card(*key)
        before_key = int(offsets.get(key, 0))
        for mo in np.unique(month[s:e]):  # normally one month
            sel = np.flatnonzero(month[s:e] == mo) + s
            start = before_key if mo == first_month else 0
            cum = start + np.cumsum(tx[sel])
            add[sel] = card.egress_cost(cum - tx[sel], cum)
            offsets[key] = int(cum[-1])
    cost = costs.column("cost_usd").to_numpy().astype(np.float64).copy()
    cost[rows] += add
    i = costs.schema.get_field_index("cost_usd")
    return costs.set_column(i, costs.schema.field(i), pa.array(cost, pa.float64())), offsets


_DEFAULT: RateCards | None = None


def default_cards() -> RateCards:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = RateCards.load()
    return _DEFAULT


# ------------------------------------------------------------------ tier pools (the tiering contract)
# Interim versions of the contract's two functions over today's card curves: a pool is the
# rate card "provider/region" of non-rule internet egress, each pool climbs its own card's
# curve. The job (jobs/tiers.py) prices per (pool, window) volumes with them.

POOL_SUFFIX = "/internet_egress"


def tier_pools(costs: pa.Table, cards: RateCards | None = None) -> tuple[pa.Array, pa.Array]:
    """Per cost row: its tier pool ("provider/region/internet_egress", null when not tiered)
    and the bytes it adds to that pool's month-to-date volume (tx of tiered egress, else 0)."""
    n = costs.num_rows
    m = _tiered_mask(costs) if n else np.zeros(0, bool)
    prov = pc.fill_null(costs.column("src_provider").cast(pa.string()), "")
    reg = pc.fill_null(costs.column("src_region").cast(pa.string()), "")
    name = pc.binary_join_element_wise(prov, reg, pa.scalar(POOL_SUFFIX[1:]), "/")
    pools = pc.if_else(pa.array(m, pa.bool_()), name, pa.scalar(None, pa.string()))
    if isinstance(pools, pa.ChunkedArray):
        pools = pools.combine_chunks()
    tx = pc.fill_null(costs.column("tx_bytes"), 0).to_numpy().astype(np.int64) if n else np.zeros(0, np.int64)
    return pools, pa.array(np.where(m, tx, 0), pa.int64())


def pool_card(pool: str, cards: RateCards) -> Card:
    """The rate card whose egress curve a pool climbs."""
    provider, _, rest = pool.partition("/")
    region = rest[: -len(POOL_SUFFIX)] if rest.endswith(POOL_SUFFIX) else rest
    return cards.card(provider, region)


def tier_costs(volumes: pa.Table, mtd: dict, cards: RateCards) -> tuple[np.ndarray, dict]:
    """Tiered USD of each (pool, window) row of `volumes` (tier_pool, window_start, tier_bytes;
    sorted by (window_start, tier_pool), one month) and the state after the last row, from
    month-to-date state `mtd` ({pool: bytes so far}; {} starts a month)."""
    state = {k: int(v) for k, v in (mtd or {}).items()}
    pools = volumes.column("tier_pool").to_pylist()
    vb = pc.fill_null(volumes.column("tier_bytes"), 0).to_numpy().astype(np.int64)
    out = np.zeros(len(pools))
    for i, (pool, b) in enumerate(zip(pools, vb.tolist())):  # one step per (pool, window): few
        if pool is None or b <= 0:
            continue
        x = state.get(pool, 0)
        out[i] = float(pool_card(pool, cards).egress_cost(np.array([x]), np.array([x + b]))[0])
        state[pool] = x + b
    return out, state

"""The cost job's stages composed: raw flows -> costs/flows (docs/costing.md).

    encode -> orient -> resolve -> classify -> price -> conform(COST_FLOWS)

Tables between the stages (string columns stay dictionary-encoded until the final conform):
- encode, orient: RAW_FLOWS columns; src_ip/dst_ip/orig_dst_ip dictionary<int32, string>
  sharing one dictionary, node dictionary-encoded. orient drops and turns rows (§2).
- resolve: COST_FLOWS columns window_start .. dst_domain, dst_ip, dst_port, proto and the
  byte/packet counters (no traffic_class, cloud tags, cost or rate_card yet).
- classify: + traffic_class, dst_cloud_provider/service/region, _rule (int32 index into
  config.rules, -1 for none; dropped by conform).
- resolve also adds dst_cname (private-link CNAME of the DNS answer) and _src_nat (the source
  node's NAT gateway index, hidden).
- classify: + _public, _internal (hidden), completes dst_zone/dst_region (rules, subnets,
  cloud ranges).
- price: + cost_usd (all but tiered egress), dst_cost_usd, processing_cost_usd, usage types,
  nat_gateway, rate_card.

`cost_flows` is pure and independent per batch (the Ray driver runs it per hour in
parallel); `apply_egress_tiers` then adds the tiered internet-egress cost, hour by hour in
time order, carrying month-to-date offsets per (provider, region).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from jobs import classify as _classify
from jobs import pricing as _pricing
from jobs import resolve as _resolve
from jobs.config import JobConfig
from jobs.dns import DnsIndex
from jobs.inventory import Snapshots
from jobs.ipaddr import PrefixTable
from jobs.ipranges import CloudRanges
from jobs.pricing import RateCards, apply_egress_tiers, egress_bytes  # noqa: F401 (re-exported)
from jobs.rollup import rollup_namespace_hourly, rollup_workload_daily  # noqa: F401 (re-exported)
from lake import schema as S


@dataclass
class Context:
    """Everything cost_flows needs besides the flows; built once per run, shared by batches."""
    config: JobConfig
    pods: Snapshots
    services: Snapshots
    nodes: Snapshots
    endpoints: Snapshots
    dns: DnsIndex
    ranges: CloudRanges | None
    cards: RateCards
    rules: PrefixTable | None
    subnets: PrefixTable | None = None
    #: the inventory as validity intervals (jobs/intervals.py); when set, pods/services/nodes/
    #: endpoints hold its kinds (snapshot times and distinct rows) instead of the snapshots
    intervals: object | None = None


def compact(ctx: Context, earlier: dict | None = None) -> Context:
    """The context with its inventory snapshots replaced by validity intervals: the same
    lookups, the form an hour's context is shared in (jobs/intervals.py). `earlier`: per kind,
    times of snapshots before the given ones (a carried state), for inventory gaps only."""
    from jobs import intervals as IV  # noqa: PLC0415
    if ctx.intervals is not None:
        return ctx
    iv = IV.from_snapshots(ctx.pods, ctx.services, ctx.nodes, ctx.endpoints, earlier)
    return dataclasses.replace(ctx, pods=iv.pods, services=iv.services, nodes=iv.nodes, endpoints=iv.endpoints,
                               intervals=iv)


def build_context(inventory_tables: dict[str, pa.Table], dns: pa.Table | None, config: JobConfig,
                  ranges: CloudRanges | None, cards: RateCards | None = None) -> Context:
    """`inventory_tables` by kind ("pods", "services", "nodes", "endpoints"; "inventory/pods"
    also accepted), each holding all snapshots the run may need; missing kinds are empty."""
    inv = {k.rsplit("/", 1)[-1]: v for k, v in (inventory_tables or {}).items()}
    unknown = set(inv) - set(S.INVENTORY_KINDS)
    if unknown:
        raise ValueError(f"unknown inventory kind(s): {', '.join(sorted(unknown))}")
    cards = cards or _cards_for(config)
    config.check_cards(cards)
    return Context(
        config=config,
        pods=Snapshots("pods", inv.get("pods")),
        services=Snapshots("services", inv.get("services")),
        nodes=Snapshots("nodes", inv.get("nodes")),
        endpoints=Snapshots("endpoints", inv.get("endpoints")),
        dns=DnsIndex(dns, config.dns_lookback_s),
        ranges=ranges,
        cards=cards,
        rules=_classify.rules_table(config.rules),
        subnets=_classify.subnets_table(config.subnets),
    )


_CARDS: dict[tuple, RateCards] = {}


def _cards_for(config: JobConfig) -> RateCards:
    """The packaged rate cards with the config's fallback, network tier and rate limit."""
    key = (tuple(sorted(config.price_fallback.items())), config.network_tier, config.max_per_gb,
           config.egress_destinations)
    if key not in _CARDS:
        _CARDS[key] = RateCards.for_config(config)
    return _CARDS[key]


def cost_flows(raw_flows: pa.Table, ctx: Context, stats: dict | None = None,
               clients: pa.Table | None = None) -> pa.Table:
    """Raw flow rows (RAW_FLOWS; IP columns may be dictionary-encoded) -> COST_FLOWS rows,
    priced except for the tiered part of internet egress. With `stats`, records `kept_bytes`:
    tx + rx of the rows kept after de-duplication, which the cost rows must add up to.
    `clients`: resolve.outside_clients of the same windows' rows held elsewhere (a cell that
    has only some of a window's files)."""
    t = _resolve.encode(raw_flows)
    t = _resolve.orient(t, ctx, clients)
    if stats is not None:
        stats["kept_rows"] = t.num_rows
        stats["kept_bytes"] = int((pc.sum(t.column("tx_bytes")).as_py() or 0) + (pc.sum(t.column("rx_bytes")).as_py() or 0))
    t = _resolve.resolve(t, ctx)
    t = _classify.classify(t, ctx)
    t = _pricing.price(t, ctx)
    return S.conform(t, S.COST_FLOWS)

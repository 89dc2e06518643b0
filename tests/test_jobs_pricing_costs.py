"""Pricing: rate cards as data, per-class rates, NAT, rules, and monthly internet-egress tiers.

Expected dollars are computed by hand from the public list prices (see jobs/ratecards/*.json).
"""
from __future__ import annotations

import json
import datetime as dt

import pytest

from jobs.config import JobConfig
from jobs.pipeline import apply_egress_tiers, cost_flows, egress_bytes
from jobs.pricing import CARDS_DIR, RATE_KEYS, RateCardError, RateCards, default_cards, tier_costs, tier_pools
from test_jobs_stages_world import GB, T0, World, rows_by, three_zone_world
import pyarrow as pa
from lake import schema as S

AWS = ("aws", "us-east-1")


def test_every_rate_cites_a_source_and_a_unit():
    for path in sorted(CARDS_DIR.glob("*.json")):
        doc = json.loads(path.read_text())
        blocks = [doc["default"], *doc["regions"].values()]
        for block in blocks:
            for key, rate in block.items():
                assert rate["source"].startswith("https://"), (path.name, key)
                assert rate["unit_bytes"] in (2**30, 10**9), (path.name, key)
        assert set(RATE_KEYS) | {"internet_egress"} <= set(doc["default"])
    assert {p.stem for p in CARDS_DIR.glob("*.json")} >= {"aws", "gcp", "azure"}


def test_region_overrides_default_and_unknown_provider_is_none():
    cards = RateCards.load()
    sg, use1 = cards.card("aws", "ap-southeast-1"), cards.card("aws", "us-east-1")
    assert sg.name == "aws/ap-southeast-1" and sg.tiers[1] == (10240, 0.12)
    assert use1.tiers[1] == (10240, 0.09)
    assert cards.card("aws", "eu-north-1").rates["cross_zone"].per_gb == 0.01  # default block
    none = cards.card("hetzner", "fsn1")
    assert none.name == "none" and none.per_byte("cross_zone") == 0


def test_bad_card_is_a_clear_error(tmp_path):
    (tmp_path / "aws.json").write_text(json.dumps({"provider": "aws", "default": {"same_zone": {"per_gb": 0}}}))
    with pytest.raises(RateCardError, match="missing rate"):
        RateCards.load(tmp_path)


def two_node_world(provider, region, zone_a, zone_b, region_b=None):
    w = World().node("n-a", "10.0.1.10", zone_a, region=region, provider=provider)
    w.node("n-b", "10.0.2.10", zone_b, region=region_b or region, provider=provider)
    w.pod("a-1", "x", "n-a", "10.0.1.21").pod("b-1", "x", "n-b", "10.0.2.21").snapshot(0)
    w.flow("10.0.1.21", "10.0.2.21", node="n-a", tx=2 * GB, rx=3 * GB)
    return w


def test_cross_zone_aws_both_sides_gcp_sender_only_azure_free():
    aws = rows_by(two_node_world("aws", "us-east-1", "us-east-1a", "us-east-1b").costs())
    gcp = rows_by(two_node_world("gcp", "us-central1", "us-central1-a", "us-central1-b").costs())
    az = rows_by(two_node_world("azure", "westeurope", "westeurope-1", "westeurope-2").costs())
    key = ("10.0.1.21", "10.0.2.21")
    # (2 + 3) GB crossing AZs, $0.01/GB out of the sender and $0.01/GB into the receiver
    assert aws[key]["cost_usd"] == pytest.approx(5 * 0.01 * 2)
    assert aws[key]["rate_card"] == "aws/us-east-1"
    # GCP: (2 + 3) GiB at $0.01/GiB, sender only
    assert gcp[key]["cost_usd"] == pytest.approx(5 * 0.01)
    assert gcp[key]["rate_card"] == "gcp/us-central1"
    # Azure inter-AZ is free
    assert az[key]["traffic_class"] == "cross_zone" and az[key]["cost_usd"] == 0


def test_cross_region_per_card():
    aws = rows_by(two_node_world("aws", "us-east-1", "us-east-1a", "us-west-2a", region_b="us-west-2").costs())
    az = rows_by(two_node_world("azure", "eastus", "eastus-1", "westeurope-1", region_b="westeurope").costs())
    key = ("10.0.1.21", "10.0.2.21")
    assert aws[key]["traffic_class"] == "cross_region"
    assert aws[key]["cost_usd"] == pytest.approx(5 * 0.02)                   # 5 GB at $0.02
    assert az[key]["cost_usd"] == pytest.approx(5 * 2**30 / 1e9 * 0.02)      # Azure GB is 10^9 bytes


def test_zero_priced_classes_nat_private_link_peering_and_rules():
    w = three_zone_world().snapshot(0)
    w.flow("10.0.1.21", "10.0.1.22", node="n-a", tx=7 * GB, rx=GB)          # same_zone: free
    w.flow("10.0.1.21", "169.254.169.254", node="n-a", tx=GB, rx=GB)         # imds: free
    w.flow("10.0.1.21", "10.200.0.5", node="n-a", tx=4 * GB, rx=6 * GB)      # private_link
    w.flow("10.0.1.21", "10.30.0.1", node="n-a", tx=GB, rx=GB)               # peering, card rate
    w.flow("10.0.1.21", "10.40.0.1", node="n-a", tx=2 * GB, rx=2 * GB)       # peering, rule rate
    w.flow("10.0.1.21", "8.8.8.8", node="n-a", tx=3 * GB, rx=GB)             # egress through NAT
    w.dns("10.0.1.21", "vpce-1.s3.us-east-1.vpce.amazonaws.com", "10.200.0.5", -1)
    cfg = JobConfig.from_dict({"nat_gateway": True, "rules": [
        {"cidr": "10.30.0.0/16", "class": "peering"},
        {"cidr": "10.40.0.0/16", "class": "peering", "name": "partner", "rate_per_gb": 0.015}]})
    rows = rows_by(w.costs(cfg))
    c = lambda dst: rows[("10.0.1.21", dst)]["cost_usd"]
    assert c("10.0.1.22") == 0 and c("169.254.169.254") == 0
    assert c("10.200.0.5") == pytest.approx((4 + 6) * 0.01)       # PrivateLink processing
    assert c("10.30.0.1") == pytest.approx((1 + 1) * 0.01)        # card peering rate
    assert c("10.40.0.1") == pytest.approx((2 + 2) * 0.015)       # the rule's own rate
    assert rows[("10.0.1.21", "10.40.0.1")]["rate_card"] == "rule:partner"
    # before tiers: only NAT processing, $0.045/GB on both directions
    assert c("8.8.8.8") == pytest.approx((3 + 1) * 0.045)
    tiered, off = apply_egress_tiers(w.costs(cfg), {AWS: 100 * GB})
    t = rows_by(tiered)[("10.0.1.21", "8.8.8.8")]
    # the free 100 GB are used up: 3 GB sent at $0.09, plus NAT
    assert t["cost_usd"] == pytest.approx(3 * 0.09 + 4 * 0.045)
    assert off == {AWS: 103 * GB}


def test_unknown_provider_gets_the_none_card():
    w = World().node("n-a", "10.0.1.10", "fsn1-dc14", region="fsn1", provider="hetzner")
    w.node("n-b", "10.0.2.10", "nbg1-dc3", region="fsn1", provider="hetzner").snapshot(0)
    w.flow("10.0.1.10", "10.0.2.10", node="n-a", tx=GB)
    w.flow("10.0.1.10", "1.1.1.1", node="n-a", tx=500 * GB)
    costs = w.costs()
    assert set(costs.column("rate_card").to_pylist()) == {"none"}
    tiered, off = apply_egress_tiers(costs, {})
    assert tiered.column("cost_usd").to_pylist() == [0.0, 0.0]
    assert off == {("hetzner", "fsn1"): 500 * GB}


def egress_world(rows: list[tuple[int, str, int]]) -> World:
    """Internet egress rows (minute, src pod IP, GB sent) from three_zone_world pods."""
    w = three_zone_world().snapshot(0)
    for minute, src, gb in rows:
        w.flow(src, "8.8.8.8", node="n-a", minute=minute, tx=gb * GB, rx=GB)
    return w


def by_src_minute(costs):
    return {(r["src_ip"], r["window_start"].minute): r["cost_usd"] for r in costs.to_pylist()}


def test_tiers_cross_100gb_and_10tb_within_one_table_pro_rata_within_a_window():
    # Input order is scrambled; windows are tiered in time order, rows of one window pro rata.
    w = egress_world([(1, "10.0.1.22", 10160), (0, "10.0.1.22", 60), (0, "10.0.1.21", 60)])
    costs = cost_flows(w.raw(), w.context())
    assert sum(costs.column("cost_usd").to_pylist()) == 0  # no NAT configured: nothing yet
    tiered, off = apply_egress_tiers(costs, {})
    got = by_src_minute(tiered)
    # window 0: GB 0-120, 100 free and 20 at $0.09, shared 60/60 by its two rows
    assert got[("10.0.1.21", 0)] == pytest.approx(20 * 0.09 / 2)
    assert got[("10.0.1.22", 0)] == pytest.approx(20 * 0.09 / 2)
    # GB 120-10280: 10240 - 120 = 10120 GB at $0.09, then 40 GB at $0.085
    assert got[("10.0.1.22", 1)] == pytest.approx(10120 * 0.09 + 40 * 0.085)
    assert off == {AWS: 10280 * GB}
    assert egress_bytes(costs) == {AWS: 10280 * GB}


def test_tier_pools_and_tier_costs_contract():
    w = egress_world([(0, "10.0.1.22", 60), (0, "10.0.1.21", 60), (1, "10.0.1.21", 50)])
    w.flow("10.0.1.21", "10.0.2.21", node="n-a", tx=GB)          # cross_zone: not tiered
    costs = cost_flows(w.raw(), w.context())
    pools, nbytes = tier_pools(costs, default_cards())
    got = sorted(zip(pools.to_pylist(), nbytes.to_pylist()), key=lambda x: (x[0] or "", x[1]))
    assert got == [(None, 0), ("aws/us-east-1/internet_egress", 50 * GB),
                   ("aws/us-east-1/internet_egress", 60 * GB), ("aws/us-east-1/internet_egress", 60 * GB)]
    vol = pa.table({"tier_pool": ["aws/us-east-1/internet_egress"] * 2,
                    "window_start": pa.array([T0, T0 + dt.timedelta(minutes=1)], S.TS),
                    "tier_bytes": pa.array([120 * GB, 50 * GB], pa.int64())})
    usd, state = tier_costs(vol, {}, default_cards())
    assert usd.tolist() == pytest.approx([20 * 0.09, 50 * 0.09])
    # the state after the first window, fed back, gives the second window the same cost
    usd1, st1 = tier_costs(vol.slice(0, 1), {}, default_cards())
    usd2, st2 = tier_costs(vol.slice(1, 1), st1, default_cards())
    assert usd2.tolist() == pytest.approx([50 * 0.09]) and st2 == state
    assert json.loads(json.dumps(state)) == state


def test_tiers_across_calls_with_offsets():
    hour1 = cost_flows(egress_world([(0, "10.0.1.21", 90)]).raw(), egress_world([]).context())
    t1, off = apply_egress_tiers(hour1, {})
    assert t1.column("cost_usd").to_pylist() == [0.0] and off == {AWS: 90 * GB}
    w2 = egress_world([(5, "10.0.1.21", 20)])
    t2, off = apply_egress_tiers(cost_flows(w2.raw(), w2.context()), off)
    assert t2.column("cost_usd").to_pylist()[0] == pytest.approx(10 * 0.09)  # 10 GB free, 10 GB at $0.09
    assert off == {AWS: 110 * GB}
    # near the 10 TB boundary
    t3, off = apply_egress_tiers(cost_flows(w2.raw(), w2.context()), {AWS: 10230 * GB})
    assert t3.column("cost_usd").to_pylist()[0] == pytest.approx(10 * 0.09 + 10 * 0.085)
    assert off == {AWS: 10250 * GB}
    # offsets of other keys are carried through untouched
    _, off = apply_egress_tiers(cost_flows(w2.raw(), w2.context()), {("gcp", "us-central1"): 5})
    assert off == {("gcp", "us-central1"): 5, AWS: 20 * GB}


def test_tiers_are_per_provider_and_region():
    w = three_zone_world()
    w.node("g-a", "10.8.0.10", "us-central1-a", region="us-central1", provider="gcp")
    w.pod("g-1", "x", "g-a", "10.8.0.21").snapshot(0)
    w.flow("10.0.1.21", "8.8.8.8", node="n-a", tx=50 * GB)
    w.flow("10.8.0.21", "8.8.8.8", node="g-a", tx=50 * GB)
    tiered, off = apply_egress_tiers(w.costs(), {})
    rows = rows_by(tiered)
    assert rows[("10.0.1.21", "8.8.8.8")]["cost_usd"] == 0.0                      # AWS: inside the free 100 GB
    assert rows[("10.8.0.21", "8.8.8.8")]["cost_usd"] == pytest.approx(50 * 0.12)  # GCP: first TiB at $0.12/GiB
    assert off == {AWS: 50 * GB, ("gcp", "us-central1"): 50 * GB}


def test_a_new_month_starts_from_zero_within_one_table():
    w = three_zone_world().snapshot(0)
    w.flow("10.0.1.21", "8.8.8.8", node="n-a", tx=30 * GB)
    w.flow_rows[-1]["window_start"] = dt.datetime(2026, 11, 30, 23, 59, tzinfo=dt.timezone.utc)
    w.flow("10.0.1.21", "8.8.8.8", node="n-a", tx=30 * GB, port=80)
    w.flow_rows[-1]["window_start"] = dt.datetime(2026, 12, 1, 0, 0, tzinfo=dt.timezone.utc)
    tiered, off = apply_egress_tiers(w.costs(), {AWS: 90 * GB})
    by_port = {r["dst_port"]: r["cost_usd"] for r in tiered.to_pylist()}
    assert by_port[443] == pytest.approx(20 * 0.09)   # November: 90 -> 120 GB
    assert by_port[80] == 0.0                          # December: 0 -> 30 GB, free
    assert off == {AWS: 30 * GB}


# ---------------------------------------------------------------- tier math, property-based

from hypothesis import given, settings, strategies as st  # noqa: E402
import pyarrow as pa  # noqa: E402

from lake import schema as S  # noqa: E402

AWS_US_EAST_1_TIERS_GB = [(100, 0.0), (10240, 0.09), (51200, 0.085), (153600, 0.07), (float("inf"), 0.05)]


def month_cost(total_bytes: int) -> float:
    """Cost of the month's first `total_bytes` of AWS us-east-1 internet egress, tier by tier."""
    cost, lo = 0.0, 0.0
    gb = total_bytes / GB
    for hi, rate in AWS_US_EAST_1_TIERS_GB:
        if gb > lo:
            cost += (min(gb, hi) - lo) * rate
        lo = hi
    return cost


def egress_table(tx: list[int], minute0: int = 0) -> pa.Table:
    n = len(tx)
    start = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)
    return S.conform(pa.table({
        "window_start": [start + dt.timedelta(minutes=minute0 + i // 3) for i in range(n)],
        "src_provider": ["aws"] * n, "src_region": ["us-east-1"] * n,
        "src_ip": [f"10.0.0.{i % 3}" for i in range(n)], "dst_ip": ["8.8.8.8"] * n,
        "dst_port": pa.array([443] * n, pa.int32()), "proto": pa.array([6] * n, pa.int16()),
        "traffic_class": ["internet_egress"] * n, "tx_bytes": pa.array(tx, pa.int64()),
        "rx_bytes": pa.array([0] * n, pa.int64()), "cost_usd": [0.0] * n, "rate_card": ["aws/us-east-1"] * n,
    }), S.COST_FLOWS)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 30_000 * GB), min_size=1, max_size=12), st.integers(0, 12), st.integers(0, 200_000 * GB))
def test_tiered_cost_matches_the_price_list_and_splits_across_calls(tx, cut, start):
    cut = min(cut, len(tx))
    whole, off = apply_egress_tiers(egress_table(tx), {AWS: start})
    total = sum(whole.column("cost_usd").to_pylist())
    assert total == pytest.approx(month_cost(start + sum(tx)) - month_cost(start), rel=1e-9, abs=1e-6)
    assert off == {AWS: start + sum(tx)}
    # the same bytes in two calls, carrying the offsets, cost the same in total
    a, off1 = apply_egress_tiers(egress_table(tx[:cut]), {AWS: start})
    b, off2 = apply_egress_tiers(egress_table(tx[cut:], minute0=100), off1)
    split = a.column("cost_usd").to_pylist() + b.column("cost_usd").to_pylist()
    assert off2 == off
    assert sum(split) == pytest.approx(total, rel=1e-9, abs=1e-6)

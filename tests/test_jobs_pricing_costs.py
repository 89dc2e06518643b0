"""Pricing: rate cards as data, per-class rates, NAT, rules, and monthly internet-egress tiers.

Expected dollars are computed by hand from the public list prices (see jobs/ratecards/*.json).
"""
from __future__ import annotations

import json
import datetime as dt

import pytest

from jobs.config import JobConfig
from jobs.pipeline import apply_egress_tiers, cost_flows, egress_bytes
from jobs.pricing import CARDS_DIR, RateCardError, RateCards, UnknownRegionError, default_cards, tier_costs, tier_pools
from test_jobs_stages_world import GB, T0, World, fixture_ranges, rows_by, three_zone_world
import pyarrow as pa
from lake import schema as S

AWS = ("aws", "us-east-1")


def _rates(block):
    for key, rate in block.items():
        if key == "internet_egress_by_destination":  # {destination: tiers}
            yield from ((f"{key}.{d}", r) for d, r in rate.items())
        elif isinstance(rate, dict):
            yield key, rate


def test_every_rate_cites_a_source_and_a_unit_and_every_commercial_region_has_a_card():
    for path in sorted(CARDS_DIR.glob("*.json")):
        doc = json.loads(path.read_text())
        for block in [doc["default"], *doc["regions"].values()]:
            for key, rate in _rates(block):
                assert rate["source"].startswith("https://"), (path.name, key)
                assert rate["unit_bytes"] in (2**30, 10**9), (path.name, key)
    cards = RateCards.load()
    assert len(cards.regions("aws")) == 29 and len(cards.regions("gcp")) == 42 and len(cards.regions("azure")) == 56
    assert {"af-south-1", "ap-southeast-4", "il-central-1", "ca-west-1"} <= set(cards.regions("aws"))
    assert not {"us-gov-west-1", "us-west-2-lax-1"} & set(cards.regions("aws"))
    assert not [r for r in cards.regions("azure") if r.startswith(("usgov", "att", "china")) or r.endswith("euap")]


def test_cards_are_generated_from_the_public_data(tmp_path):
    from jobs.ratecards import build
    data = {"aws": {"internet_egress": {"us-east-1": {"0": 0.09000000357627869, "10240": 0.085, "51200": 0.07,
                                                      "153600": 0.05}},
                    "inter_zone_data_transfer": {"us-east-1": {"egress_per_gb": 0.01, "ingress_per_gb": 0.01}}},
            "gcp": {"internet_egress": {"us-central1": {"0": 0.085, "10240": 0.065, "153600": 0.045}},
                    "inter_zone_data_transfer": {"us-central1": {"egress_per_gb": 0.01, "ingress_per_gb": 0}}},
            "azure": {"internet_egress": {"eastus": {"0": 0.08}, "Global": {"0": 0.08}},
                      "inter_zone_data_transfer": {"eastus": {"egress_per_gb": 0, "ingress_per_gb": 0}}}}
    (tmp_path / "network.json").write_text(json.dumps(data))
    assert build.main(["--data", str(tmp_path / "network.json"), "--out", str(tmp_path)]) == 0
    aws = json.loads((tmp_path / "aws.json").read_text())
    assert aws["regions"]["us-east-1"]["internet_egress"]["tiers"] == [
        {"up_to_gb": 10240, "per_gb": 0.09}, {"up_to_gb": 51200, "per_gb": 0.085},
        {"up_to_gb": 153600, "per_gb": 0.07}, {"up_to_gb": None, "per_gb": 0.05}]
    assert set(json.loads((tmp_path / "azure.json").read_text())["regions"]) == {"eastus"}   # no "Global"
    assert build.main(["--data", str(tmp_path / "network.json"), "--out", str(tmp_path), "--check"]) == 0
    if build.DEFAULT_DATA.exists():  # the packaged cards are what the script makes of the shared data
        assert build.main(["--check"]) == 0


def test_region_cards_unknown_region_is_an_error_and_a_named_fallback_is_visible():
    cards = RateCards.load()
    sg, use1, af = cards.card("aws", "ap-southeast-1"), cards.card("aws", "us-east-1"), cards.card("aws", "af-south-1")
    assert sg.name == "aws/ap-southeast-1" and sg.tiers[0] == (10240, 0.12)
    assert use1.tiers[0] == (10240, 0.09) and af.tiers[0] == (10240, 0.154)
    assert use1.free_gb == 100 and use1.code == "USE1"
    assert cards.card("hetzner", "fsn1").name == "none"
    with pytest.raises(UnknownRegionError, match=r"region 'xx-new-1'.*build\.py.*price_fallback"):
        cards.card("aws", "xx-new-1")
    fb = RateCards.load(fallback={"aws": "us-east-1"})
    assert fb.card("aws", "xx-new-1").name == "fallback:aws/us-east-1"
    w = World().node("n-x", "10.0.1.10", "xx-new-1a", region="xx-new-1").node("n-y", "10.0.2.10", "xx-new-1b", region="xx-new-1")
    w.pod("a-1", "x", "n-x", "10.0.1.21").pod("b-1", "x", "n-y", "10.0.2.21").snapshot(0)
    w.flow("10.0.1.21", "10.0.2.21", node="n-x", tx=GB)
    with pytest.raises(UnknownRegionError):
        w.costs()
    rows = w.costs(JobConfig.from_dict({"price_fallback": {"aws": "us-east-1"}})).to_pylist()
    assert [(r["rate_card"], r["cost_usd"]) for r in rows] == [("fallback:aws/us-east-1", pytest.approx(0.02))]


def test_bad_card_is_a_clear_error(tmp_path):
    (tmp_path / "aws.json").write_text(json.dumps({"provider": "aws", "regions": {"r": {"same_zone": {"per_gb": 0}}}}))
    with pytest.raises(RateCardError, match="missing rate"):
        RateCards.load(tmp_path)
    doc = json.loads((CARDS_DIR / "aws.json").read_text())
    doc["regions"]["us-east-1"]["nat_gateway"]["per_gb"] = 1e9
    (tmp_path / "aws.json").write_text(json.dumps(doc))
    with pytest.raises(RateCardError, match=r"aws/us-east-1: nat_gateway.per_gb 1e\+09 is outside the sane range"):
        RateCards.load(tmp_path)
    doc["regions"]["us-east-1"]["nat_gateway"]["per_gb"] = 0.045
    doc["regions"]["us-east-1"]["nat_gatway"] = doc["regions"]["us-east-1"]["nat_gateway"]
    (tmp_path / "aws.json").write_text(json.dumps(doc))
    with pytest.raises(RateCardError, match="unknown key.*nat_gatway"):
        RateCards.load(tmp_path)


def two_node_world(provider, region, zone_a, zone_b, region_b=None):
    w = World().node("n-a", "10.0.1.10", zone_a, region=region, provider=provider)
    w.node("n-b", "10.0.2.10", zone_b, region=region_b or region, provider=provider)
    w.pod("a-1", "x", "n-a", "10.0.1.21").pod("b-1", "y", "n-b", "10.0.2.21").snapshot(0)
    w.flow("10.0.1.21", "10.0.2.21", node="n-a", tx=2 * GB, rx=3 * GB)
    return w


def one(world, config=None, ranges=None):
    rows = world.costs(config, ranges).to_pylist()
    assert len(rows) == 1
    return rows[0]


def test_cross_zone_aws_both_sides_gcp_sender_only_azure_free():
    aws = one(two_node_world("aws", "us-east-1", "us-east-1a", "us-east-1b"))
    gcp = one(two_node_world("gcp", "us-central1", "us-central1-a", "us-central1-b"))
    az = one(two_node_world("azure", "westeurope", "westeurope-1", "westeurope-2"))
    # AWS: $0.01/GB out of the sender's AZ and $0.01/GB into the receiver's, each side for its end:
    # the client's node sends 2 GB and receives 3; the server's node sends 3 and receives 2
    assert aws["cost_usd"] == pytest.approx(5 * 0.02) and aws["dst_cost_usd"] == pytest.approx(5 * 0.01)
    assert (aws["usage_type"], aws["dst_usage_type"], aws["rate_card"]) == (
        "USE1-DataTransfer-Regional-Bytes", "USE1-DataTransfer-Regional-Bytes", "aws/us-east-1")
    # GCP: the sender pays $0.01/GiB: the client 2 GiB, the server 3 GiB
    assert gcp["cost_usd"] == pytest.approx(5 * 0.01) and gcp["dst_cost_usd"] == pytest.approx(3 * 0.01)
    assert gcp["usage_type"] == "Network Inter Zone Data Transfer Out"
    assert az["traffic_class"] == "cross_zone" and az["cost_usd"] == 0 and az["usage_type"] is None


def test_cross_region_by_region_pair_and_direction():
    e1e2 = one(two_node_world("aws", "us-east-1", "us-east-1a", "us-east-2a", region_b="us-east-2"))
    e1w2 = one(two_node_world("aws", "us-east-1", "us-east-1a", "us-west-2a", region_b="us-west-2"))
    sg = one(two_node_world("aws", "ap-southeast-1", "ap-southeast-1a", "us-east-1a", region_b="us-east-1"))
    az = one(two_node_world("azure", "eastus", "eastus-1", "westeurope-1", region_b="westeurope"))
    # us-east-1 <-> us-east-2 is $0.01/GB each way: 2 GB out of us-east-1, 3 GB out of us-east-2
    assert e1e2["cost_usd"] == pytest.approx(5 * 0.01) and e1e2["dst_cost_usd"] == pytest.approx(3 * 0.01)
    assert (e1e2["usage_type"], e1e2["dst_usage_type"]) == ("USE1-USE2-AWS-Out-Bytes", "USE2-USE1-AWS-Out-Bytes")
    assert e1w2["cost_usd"] == pytest.approx(5 * 0.02)
    # Singapore -> N. Virginia: 2 GB at Singapore's $0.09; the 3 GB reply at us-east-1's $0.02
    assert sg["cost_usd"] == pytest.approx(2 * 0.09 + 3 * 0.02) and sg["dst_cost_usd"] == pytest.approx(3 * 0.02)
    assert sg["usage_type"] == "APS1-USE1-AWS-Out-Bytes"
    # Azure: North America -> Europe $0.05/GB each way (decimal GB)
    assert az["cost_usd"] == pytest.approx(5 * GB / 1e9 * 0.05)


def test_cloud_services_in_region_free_nat_processing_and_gateway_endpoints():
    w = three_zone_world().node("n-pub", "10.0.4.10", "us-east-1a", external_ip="3.90.0.9")
    w.pod("pub-1", "x", "n-pub", "10.0.4.21").snapshot(0)
    w.flow("10.0.1.21", "52.216.7.7", node="n-a", tx=4 * GB, rx=6 * GB)   # S3 us-east-1 via NAT
    w.flow("10.0.1.22", "3.81.2.3", node="n-a", tx=1 * GB, rx=1 * GB)     # EC2 public IP, same region
    w.flow("10.1.1.21", "52.216.7.8", node="n-w", tx=2 * GB, rx=5 * GB)   # S3 us-east-1 from us-west-2
    w.flow("10.0.4.21", "52.216.7.9", node="n-pub", tx=GB, rx=GB)         # public-IP node: no NAT
    cfg = {"nat_gateway": True}
    rows = rows_by(w.costs(JobConfig.from_dict(cfg), fixture_ranges()))
    s3 = rows[("10.0.1.21", "52.216.7.7")]
    assert (s3["traffic_class"], s3["usage_type"]) == ("cloud_api", None)
    # S3 in the region is free; the NAT gateway still processes 10 GB at $0.045
    assert s3["cost_usd"] == pytest.approx(10 * 0.045) and s3["processing_cost_usd"] == pytest.approx(10 * 0.045)
    assert (s3["processing_usage_type"], s3["nat_gateway"]) == ("USE1-NatGateway-Bytes", "nat")
    ec2 = rows[("10.0.1.22", "3.81.2.3")]
    assert ec2["cost_usd"] == pytest.approx(2 * 0.01 + 2 * 0.045)      # regional $0.01 each way, plus NAT
    assert ec2["usage_type"] == "USE1-DataTransfer-Regional-Bytes"
    far = rows[("10.1.1.21", "52.216.7.8")]
    # us-west-2 -> us-east-1 S3: 2 GB out at $0.02, the 5 GB reply out of us-east-1 at $0.02, NAT 7 GB
    assert far["traffic_class"] == "cross_region"
    assert far["cost_usd"] == pytest.approx(7 * 0.02 + 7 * 0.045) and far["dst_cost_usd"] == pytest.approx(5 * 0.02)
    assert (far["usage_type"], far["dst_usage_type"]) == ("USW2-USE1-AWS-Out-Bytes", "USE1-USW2-AWS-Out-Bytes")
    pub = rows[("10.0.4.21", "52.216.7.9")]
    assert pub["cost_usd"] == 0 and pub["nat_gateway"] is None
    # an S3 gateway endpoint: no NAT processing for S3 of the region (other regions still pass the NAT)
    rows = rows_by(w.costs(JobConfig.from_dict({**cfg, "gateway_endpoints": ["s3"]}), fixture_ranges()))
    assert rows[("10.0.1.21", "52.216.7.7")]["cost_usd"] == 0
    assert rows[("10.0.1.21", "52.216.7.7")]["nat_gateway"] is None
    assert rows[("10.1.1.21", "52.216.7.8")]["cost_usd"] == pytest.approx(7 * 0.02 + 7 * 0.045)


def test_nat_gateways_by_node_group_cidr_and_never_inbound():
    w = World().node("n-a", "10.0.1.10", "us-east-1a", node_group="workers")
    w.node("n-b", "10.0.2.10", "us-east-1b", node_group="batch").node("n-c", "10.0.3.10", "us-east-1c")
    w.pod("a-1", "x", "n-a", "10.0.1.21").pod("b-1", "x", "n-b", "10.0.2.21").pod("c-1", "x", "n-c", "10.0.3.21")
    w.snapshot(0)
    for src, node in (("10.0.1.21", "n-a"), ("10.0.2.21", "n-b"), ("10.0.3.21", "n-c")):
        w.flow(src, "8.8.8.8", node=node, tx=GB, rx=GB)
    # an internet client calling a pod: inbound, never through the NAT gateway
    w.flow("81.2.3.4", "10.0.1.21", node="n-a", direction="inbound", port=8080, tx=GB, rx=3 * GB)
    cfg = JobConfig.from_dict({"nat_gateways": [{"name": "nat-a", "node_groups": ["workers"]},
                                                {"name": "nat-c", "node_cidrs": ["10.0.3.0/24"]}]})
    rows = rows_by(w.costs(cfg))
    nat = {k: (r["nat_gateway"], r["processing_cost_usd"]) for k, r in rows.items()}
    assert nat == {("10.0.1.21", "8.8.8.8"): ("nat-a", pytest.approx(2 * 0.045)), ("10.0.2.21", "8.8.8.8"): (None, 0),
                   ("10.0.3.21", "8.8.8.8"): ("nat-c", pytest.approx(2 * 0.045)), ("10.0.1.21", "81.2.3.4"): (None, 0)}
    assert rows[("10.0.1.21", "81.2.3.4")]["usage_type"] == "USE1-DataTransfer-Out-Bytes"


def test_peering_same_az_free_cross_az_per_side_inter_region_and_transit_gateway():
    w = three_zone_world().snapshot(0)
    for dst in ("10.30.0.1", "10.31.0.1", "10.32.0.1", "10.33.0.1", "10.34.0.1"):
        w.flow("10.0.1.21", dst, node="n-a", tx=2 * GB, rx=3 * GB)
    cfg = JobConfig.from_dict({"rules": [
        {"cidr": "10.30.0.0/16", "class": "peering", "zone": "us-east-1a", "region": "us-east-1"},
        {"cidr": "10.31.0.0/16", "class": "peering", "zone": "us-east-1b", "region": "us-east-1"},
        {"cidr": "10.32.0.0/16", "class": "peering", "region": "us-east-2"},
        {"cidr": "10.33.0.0/16", "class": "transit_gateway", "zone": "us-east-1a", "region": "us-east-1"},
        {"cidr": "10.34.0.0/16", "class": "peering", "name": "partner", "rate_per_gb": 0.015}]})
    c = {d: r for (_, d), r in rows_by(w.costs(cfg)).items()}
    assert c["10.30.0.1"]["cost_usd"] == 0                                      # same AZ
    assert c["10.31.0.1"]["cost_usd"] == pytest.approx(5 * 0.01)                # our side: 2 out + 3 in
    assert c["10.31.0.1"]["usage_type"] == "USE1-DataTransfer-Regional-Bytes"
    assert c["10.32.0.1"]["cost_usd"] == pytest.approx(2 * 0.01)                # inter-region out, by the pair
    assert c["10.32.0.1"]["usage_type"] == "USE1-USE2-AWS-Out-Bytes"
    assert c["10.33.0.1"]["cost_usd"] == pytest.approx(2 * 0.02)                # TGW processing of what we send
    assert c["10.33.0.1"]["processing_usage_type"] == "USE1-TransitGateway-Bytes"
    assert (c["10.34.0.1"]["cost_usd"], c["10.34.0.1"]["rate_card"]) == (pytest.approx(5 * 0.015), "rule:partner")
    # Azure VNet peering charges both directions whatever the zone; GCP is VM-to-VM (sender only)
    az = World().node("z-a", "10.2.0.10", "eastus-1", region="eastus", provider="azure")
    az.pod("p", "x", "z-a", "10.2.0.21").snapshot(0).flow("10.2.0.21", "10.30.0.1", node="z-a", tx=2 * GB, rx=3 * GB)
    g = World().node("g-a", "10.8.0.10", "us-central1-a", region="us-central1", provider="gcp")
    g.pod("p", "x", "g-a", "10.8.0.21").snapshot(0).flow("10.8.0.21", "10.30.0.1", node="g-a", tx=2 * GB, rx=3 * GB)
    rule = lambda zone, region: JobConfig.from_dict({"provider": "azure" if "east" in region else "gcp", "region": region, "rules": [  # noqa: E731
        {"cidr": "10.30.0.0/16", "class": "peering", "zone": zone, "region": region}]})
    assert one(az, rule("eastus-1", "eastus"))["cost_usd"] == pytest.approx(5 * GB / 1e9 * 0.01)
    assert one(g, rule("us-central1-b", "us-central1"))["cost_usd"] == pytest.approx(2 * 0.01)
    assert one(g, rule("us-central1-a", "us-central1"))["cost_usd"] == 0


def test_private_link_processing_imds_free_and_unknown_provider_none():
    w = three_zone_world().snapshot(0)
    w.flow("10.0.1.21", "10.200.0.5", node="n-a", tx=4 * GB, rx=6 * GB)
    w.flow("10.0.1.21", "169.254.169.254", node="n-a", tx=GB, rx=GB)
    w.dns("10.0.1.21", "vpce-1.s3.us-east-1.vpce.amazonaws.com", "10.200.0.5", -1)
    rows = rows_by(w.costs())
    pl = rows[("10.0.1.21", "10.200.0.5")]
    assert (pl["cost_usd"], pl["processing_cost_usd"], pl["processing_usage_type"]) == (
        pytest.approx(10 * 0.01), pytest.approx(10 * 0.01), "USE1-VpcEndpoint-Bytes")
    assert rows[("10.0.1.21", "169.254.169.254")]["cost_usd"] == 0
    h = World().node("n-a", "10.0.1.10", "fsn1-dc14", region="fsn1", provider="hetzner")
    h.node("n-b", "10.0.2.10", "nbg1-dc3", region="fsn1", provider="hetzner").snapshot(0)
    h.flow("10.0.1.10", "10.0.2.10", node="n-a", tx=GB)
    h.flow("10.0.1.10", "1.1.1.1", node="n-a", tx=500 * GB)
    costs = h.costs()
    assert set(costs.column("rate_card").to_pylist()) == {"none"}
    tiered, off = apply_egress_tiers(costs, {})
    assert tiered.column("cost_usd").to_pylist() == [0.0, 0.0]
    assert off == {("hetzner", "fsn1"): 500 * GB}


def test_free_allowance_is_one_per_account_across_regions():
    w = three_zone_world().node("n-e", "10.9.0.10", "eu-west-1a", region="eu-west-1").pod("eu-1", "x", "n-e", "10.9.0.21")
    w.node("z-a", "10.2.0.10", "eastus-1", region="eastus", provider="azure").pod("az-1", "x", "z-a", "10.2.0.21")
    w.snapshot(0)
    w.flow("10.0.1.21", "8.8.8.8", node="n-a", tx=60 * GB)
    w.flow("10.9.0.21", "8.8.8.8", node="n-e", tx=60 * GB)
    w.flow("10.2.0.21", "8.8.8.8", node="z-a", tx=150 * 10**9)
    tiered, off = apply_egress_tiers(w.costs(), {})
    c = {r["src_ip"]: r["cost_usd"] for r in tiered.to_pylist()}
    # 120 GB across two AWS regions: one 100 GB allowance, taken in pool order (eu-west-1 first),
    # so us-east-1 pays for 20 GB at $0.09; Azure has its own 100 GB: 50 GB at $0.087
    assert c["10.9.0.21"] == 0 and c["10.0.1.21"] == pytest.approx(20 * 0.09)
    assert c["10.2.0.21"] == pytest.approx(50 * 0.087)
    assert off == {AWS: 60 * GB, ("aws", "eu-west-1"): 60 * GB, ("azure", "eastus"): 150 * 10**9}
    # the next hour, carrying offsets: the allowance is used up for both AWS regions
    w2 = three_zone_world().node("n-e", "10.9.0.10", "eu-west-1a", region="eu-west-1").pod("eu-1", "x", "n-e", "10.9.0.21")
    w2.snapshot(0).flow("10.9.0.21", "8.8.8.8", node="n-e", minute=60, tx=10 * GB)
    t2, _ = apply_egress_tiers(w2.costs(), off)
    assert t2.column("cost_usd").to_pylist() == [pytest.approx(10 * 0.09)]


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


def test_load_balancer_second_hop_with_external_traffic_policy_cluster():
    """An internet client reaches node A's NodePort; kube-proxy sends it on to the backend on
    node B (another zone), SNAT'ed to A's address. A reports the client's connection, B the
    hop from A: both are billed, the hop as cross-zone transfer between the nodes."""
    w = three_zone_world().snapshot(0)
    w.flow("81.2.3.4", "10.0.2.21", node="n-a", direction="inbound", orig="10.0.1.10", orig_port=30080, port=8080,
           tx=GB, rx=3 * GB)
    w.flow("10.0.1.10", "10.0.2.21", node="n-b", direction="inbound", port=8080, tx=GB, rx=3 * GB,
           dst_pod="api-1", dst_ns="shop")
    w.flow("10.0.1.10", "10.0.3.21", node="n-c", direction="inbound", port=8080, tx=GB, rx=GB)  # kubelet-like: dropped
    costs = w.costs()
    rows = rows_by(costs)
    assert set(rows) == {("10.0.2.21", "81.2.3.4"), ("10.0.2.21", "10.0.1.10")}
    eg, hop = rows[("10.0.2.21", "81.2.3.4")], rows[("10.0.2.21", "10.0.1.10")]
    assert (eg["traffic_class"], eg["src_node"], eg["src_zone"], eg["tx_bytes"]) == ("internet_egress", "n-a", "us-east-1a", 3 * GB)
    assert (hop["traffic_class"], hop["src_node"], hop["dst_kind"], hop["dst_name"]) == ("cross_zone", "n-b", "node", "n-a")
    assert (hop["src_namespace"], hop["src_pod"], hop["tx_bytes"], hop["rx_bytes"]) == ("shop", "api-1", 3 * GB, GB)
    # 4 GB between the zones: $0.01 out + $0.01 in on each side
    assert hop["cost_usd"] == pytest.approx(4 * 0.02) and hop["dst_cost_usd"] == pytest.approx(4 * 0.01)

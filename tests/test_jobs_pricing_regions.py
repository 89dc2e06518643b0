"""Per-region rates of the cards: PrivateLink / Private Service Connect / Private Link processing
per region, and what the rate notes say about where each figure was checked.

Expected dollars are computed by hand from the rates written in the test."""
from __future__ import annotations

import copy
import json

import pytest

from jobs.config import JobConfig
from jobs.pipeline import build_context, cost_flows
from jobs.pricing import CARDS_DIR, RateCards
from jobs.ratecards import build
from test_jobs_stages_world import GB, World

GIB = 1 << 30


def _docs():
    return {p.stem: json.loads(p.read_text()) for p in sorted(CARDS_DIR.glob("*.json"))}


def test_private_link_is_a_rate_of_every_region_block_with_its_source():
    for provider, doc in _docs().items():
        assert "private_link" not in doc["default"], provider
        for region, block in doc["regions"].items():
            pl = block["private_link"]
            assert pl["source"].startswith("https://") and pl["per_gb"] == 0.01, (provider, region)
    aws = _docs()["aws"]["regions"]
    # AWS's page shows the first-PB figure for the region displayed; every region carries it
    assert "checked 2026-12-01 against https://aws.amazon.com/privatelink/pricing/" in aws["ap-south-1"]["private_link"]["note"]
    # Cloud NAT: one price in every region, as GCP's page says
    assert "the same in every region" in _docs()["gcp"]["regions"]["asia-east1"]["nat_gateway"]["note"]


def _pl_world(region, zone):
    w = World().node("n-a", "10.0.1.10", zone, region=region)
    w.pod("app-1", "shop", "n-a", "10.0.1.21").snapshot(0)
    w.flow("10.0.1.21", "10.200.0.5", node="n-a", tx=3 * GB, rx=5 * GB)
    w.dns("10.0.1.21", "vpce-1.sts.x.vpce.amazonaws.com", "10.200.0.5", -1)
    return w


def test_private_link_processing_uses_the_source_regions_rate():
    docs = _docs()
    custom = copy.deepcopy(docs)
    # a region whose interface-endpoint processing costs more than the default
    custom["aws"]["regions"]["sa-east-1"]["private_link"]["per_gb"] = 0.014
    cards = RateCards(custom)
    rows = {}
    for region, zone in (("us-east-1", "us-east-1a"), ("sa-east-1", "sa-east-1a")):
        w = _pl_world(region, zone)
        t = cost_flows(w.raw(), build_context(w.inventory(), w.dns_table(), JobConfig(), None, cards))
        (rows[region],) = t.to_pylist()
    use1, sae1 = rows["us-east-1"], rows["sa-east-1"]
    assert use1["traffic_class"] == sae1["traffic_class"] == "private_link"
    # both directions are processed: (3 + 5) GB x $0.01 in us-east-1, x $0.014 in sa-east-1
    assert use1["processing_cost_usd"] == pytest.approx(8 * 0.01) and use1["cost_usd"] == pytest.approx(0.08)
    assert sae1["processing_cost_usd"] == pytest.approx(8 * 0.014) and sae1["cost_usd"] == pytest.approx(0.112)
    assert (use1["processing_usage_type"], sae1["processing_usage_type"]) == ("USE1-VpcEndpoint-Bytes",
                                                                              "SAE1-VpcEndpoint-Bytes")
    assert sae1["processing_bytes"] == 8 * GB


def test_build_takes_a_regions_private_link_rate_from_its_table(tmp_path, monkeypatch):
    data = {"aws": {"internet_egress": {"us-east-1": {"0": 0.09}, "sa-east-1": {"0": 0.15}},
                    "inter_zone_data_transfer": {}},
            "gcp": {"internet_egress": {"us-central1": {"0": 0.085}}, "inter_zone_data_transfer": {}},
            "azure": {"internet_egress": {"eastus": {"0": 0.08}}, "inter_zone_data_transfer": {}}}
    (tmp_path / "network.json").write_text(json.dumps(data))
    monkeypatch.setitem(build.AWS_PL_RATES, "sa-east-1", 0.013)
    assert build.main(["--data", str(tmp_path / "network.json"), "--out", str(tmp_path)]) == 0
    aws = json.loads((tmp_path / "aws.json").read_text())["regions"]
    assert aws["sa-east-1"]["private_link"]["per_gb"] == 0.013
    assert aws["us-east-1"]["private_link"]["per_gb"] == 0.01
    assert "not re-verified" in aws["sa-east-1"]["private_link"]["note"]


def test_inter_region_pairs_one_builder_for_gcp_and_azure():
    cont = {"us-east1": "northamerica", "europe-west1": "europe", "australia-southeast1": "oceania",
            "asia-east1": "asia"}
    # GCP: NA -> EU $0.05, to or from Oceania $0.15, NA -> Asia the intercontinental $0.08
    assert build._pairs("us-east1", cont, build._gcp_pair_rate, 0.02) == {
        "europe-west1": 0.05, "australia-southeast1": 0.15, "asia-east1": 0.08}
    az = {"eastus": "northamerica", "westus": "northamerica", "brazilsouth": "southamerica"}
    assert build._pairs("eastus", az, build._az_pair_rate, 0.02) == {"brazilsouth": 0.05}
    assert build._pairs("brazilsouth", az, build._az_pair_rate, 0.16) == {}


# ---------------------------------------------------------------- GCP Premium egress by destination

DEST_CFG = {"provider": "gcp", "region": "us-central1", "egress_destinations": [
    {"cidr": "203.0.113.0/24", "destination": "australia"},
    {"domain": "*.cn", "destination": "china"},
    {"cidr": "198.51.100.0/24", "destination": "china"}]}


def _gcp_world(region="us-central1", zone="us-central1-a"):
    w = World().node("n-a", "10.0.1.10", zone, region=region, provider="gcp")
    w.pod("app-1", "shop", "n-a", "10.0.1.21").snapshot(0)
    w.flow("10.0.1.21", "203.0.113.9", node="n-a", tx=2 * GIB, rx=GIB)      # Australia by CIDR
    w.flow("10.0.1.21", "192.0.2.44", node="n-a", tx=3 * GIB)               # worldwide
    w.flow("10.0.1.21", "192.0.2.77", node="n-a", tx=GIB)                   # China by its name
    w.dns("10.0.1.21", "shop.example.cn", "192.0.2.77", -1)
    return w


def _tiered(w, cfg):
    from jobs.pipeline import _cards_for
    cards = _cards_for(cfg)
    costs = cost_flows(w.raw(), build_context(w.inventory(), w.dns_table(), cfg, None, cards))
    from jobs.pricing import apply_egress_tiers, tier_pools
    pools = dict(zip(costs.column("dst_ip").to_pylist(), tier_pools(costs, cards)[0].to_pylist()))
    tiered, offsets = apply_egress_tiers(costs, {}, cards)
    return {r["dst_ip"]: r for r in tiered.to_pylist()}, pools, offsets


def test_gcp_premium_egress_is_priced_by_the_destination_group_the_config_maps():
    cfg = JobConfig.from_dict(DEST_CFG)
    rows, pools, offsets = _tiered(_gcp_world(), cfg)
    # first TiB of each pool: Australia $0.19/GiB, China $0.23/GiB, worldwide $0.12/GiB; inbound free
    assert rows["203.0.113.9"]["cost_usd"] == pytest.approx(2 * 0.19)
    assert rows["192.0.2.77"]["cost_usd"] == pytest.approx(1 * 0.23)
    assert rows["192.0.2.44"]["cost_usd"] == pytest.approx(3 * 0.12)
    assert pools == {"203.0.113.9": "gcp/us-central1@australia/internet_egress",
                     "192.0.2.77": "gcp/us-central1@china/internet_egress",
                     "192.0.2.44": "gcp/us-central1/internet_egress"}
    assert offsets == {("gcp", "us-central1@australia"): 2 * GIB, ("gcp", "us-central1@china"): GIB,
                       ("gcp", "us-central1"): 3 * GIB}
    assert rows["203.0.113.9"]["usage_type"] == "Network Internet Data Transfer Out from us-central1 to Australia"
    assert rows["192.0.2.44"]["usage_type"] == "Network Internet Data Transfer Out from us-central1"
    assert {r["rate_card"] for r in rows.values()} == {"gcp/us-central1"}


def test_without_a_destination_map_everything_is_worldwide_even_from_australia():
    rows, pools, _ = _tiered(_gcp_world("australia-southeast1", "australia-southeast1-a"),
                             JobConfig.from_dict({"provider": "gcp", "region": "australia-southeast1"}))
    # Premium is priced by destination: an Australian source pays the worldwide $0.12 (was $0.19)
    assert [rows[ip]["cost_usd"] for ip in ("203.0.113.9", "192.0.2.44", "192.0.2.77")] == [
        pytest.approx(2 * 0.12), pytest.approx(3 * 0.12), pytest.approx(0.12)]
    assert set(pools.values()) == {"gcp/australia-southeast1/internet_egress"}


def test_destination_pools_climb_their_own_tiers():
    cfg = JobConfig.from_dict(DEST_CFG)
    w = World().node("n-a", "10.0.1.10", "us-central1-a", region="us-central1", provider="gcp")
    w.pod("app-1", "shop", "n-a", "10.0.1.21").snapshot(0)
    w.flow("10.0.1.21", "203.0.113.9", node="n-a", tx=1500 * GIB)   # Australia: 1024 x 0.19 + 476 x 0.18
    w.flow("10.0.1.21", "192.0.2.44", node="n-a", tx=1000 * GIB)    # worldwide, still the first TiB
    rows, _, _ = _tiered(w, cfg)
    assert rows["203.0.113.9"]["cost_usd"] == pytest.approx(1024 * 0.19 + 476 * 0.18)
    assert rows["192.0.2.44"]["cost_usd"] == pytest.approx(1000 * 0.12)


def test_destination_map_applies_only_to_cards_priced_by_destination_and_is_checked():
    cfg = JobConfig.from_dict(dict(DEST_CFG, provider="aws", region="us-east-1"))
    w = World().node("n-a", "10.0.1.10", "us-east-1a")
    w.pod("app-1", "shop", "n-a", "10.0.1.21").snapshot(0)
    w.flow("10.0.1.21", "203.0.113.9", node="n-a", tx=200 * GB)
    rows, pools, _ = _tiered(w, cfg)
    # AWS prices egress by the source region: 100 GB free, then $0.09
    assert rows["203.0.113.9"]["cost_usd"] == pytest.approx(100 * 0.09)
    assert pools == {"203.0.113.9": "aws/us-east-1/internet_egress"}
    from jobs.config import ConfigError
    bad = JobConfig.from_dict({"egress_destinations": [{"cidr": "203.0.113.0/24", "destination": "mars"}]})
    from jobs.pipeline import _cards_for
    with pytest.raises(ConfigError, match=r"egress_destinations\[0\].destination: no rate card prices egress to 'mars'"):
        bad.check_cards(_cards_for(bad))
    with pytest.raises(ConfigError, match=r"egress_destinations\[0\]: give one of cidr or domain"):
        JobConfig.from_dict({"egress_destinations": [{"destination": "china"}]})


def test_azure_australia_central_is_billing_zone_1():
    cards = RateCards.load()
    ac, ae = cards.card("azure", "australiacentral"), cards.card("azure", "australiaeast")
    assert ac.tiers[0] == (10240, 0.087) and ae.tiers[0] == (10240, 0.12)
    # 200 GB (10^9 bytes) out of Australia Central: the first 100 GB free, then Zone 1's $0.087
    w = World().node("n-a", "10.0.1.10", "australiacentral-1", region="australiacentral", provider="azure")
    w.pod("app-1", "shop", "n-a", "10.0.1.21").snapshot(0)
    w.flow("10.0.1.21", "192.0.2.44", node="n-a", tx=200 * 10**9)
    from jobs.pricing import apply_egress_tiers
    costs = cost_flows(w.raw(), build_context(w.inventory(), w.dns_table(), JobConfig.from_dict(
        {"provider": "azure", "region": "australiacentral"}), None, cards))
    (row,) = apply_egress_tiers(costs, {}, cards)[0].to_pylist()
    assert row["cost_usd"] == pytest.approx(100 * 0.087)


def test_cost_job_and_tier_report_keep_destination_pools_apart(tmp_path):
    """End to end through the cost job: the destination map of the config prices the rows, and
    the month's tier report (costview) shows one line per destination pool with its charge."""
    import pyarrow as pa
    from jobs import costview
    from jobs import run as R
    from jobs.config import load_config
    from jobs.pipeline import _cards_for
    from test_bench_baseline import DEST_CFG as CFG, H0, RANGES, dest_lake
    assert CFG == DEST_CFG

    lake = dest_lake(tmp_path / "lake")
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(DEST_CFG))
    R.run_cost_job(R.JobOptions(lake_url=lake.url, config_path=str(cfg_path), ip_ranges_dir=str(RANGES),
                                executor="inline", progress=None))
    rows = pa.concat_tables([lake.read_table(lake.rel(i.path)) for i in lake.list_files("costs/flows")]).to_pylist()
    assert {r["dst_ip"]: r["cost_usd"] for r in rows} == pytest.approx(
        {"203.0.113.9": 2 * 0.19, "192.0.2.44": 3 * 0.12, "192.0.2.77": 0.23})
    report = costview.egress_tier_position(lake, H0.date(), _cards_for(load_config(str(cfg_path))))
    assert {r["rate_card"]: r["month_cost_usd"] for r in report} == pytest.approx(
        {"gcp/us-central1@australia": 0.38, "gcp/us-central1": 0.36, "gcp/us-central1@china": 0.23})
    assert {r["rate_card"]: r["per_gb_usd"] for r in report}["gcp/us-central1@australia"] == 0.19


def test_bad_destination_tiers_are_a_clear_error():
    from jobs.pricing import RateCardError
    docs = _docs()
    bad = copy.deepcopy(docs)
    bad["gcp"]["regions"]["us-central1"]["internet_egress_by_destination"] = [0.19]
    with pytest.raises(RateCardError, match="gcp/us-central1: internet_egress_by_destination must map"):
        RateCards(bad)
    bad = copy.deepcopy(docs)
    bad["gcp"]["regions"]["us-central1"]["internet_egress_by_destination"]["china"]["tiers"][0]["per_gb"] = 23
    with pytest.raises(RateCardError, match=r"internet_egress_by_destination.china.tiers\[0\].per_gb 23 is outside"):
        RateCards(bad)
    with pytest.raises(RateCardError, match="no internet egress tiers to destination 'mars'"):
        RateCards(docs).card("gcp", "us-central1@mars")

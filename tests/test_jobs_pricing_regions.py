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

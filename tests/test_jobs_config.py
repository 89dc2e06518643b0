"""The job config is validated as strictly as input: one-line errors before any work."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jobs.config import ConfigError, JobConfig, load_config
from jobs.pricing import RateCards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("bad,msg", [
    ({"provider": "digitalocean"}, r"provider: unknown provider 'digitalocean'; expected one of aws, gcp, azure"),
    ({"rules": [{"cidr": "10.60.0.1/8", "class": "peering"}]}, r"rules\[0\]: CIDR '10.60.0.1/8' has host bits set \(did you mean 10.0.0.0/8\?\)"),
    ({"rules": [{"cidr": "10.60.0.0/16", "class": "peering", "rate_per_gb": 1e9}]}, r"rules\[0\].rate_per_gb: 1e\+09 is outside the sane range"),
    ({"rules": [{"cidr": "10.60.0.0/16", "class": "peering", "rate_per_gb": -1}]}, r"outside the sane range"),
    ({"rules": [{"cidr": "10.60.0.0/16", "class": "peering", "rate": 0.01}]}, r"rules\[0\]: unknown key\(s\) rate"),
    ({"nat_gateways": [{"name": "a", "node_cidr": ["10.0.0.0/8"]}]}, r"nat_gateways\[0\]: unknown key\(s\) node_cidr"),
    ({"nat_gateways": [{"name": "a", "node_cidrs": ["10.0.0.1/8"]}]}, r"host bits set"),
    ({"nat_gateways": [{"name": "a"}]}, r"nat_gateways\[0\]: selects no node"),
    ({"nat_gateway": "yes"}, r"nat_gateway: expected true or false"),
    ({"subnets": [{"cidr": "10.0.64.0/20", "az": "a"}]}, r"subnets\[0\]: unknown key\(s\) az"),
    ({"price_fallback": {"hetzner": "fsn1"}}, r"price_fallback: unknown provider\(s\) hetzner"),
    ({"network_tier": "gold"}, r"network_tier: expected premium or standard"),
    ({"natgateway": True}, r"unknown config key\(s\): natgateway"),
    ({"rate_limits": {"max_per_gb": "x"}}, r"rate_limits.max_per_gb: must be a number"),
])
def test_bad_config_values_are_one_line_errors(bad, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        JobConfig.from_dict(bad)
    assert "\n" not in str(e.value)


def test_the_sane_range_is_configurable():
    rule = {"cidr": "10.60.0.0/16", "class": "peering", "rate_per_gb": 2.5}
    with pytest.raises(ConfigError, match="raise rate_limits.max_per_gb"):
        JobConfig.from_dict({"rules": [rule]})
    assert JobConfig.from_dict({"rules": [rule], "rate_limits": {"max_per_gb": 5}}).rules[0].rate_per_gb == 2.5


def test_names_the_cards_do_not_know_are_errors():
    cards = RateCards.load()
    for bad, msg in (({"region": "us-east-9"}, r"region: no aws rate card for region 'us-east-9'"),
                     ({"provider": "gcp", "region": "us-central1", "price_fallback": {"gcp": "mars1"}},
                      r"price_fallback.gcp: no gcp rate card for region 'mars1'"),
                     ({"gateway_endpoints": ["sqs"]}, r"gateway_endpoints: SQS cannot be reached by a aws gateway endpoint"),
                     ({"provider": "azure", "region": "eastus", "gateway_endpoints": ["s3"]}, r"expected none")):
        with pytest.raises(ConfigError, match=msg):
            JobConfig.from_dict(bad).check_cards(cards)
    JobConfig.from_dict({"region": "af-south-1", "gateway_endpoints": ["s3", "DynamoDB"]}).check_cards(cards)


def test_cost_cli_refuses_a_bad_config_in_one_line_before_any_work(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"region": "eu-wast-1"}))
    lake = tmp_path / "lake"
    lake.mkdir()
    r = subprocess.run([sys.executable, "-m", "jobs", "cost", "--lake", str(lake), "--config", str(cfg)],
                       cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no aws rate card for region 'eu-wast-1'" in lines[0], r.stderr
    assert not (lake / "costs").exists() and not list(lake.rglob("*.json"))  # nothing computed or recorded
    with pytest.raises(ConfigError, match=f"config {cfg}: region: no aws rate card"):
        load_config(cfg)

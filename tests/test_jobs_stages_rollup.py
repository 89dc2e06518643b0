"""Rollups reconcile with the detail rows; config parsing."""
from __future__ import annotations

import datetime as dt
import json

import pyarrow.compute as pc
import pytest

from jobs.config import ConfigError, JobConfig, load_config, parse_duration
from jobs.pipeline import apply_egress_tiers, rollup_namespace_hourly, rollup_workload_daily
from lake import schema as S
from test_jobs_stages_world import GB, three_zone_world


def costed():
    w = three_zone_world()
    w.pod("node-exporter-1", "monitoring", "n-a", "10.0.1.10", host_network=True, kind="DaemonSet").snapshot(0)
    w.flow("10.0.1.21", "10.0.2.21", node="n-a", minute=0, tx=2 * GB, rx=GB)          # shop/web cross_zone
    w.flow("10.0.1.22", "10.0.2.21", node="n-a", minute=59, tx=GB, rx=GB)             # shop/web cross_zone
    w.flow("10.0.1.21", "8.8.8.8", node="n-a", minute=61, tx=150 * GB, rx=GB)         # shop/web egress, hour 11
    w.flow("10.0.3.21", "10.0.1.21", node="n-c", minute=3, tx=GB, rx=0)               # data/db cross_zone
    w.flow("10.0.1.10", "10.0.3.21", node="n-a", minute=4, tx=GB, rx=GB)              # node traffic
    costs, _ = apply_egress_tiers(w.costs(), {})
    return costs


def test_namespace_hourly_reconciles_and_keeps_node_traffic_under_null():
    costs = costed()
    ns = rollup_namespace_hourly(costs)
    assert ns.schema.equals(S.COST_NAMESPACE_HOURLY)
    rows = {(r["hour_start"].hour, r["namespace"], r["traffic_class"]): r for r in ns.to_pylist()}
    web = rows[(10, "shop", "cross_zone")]
    assert (web["tx_bytes"], web["rx_bytes"], web["flows"]) == (3 * GB, 2 * GB, 2)
    assert web["cost_usd"] == pytest.approx((3 + 2) * 0.01 * 2)     # 5 GB across AZs, both sides
    egress = rows[(11, "shop", "internet_egress")]
    assert egress["cost_usd"] == pytest.approx(50 * 0.09)           # 150 GB sent, 100 free
    node = rows[(10, None, "cross_zone")]
    assert node["flows"] == 1 and node["cost_usd"] == pytest.approx(2 * 0.01 * 2)
    for col in ("tx_bytes", "rx_bytes", "cost_usd"):
        assert pc.sum(ns.column(col)).as_py() == pytest.approx(pc.sum(costs.column(col)).as_py())
    assert pc.sum(ns.column("flows")).as_py() == costs.num_rows


def test_workload_daily_reconciles():
    costs = costed()
    wd = rollup_workload_daily(costs)
    assert wd.schema.equals(S.COST_WORKLOAD_DAILY)
    rows = {(r["namespace"], r["workload"], r["traffic_class"]): r for r in wd.to_pylist()}
    assert set(r["day"] for r in wd.to_pylist()) == {dt.date(2026, 11, 2)}
    web = rows[("shop", "web", "cross_zone")]
    assert web["workload_kind"] == "Deployment" and web["flows"] == 2
    assert rows[("data", "db", "cross_zone")]["workload_kind"] == "StatefulSet"
    assert rows[(None, None, "cross_zone")]["flows"] == 1
    for col in ("tx_bytes", "rx_bytes", "cost_usd"):
        assert pc.sum(wd.column(col)).as_py() == pytest.approx(pc.sum(costs.column(col)).as_py())
    assert pc.sum(wd.column("flows")).as_py() == costs.num_rows


def test_config_files_and_errors(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("provider: GCP\nregion: europe-west1\nnat_gateway: true\ndns_lookback: 30m\n"
                 "rules:\n  - {cidr: 10.20.0.0/16, class: peering, name: vpc, rate_per_gb: 0.02}\n")
    c = load_config(y)
    assert (c.provider, c.region, c.nat_gateway, c.dns_lookback_s) == ("gcp", "europe-west1", True, 1800)
    assert c.rules[0].cidr == "10.20.0.0/16" and c.rules[0].rate_per_gb == 0.02 and c.rules[0].label == "vpc"
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"rules": [{"cidr": "10.0.0.0/8", "class": "peering"}]}))
    assert load_config(j).rules[0].label == "10.0.0.0/8"
    assert load_config(None) == JobConfig()
    assert [parse_duration(v) for v in ("60s", "5m", "1h", "90", 2)] == [60, 300, 3600, 90, 2]
    for bad, msg in ([{"rules": [{"cidr": "10.0.0.0/33", "class": "peering"}]}, "invalid CIDR"],
                     [{"rules": [{"cidr": "10.0.0.0/8", "class": "vpn"}]}, "unknown class"],
                     [{"dns_lookback": "soon"}, "invalid duration"],
                     [{"colour": "red"}, "unknown config key"]):
        with pytest.raises(ConfigError, match=msg):
            JobConfig.from_dict(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("rules: [unclosed")
    with pytest.raises(ConfigError, match="cannot parse config"):
        load_config(tmp_path / "bad.yaml")

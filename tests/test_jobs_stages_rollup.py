"""Rollups reconcile with the detail rows; config parsing."""
from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
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
    # both sides, $0.01/GB each: web's own side of its 5 GB to shop/api, api's side of the same
    # 5 GB, and web's side of the 1 GB data/db sent it
    assert web["cost_usd"] == pytest.approx(5 * 0.01 + 5 * 0.01 + 1 * 0.01)
    assert web["dst_side_cost_usd"] == pytest.approx(6 * 0.01)
    db = rows[(10, "data", "cross_zone")]
    # db's side of its 1 GB, and its side of the 2 GB the node n-a exchanged with it
    assert (db["flows"], db["cost_usd"], db["dst_side_cost_usd"]) == (1, pytest.approx(0.01 + 0.02), pytest.approx(0.02))
    egress = rows[(11, "shop", "internet_egress")]
    assert egress["cost_usd"] == pytest.approx(50 * 0.09)           # 150 GB sent, 100 free
    node = rows[(10, None, "cross_zone")]
    assert node["flows"] == 1 and node["cost_usd"] == pytest.approx(2 * 0.01)
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
    assert rows[("shop", "api", "cross_zone")]["cost_usd"] == pytest.approx(5 * 0.01)   # api's side, no flows of its own
    assert rows[("shop", "api", "cross_zone")]["flows"] == 0


def test_rollups_of_parts_combine_to_the_rollup_of_the_whole():
    from jobs.rollup import combine
    costs = costed()
    whole = rollup_namespace_hourly(costs)
    parts = [rollup_namespace_hourly(costs.slice(0, 2)), rollup_namespace_hourly(costs.slice(2))]
    again = combine(pa.concat_tables(parts), ["hour_start", "namespace", "traffic_class"], S.COST_NAMESPACE_HOURLY)
    assert again.select(["hour_start", "namespace", "traffic_class", "tx_bytes", "rx_bytes", "flows"]).equals(
        whole.select(["hour_start", "namespace", "traffic_class", "tx_bytes", "rx_bytes", "flows"]))
    assert again.column("cost_usd").to_pylist() == pytest.approx(whole.column("cost_usd").to_pylist())


def test_focus_rows_carry_the_meters_and_reconcile_through_duckdb():
    import duckdb
    from jobs.focus import combine as focus_combine, focus_rows
    costs = costed()
    f = focus_rows(costs)
    assert f.schema.equals(S.COST_FOCUS)
    assert set(f.column("ChargeCategory").to_pylist()) == {"Usage"}
    assert set(f.column("ServiceCategory").to_pylist()) == {"Networking"}
    con = duckdb.connect()
    con.register("focus", f)
    con.register("flows", costs)
    by_meter = dict(con.execute("""SELECT x_UsageType, sum(BilledCost) FROM focus GROUP BY 1""").fetchall())
    # hand-computed: 8 GB crossing AZs (3 + 2 GB of web's two pods, 1 GB from db, 2 GB from the
    # node; each metered on both sides: 2 x 8 GB x $0.01), 150 GB to the internet, 50 past the free 100
    assert by_meter == {"USE1-DataTransfer-Regional-Bytes": pytest.approx(2 * 8 * 0.01),
                        "USE1-DataTransfer-Out-Bytes": pytest.approx(50 * 0.09)}
    qty = dict(con.execute("SELECT x_UsageType, sum(ConsumedQuantity) FROM focus GROUP BY 1").fetchall())
    assert qty == {"USE1-DataTransfer-Regional-Bytes": pytest.approx(16), "USE1-DataTransfer-Out-Bytes": pytest.approx(150)}
    total_f, total_c = con.execute("SELECT (SELECT sum(BilledCost) FROM focus), (SELECT sum(cost_usd) FROM flows)").fetchone()
    assert total_f == pytest.approx(total_c)
    ns = dict(con.execute("SELECT x_Namespace, sum(BilledCost) FROM focus WHERE x_TrafficClass = 'cross_zone' GROUP BY 1").fetchall())
    assert ns == {"shop": pytest.approx(0.11), "data": pytest.approx(0.03), None: pytest.approx(0.02)}
    # partial exports (cells, hours) combine to the same table
    again = focus_combine([focus_rows(costs.slice(0, 3)), focus_rows(costs.slice(3))])
    assert again.drop(["BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "ListUnitPrice",
                       "ContractedUnitPrice"]).equals(f.drop(["BilledCost", "EffectiveCost", "ListCost", "ContractedCost",
                                                              "ListUnitPrice", "ContractedUnitPrice"]))


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
